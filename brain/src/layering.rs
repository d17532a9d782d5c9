//! Tests that keep the layers of ARCHITECTURE.md ("Layers of the brain") true where they are
//! enforced: they read the source files and fail when a module names one above it.
//!
//! - `sandbox/` is the bottom layer: it names nothing of the crate outside `crate::sandbox`
//!   (no `config`, `credentials`, `lifecycle`, `store`, `sessions`, …), neither through
//!   `crate::` nor by climbing out with `super::`.
//! - The config leaves (`*/config.rs` that `config.rs` aggregates) name nothing but the
//!   sandbox layer, so `config.rs` never reaches above the layer that reads it.
//!
//! `bench/module_cycles.py` measures what is left of the import cycles elsewhere.

use std::path::{Path, PathBuf};

/// Every top-level module of the crate a path `crate::…` names in `src` (comments removed),
/// with the line it is on. `use crate::{a, b::c}` names `a` and `b`.
fn crate_modules_named(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in strip_comments(src).lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `my_crate::…`
            }
            if let Some(group) = rest.strip_prefix('{') {
                // A group may span lines: take the text up to its closing brace.
                let whole = group_text(src, n, group);
                for name in top_level_names(&whole) {
                    out.push((n + 1, name));
                }
            } else {
                out.push((n + 1, ident(rest).to_string()));
            }
        }
    }
    out
}

/// The text after `{` up to the matching `}`, continuing on the following lines.
fn group_text(src: &str, n: usize, group_start: &str) -> String {
    let mut text = group_start.to_string();
    for next in strip_comments(src).lines().skip(n + 1) {
        if balanced_close(&text).is_some() {
            break;
        }
        text.push(' ');
        text.push_str(next);
    }
    match balanced_close(&text) {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

fn balanced_close(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `a, b::{c, d}, e as f` → `a`, `b`, `e`.
fn top_level_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in group.char_indices().chain([(group.len(), ',')]) {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                let name = ident(group[start..i.min(group.len())].trim());
                if !name.is_empty() {
                    names.push(name.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    names
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Removes `//` comments (doc comments included) and the contents of plain string literals,
/// so prose and test data naming a module do not count. Block comments are not used in
/// these files.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut prev = '\0';
        let mut kept = String::new();
        for c in line.chars() {
            if in_str {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_str = false;
                    kept.push(c);
                }
                continue;
            }
            if c == '/' && prev == '/' {
                kept.pop();
                break;
            }
            if c == '"' {
                in_str = true;
            }
            kept.push(c);
            prev = c;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// How many `super::` in a row appear anywhere in `src` (comments removed), at most.
fn deepest_super(src: &str) -> usize {
    let text = strip_comments(src);
    let mut deepest = 0;
    let mut rest = text.as_str();
    while let Some(at) = rest.find("super::") {
        let mut count = 0;
        let mut tail = &rest[at..];
        while let Some(t) = tail.strip_prefix("super::") {
            count += 1;
            tail = t;
        }
        deepest = deepest.max(count);
        rest = tail;
    }
    deepest
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// How many modules deep below `sandbox` a file is (`sandbox/mod.rs` 0, `sandbox/e2b.rs` 1,
/// `sandbox/docker/spec.rs` 2): that many `super::` still stay inside `sandbox`.
fn depth_below(root: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(root).expect("below root");
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The violations of "names only `crate::<allowed>`" in the files given.
fn upward_names(files: &[PathBuf], allowed: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let src = std::fs::read_to_string(file).expect("read source");
        for (line, name) in crate_modules_named(&src) {
            if !allowed.contains(&name.as_str()) {
                bad.push(format!("{}:{line}: crate::{name}", file.display()));
            }
        }
    }
    bad
}

#[test]
fn the_scanner_finds_upward_names_in_every_form() {
    let src = "use crate::sandbox::BackendError;\n\
               use crate::{config, sandbox::Resources};\n\
               use crate::{\n    credentials::CredentialGrant,\n    lifecycle,\n};\n\
               fn f() { crate::state::AppState::new(); }\n\
               // crate::api in a comment\n\
               const S: &str = \"crate::mcp in a string\";\n\
               use airlock_crate::x;\n";
    let names: Vec<String> = crate_modules_named(src)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        names,
        [
            "sandbox",
            "config",
            "sandbox",
            "credentials",
            "lifecycle",
            "state"
        ]
    );
    assert_eq!(deepest_super("use super::super::x; use super::y;"), 2);
}

#[test]
fn sandbox_backends_import_nothing_above_them() {
    let root = src_dir().join("sandbox");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found the sandbox sources: {files:?}");
    let mut bad = upward_names(&files, &["sandbox"]);
    for file in &files {
        let src = std::fs::read_to_string(file).expect("read source");
        // Inline `mod tests { … }` blocks add one level; allow it.
        let allowed = depth_below(&root, file) + usize::from(src.contains("mod tests {"));
        let deepest = deepest_super(&src);
        if deepest > allowed {
            bad.push(format!(
                "{}: {deepest}× super:: climbs out of sandbox/",
                file.display()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "sandbox/ is the bottom layer (ARCHITECTURE.md, \"Layers of the brain\"); these name \
         modules above it:\n{}",
        bad.join("\n")
    );
}

#[test]
fn config_leaves_import_only_the_sandbox_layer() {
    let src = src_dir();
    let files: Vec<PathBuf> = [
        "sandbox/config.rs",
        "sessions/config.rs",
        "triggers/config.rs",
        "mcp/config.rs",
        "pool/config.rs",
        "code_interpreter/config.rs",
    ]
    .iter()
    .map(|f| src.join(f))
    .collect();
    let bad = upward_names(&files, &["sandbox"]);
    assert!(
        bad.is_empty(),
        "config leaves are read by config.rs, which every layer reads; they may name only the \
         sandbox layer:\n{}",
        bad.join("\n")
    );
}

/// The modules of the two top layers (api / mcp, then cli): nothing at the sessions /
/// triggers layer or below may name them.
const ABOVE_SESSIONS: &[&str] = &["api", "ui", "mcp", "cli", "code_interpreter"];

/// The violations of "names none of `crate::<forbidden>`" in the files given.
fn forbidden_names(files: &[PathBuf], forbidden: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let src = std::fs::read_to_string(file).expect("read source");
        for (line, name) in crate_modules_named(&src) {
            if forbidden.contains(&name.as_str()) {
                bad.push(format!("{}:{line}: crate::{name}", file.display()));
            }
        }
    }
    bad
}

#[test]
fn sessions_and_triggers_import_nothing_from_api_ui_mcp_or_cli() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src.join("sessions"), &mut files);
    rust_files(&src.join("triggers"), &mut files);
    // The shared answering of approvals sits at this layer so the triggers can reach it.
    files.extend(["approvals.rs", "error.rs"].map(|f| src.join(f)));
    assert!(
        files.iter().any(|f| f.ends_with("triggers/github.rs"))
            && files.iter().any(|f| f.ends_with("sessions/agent.rs")),
        "found the sessions and triggers sources: {files:?}"
    );
    let bad = forbidden_names(&files, ABOVE_SESSIONS);
    assert!(
        bad.is_empty(),
        "sessions/ and triggers/ are below api / mcp and cli (ARCHITECTURE.md, \"Layers of the \
         brain\"); these name modules above them:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_denylist_catches_an_upward_name() {
    let dir = std::env::temp_dir().join(format!("layering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("x.rs");
    std::fs::write(
        &file,
        "use crate::{store, ui::github::Answer};\nfn f() { crate::api::approvals::broker(); }\n",
    )
    .expect("write");
    let bad = forbidden_names(std::slice::from_ref(&file), ABOVE_SESSIONS);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].ends_with(":1: crate::ui") && bad[1].ends_with(":2: crate::api"));
}
