//! Creates LiteLLM's tables from its own `schema.prisma` (vendored from litellm 1.110.2,
//! `litellm/proxy/schema.prisma`, MIT) the way `prisma migrate` lays them out for
//! PostgreSQL: `String` → TEXT, `DateTime` → TIMESTAMP(3), `Json` → JSONB, `X[]` → arrays,
//! `?` → nullable, `@default`, `@id`/`@@id`, `@map`/`@@map`; relation fields have no column.
#![allow(dead_code)]

use std::collections::HashSet;

pub const SCHEMA: &str = include_str!("../fixtures/litellm_schema.prisma");

fn sql_type(t: &str, enums: &HashSet<&str>) -> Option<String> {
    let (base, array) = match t.strip_suffix("[]") {
        Some(b) => (b, true),
        None => (t, false),
    };
    let base = base.trim_end_matches('?');
    let s = match base {
        "String" => "TEXT",
        "Int" => "INTEGER",
        "BigInt" => "BIGINT",
        "Float" => "DOUBLE PRECISION",
        "Boolean" => "BOOLEAN",
        "DateTime" => "TIMESTAMP(3)",
        "Json" => "JSONB",
        "Bytes" => "BYTEA",
        "Decimal" => "DECIMAL(65,30)",
        e if enums.contains(e) => "TEXT",
        _ => return None, // another model: a relation, no column
    };
    Some(if array {
        format!("{s}[]")
    } else {
        s.to_owned()
    })
}

fn default_sql(arg: &str, ty: &str) -> Option<String> {
    let a = arg.trim();
    Some(match a {
        "now()" => "CURRENT_TIMESTAMP".into(),
        "uuid()" | "cuid()" | "autoincrement()" => return None,
        "[]" => format!("ARRAY[]::{ty}"),
        "true" | "false" => a.into(),
        _ if a.starts_with("dbgenerated(") => {
            // dbgenerated("<sql>"): the SQL expression itself.
            a.trim_start_matches("dbgenerated(")
                .trim_end_matches(')')
                .trim_matches('"')
                .to_owned()
        }
        _ if a.starts_with('"') => format!("'{}'", a.trim_matches('"').replace('\'', "''")),
        _ if a.parse::<f64>().is_ok() => a.into(),
        _ if a.starts_with('[') => format!(
            "ARRAY[{}]::{ty}",
            a.trim_matches(|c| c == '[' || c == ']').replace('"', "'")
        ),
        other => format!("'{other}'"), // enum value
    })
}

/// The attribute argument of `@name(...)` in `attrs`, parentheses balanced.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let i = attrs.find(name)?;
    let rest = &attrs[i + name.len()..];
    let rest = rest.strip_prefix('(')?;
    let mut depth = 1;
    for (j, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..j]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `CREATE TABLE` statements for every model in the schema.
pub fn create_tables_sql() -> Vec<String> {
    let enums: HashSet<&str> = SCHEMA
        .lines()
        .filter_map(|l| l.trim().strip_prefix("enum "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut out = Vec::new();
    let mut lines = SCHEMA.lines();
    while let Some(l) = lines.next() {
        let Some(name) = l.trim().strip_prefix("model ") else {
            continue;
        };
        let mut table = name.split_whitespace().next().unwrap_or("").to_owned();
        let mut cols = Vec::new();
        let mut pk: Option<Vec<String>> = None;
        for l in lines.by_ref() {
            let l = l.split("//").next().unwrap_or("").trim();
            if l == "}" {
                break;
            }
            if l.is_empty() {
                continue;
            }
            if let Some(rest) = l.strip_prefix("@@map") {
                table = rest
                    .trim_matches(|c| c == '(' || c == ')' || c == '"')
                    .to_owned();
                continue;
            }
            if l.starts_with("@@id") {
                let inner = attr(l, "@@id").unwrap_or("");
                let inner = inner.trim_matches(|c| c == '[' || c == ']');
                pk = Some(inner.split(',').map(|s| s.trim().to_owned()).collect());
                continue;
            }
            if l.starts_with("@@") {
                continue;
            }
            let mut parts = l.split_whitespace();
            let (Some(field), Some(ty)) = (parts.next(), parts.next()) else {
                continue;
            };
            let attrs = parts.collect::<Vec<_>>().join(" ");
            let attrs = attrs.as_str();
            let Some(sqlty) = sql_type(ty, &enums) else {
                continue;
            };
            let col = attr(attrs, "@map")
                .map(|m| m.trim_matches('"').to_owned())
                .unwrap_or_else(|| field.to_owned());
            let mut def = format!("\"{col}\" ");
            if attrs.contains("autoincrement()") {
                def.push_str("SERIAL");
            } else {
                def.push_str(&sqlty);
            }
            let optional = ty.ends_with('?');
            if !optional {
                def.push_str(" NOT NULL");
            }
            if let Some(d) = attr(attrs, "@default")
                && let Some(d) = default_sql(d, &sqlty)
            {
                def.push_str(&format!(" DEFAULT {d}"));
            }
            if attrs.contains("@id") {
                pk = Some(vec![col.clone()]);
            }
            cols.push(def);
        }
        if let Some(pk) = pk {
            let pk: Vec<String> = pk.iter().map(|c| format!("\"{c}\"")).collect();
            cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
        }
        out.push(format!(
            "CREATE TABLE \"{table}\" (\n  {}\n)",
            cols.join(",\n  ")
        ));
    }
    out
}
