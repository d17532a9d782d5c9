//! Where and on what a credential's stub may be used (rule 4): its
//! `positions`, request `paths` and `methods`, and the path normalisation the
//! path scopes are checked on.

use std::fmt;

/// One place in a request where a credential's stub may stand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Position {
    /// `header:NAME` — that header's whole value, the token after a `Bearer`/`token`
    /// scheme, or the whole user or password inside `Basic` credentials.
    /// The name is kept lower-case.
    Header(String),
    /// `query:NAME` — the whole (percent-decoded) value of that query parameter.
    Query(String),
    /// `path` — one whole (percent-decoded) path segment.
    Path,
    /// `form:NAME` — the whole value of that `application/x-www-form-urlencoded` body field.
    Form(String),
    /// `json:/pointer` — the string at that RFC 6901 pointer of a JSON body.
    Json(String),
}

impl Position {
    /// Parses `header:Authorization`, `query:key`, `path`, `form:token`, `json:/a/b`.
    pub fn parse(s: &str) -> Result<Position, String> {
        let s = s.trim();
        if s == "path" {
            return Ok(Position::Path);
        }
        let (kind, arg) = s.split_once(':').ok_or_else(|| {
            format!("`{s}`: expected header:NAME, query:NAME, path, form:NAME or json:/pointer")
        })?;
        if arg.is_empty() {
            return Err(format!("`{s}`: the name after `{kind}:` is empty"));
        }
        match kind {
            "header" => {
                let name = arg.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(format!("`{s}`: not a valid header name"));
                }
                if name == "proxy-authorization" {
                    return Err(format!(
                        "`{s}`: Proxy-Authorization is the proxy's own credential"
                    ));
                }
                Ok(Position::Header(name))
            }
            "query" => Ok(Position::Query(arg.to_string())),
            "form" => Ok(Position::Form(arg.to_string())),
            "json" => {
                if !arg.starts_with('/') {
                    return Err(format!("`{s}`: a JSON pointer starts with `/`"));
                }
                Ok(Position::Json(arg.to_string()))
            }
            _ => Err(format!(
                "`{s}`: unknown position kind `{kind}` (header, query, path, form, json)"
            )),
        }
    }

    /// Whether this position is in the request body (needs the body buffered).
    pub fn in_body(&self) -> bool {
        matches!(self, Position::Form(_) | Position::Json(_))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Header(n) => write!(f, "header:{n}"),
            Position::Query(n) => write!(f, "query:{n}"),
            Position::Path => f.write_str("path"),
            Position::Form(n) => write!(f, "form:{n}"),
            Position::Json(p) => write!(f, "json:{p}"),
        }
    }
}

/// A request-path glob: `*` is one segment, `**` any number of segments
/// (zero included); other segments match literally (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    segs: Vec<GlobSeg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobSeg {
    One,
    Any,
    Lit(String),
}

impl PathGlob {
    /// Parses `/repos/acme/**`.
    pub fn parse(s: &str) -> Result<PathGlob, String> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("`{s}`: a path starts with `/`"));
        };
        if s.contains('?') || s.contains('#') {
            return Err(format!("`{s}`: a path scope has no query or fragment"));
        }
        let mut segs = Vec::new();
        for seg in rest.split('/') {
            segs.push(match seg {
                "*" => GlobSeg::One,
                "**" => GlobSeg::Any,
                "." | ".." => return Err(format!("`{s}`: dot-segments are not allowed")),
                _ if seg.contains('*') => {
                    return Err(format!("`{s}`: `*` and `**` must be whole segments"));
                }
                _ if seg.contains('%') => {
                    return Err(format!("`{s}`: write the path decoded (no `%`)"));
                }
                _ => GlobSeg::Lit(seg.to_string()),
            });
        }
        Ok(PathGlob {
            text: s.to_string(),
            segs,
        })
    }

    /// Whether the normalised path (segments from [`normalize_path`]) matches.
    pub fn matches(&self, path: &[String]) -> bool {
        fn go(p: &[GlobSeg], s: &[String]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((GlobSeg::Any, rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
                Some((GlobSeg::One, rest)) => !s.is_empty() && go(rest, &s[1..]),
                Some((GlobSeg::Lit(l), rest)) => {
                    s.first().is_some_and(|x| x == l) && go(rest, &s[1..])
                }
            }
        }
        go(&self.segs, path)
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The scope of one credential: positions (never empty), optional paths and methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Where its stub may stand. Default `[header:authorization]`.
    pub positions: Vec<Position>,
    /// Request paths it may be used on; empty = any.
    pub paths: Vec<PathGlob>,
    /// Methods (upper-case) it may be used with; empty = any.
    pub methods: Vec<String>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            positions: vec![Position::Header("authorization".into())],
            paths: Vec::new(),
            methods: Vec::new(),
        }
    }
}

impl Scope {
    /// Whether a stub may stand at `p`.
    pub fn allows(&self, p: &Position) -> bool {
        self.positions.contains(p)
    }

    /// Whether any position is in the body.
    pub fn has_body_positions(&self) -> bool {
        self.positions.iter().any(Position::in_body)
    }

    /// Whether `method` is allowed.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Whether the raw request path (no query) is allowed. A path that cannot
    /// be normalised unambiguously never matches a scope.
    pub fn allows_path(&self, raw_path: &str) -> bool {
        if self.paths.is_empty() {
            return true;
        }
        match normalize_path(raw_path) {
            Some(segs) => self.paths.iter().any(|g| g.matches(&segs)),
            None => false,
        }
    }
}

/// The path as a server would see it, as segments: percent-decoded, with
/// dot-segments (`.`/`..`, also as `%2e`, and `..;params` as Tomcat reads them)
/// removed per RFC 3986 §5.2.4. `None` when the path is ambiguous: an encoded
/// `/` or `\` (`%2f`, `%5c`), a raw `\`, a NUL, invalid UTF-8 or a bad escape —
/// servers disagree on those, so a path scope never matches them.
pub fn normalize_path(raw: &str) -> Option<Vec<String>> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    if raw.contains('\\') {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let rest = raw.strip_prefix('/').unwrap_or(raw);
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        let dec = decode_segment(seg)?;
        let base = dec.split(';').next().unwrap_or("");
        match base {
            "." => {
                if i + 1 == n {
                    out.push(String::new());
                }
            }
            ".." => {
                out.pop();
                if i + 1 == n {
                    out.push(String::new());
                }
            }
            _ => out.push(dec),
        }
    }
    // "/a/" → ["a", ""]: a trailing empty segment is kept (servers tell them apart),
    // but a lone "/" is the root: no segments.
    if out.len() == 1 && out[0].is_empty() {
        out.clear();
    }
    Some(out)
}

fn decode_segment(seg: &str) -> Option<String> {
    if !seg.contains('%') {
        return Some(seg.to_string());
    }
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v == b'/' || v == b'\\' || v == 0 {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Option<Vec<String>> {
        normalize_path(p)
    }

    #[test]
    fn positions_parse() {
        assert_eq!(
            Position::parse("header:X-Api-Key").unwrap(),
            Position::Header("x-api-key".into())
        );
        assert_eq!(Position::parse("path").unwrap(), Position::Path);
        assert_eq!(
            Position::parse("json:/auth/token").unwrap(),
            Position::Json("/auth/token".into())
        );
        for bad in [
            "cookie:a",
            "header:",
            "json:token",
            "header:bad name",
            "header:proxy-authorization",
            "body",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_normalise_and_cannot_escape() {
        let scope = Scope {
            paths: vec![PathGlob::parse("/repos/acme/**").unwrap()],
            ..Scope::default()
        };
        for ok in [
            "/repos/acme",
            "/repos/acme/x/issues",
            "/repos/acme/./x",
            "/repos/%61cme/x",
        ] {
            assert!(scope.allows_path(ok), "{ok}");
        }
        for bad in [
            "/repos/acme/../other/x",
            "/repos/acme/%2e%2e/other",
            "/repos/acme/%2E%2E/other",
            "/repos/acme/.%2e/other",
            "/repos/acme/..;/other",
            "/repos/acme%2f..%2fother",
            "/repos/acme/..%2fother",
            "/repos/acme\\..\\other",
            "/repos/acmeX/y",
            "/repos",
            "/",
        ] {
            assert!(!scope.allows_path(bad), "{bad}");
        }
        assert_eq!(segs("/a/b/../c").unwrap(), vec!["a", "c"]);
        assert_eq!(segs("/").unwrap(), Vec::<String>::new());
        let one = PathGlob::parse("/bot/*/sendMessage").unwrap();
        assert!(one.matches(&segs("/bot/x/sendMessage").unwrap()));
        assert!(!one.matches(&segs("/bot/x/y/sendMessage").unwrap()));
        assert!(PathGlob::parse("/a/b*").is_err());
        assert!(PathGlob::parse("a/b").is_err());
        assert!(PathGlob::parse("/a/../b").is_err());
    }

    #[test]
    fn methods() {
        let s = Scope {
            methods: vec!["GET".into()],
            ..Scope::default()
        };
        assert!(s.allows_method("GET"));
        assert!(!s.allows_method("POST"));
        assert!(Scope::default().allows_method("DELETE"));
    }
}
