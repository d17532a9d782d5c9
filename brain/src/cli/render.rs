//! Event, session and audit record → terminal text.

use serde_json::Value;

/// Longest tool output shown per result in the transcript (the event log keeps it all).
const SHOW_OUTPUT: usize = 1200;

pub fn status_is_terminal(status: &Value) -> bool {
    matches!(status.as_str(), Some("succeeded" | "failed" | "cancelled"))
}

pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn indent(text: &str, prefix: &str) -> String {
    let mut shown: String = text.chars().take(SHOW_OUTPUT).collect();
    if shown.len() < text.len() {
        shown.push_str(" …");
    }
    shown
        .trim_end()
        .lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One transcript entry for an event (`{"seq","ts","kind","data"}`); None for bookkeeping
/// events the progress line covers.
pub fn event_line(event: &Value) -> Option<String> {
    let d = &event["data"];
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    match event["kind"].as_str()? {
        "session_started" => Some(format!(
            "▶ task: {}\n  model {} · backend {} · credentials {}",
            s("task"),
            s("model"),
            d["backend"].as_str().unwrap_or("default"),
            d["credentials"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "none".into()),
        )),
        "user_message" if d.get("message_id").is_some() => {
            Some(format!("» follow-up: {}", s("text")))
        }
        "user_message" => None,
        "model_response" => {
            let mut out = format!(
                "● model (step {}, {} in / {} out tokens, ${:.6})",
                d["step"],
                d["usage"]["input_tokens"],
                d["usage"]["output_tokens"],
                d["cost_usd"].as_f64().unwrap_or(0.0)
            );
            let text = s("text");
            if !text.trim().is_empty() {
                out.push('\n');
                out.push_str(&indent(&text, "  "));
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\n  → {}({})",
                    call["name"].as_str().unwrap_or("?"),
                    clip(call["arguments"].as_str().unwrap_or(""), 200)
                ));
            }
            Some(out)
        }
        "tool_result" => {
            let name = s("name");
            let err = d["is_error"].as_bool().unwrap_or(false);
            let content = s("content");
            let parsed: Value = serde_json::from_str(&content).unwrap_or(Value::Null);
            let body = if let Some(code) = parsed.get("exit_code") {
                let mut b = format!("exit {}", code);
                if parsed["timed_out"] == true {
                    b.push_str(" (timed out)");
                }
                if let Some(o) = parsed["stdout"].as_str().filter(|o| !o.is_empty()) {
                    b.push('\n');
                    b.push_str(&indent(o, "    │ "));
                }
                if let Some(e) = parsed["stderr"].as_str().filter(|e| !e.is_empty()) {
                    b.push('\n');
                    b.push_str(&indent(e, "    ! "));
                }
                if let Some(n) = parsed["note"].as_str() {
                    b.push_str(&format!("\n    note: {n}"));
                }
                b
            } else if let Some(e) = parsed.get("error").and_then(Value::as_str) {
                e.to_owned()
            } else {
                clip(&content, 300)
            };
            Some(format!(
                "  ← {name}{}: {body}",
                if err { " [error]" } else { "" }
            ))
        }
        "model_error" => Some(format!("✗ model error: {}", s("error"))),
        "resumed" => {
            let interrupted = d["interrupted_tool_calls"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            Some(format!(
                "↻ resumed by {}{}",
                s("instance"),
                if interrupted > 0 {
                    format!(" ({interrupted} tool call(s) interrupted, not re-run)")
                } else {
                    String::new()
                }
            ))
        }
        "status" => {
            let status = s("status");
            let detail = d["error"]
                .as_str()
                .or_else(|| d["result"].as_str())
                .unwrap_or("");
            Some(format!("■ {status}: {}", detail.trim()))
        }
        _ => None,
    }
}

/// What the spinner says while a session runs.
pub fn progress_label(event: &Value) -> String {
    let d = &event["data"];
    match event["kind"].as_str().unwrap_or("") {
        "model_request" => format!("step {} · waiting for the model", d["step"]),
        "tool_started" => format!(
            "running {} {}",
            d["name"].as_str().unwrap_or("?"),
            clip(&d["arguments"].to_string(), 60)
        ),
        "status" => d["status"].as_str().unwrap_or("").to_string(),
        kind => kind.replace('_', " "),
    }
}

pub fn summary(session: &Value) -> String {
    format!(
        "{} · {} step(s) · {} in / {} out tokens · ${:.6}{}",
        session["status"].as_str().unwrap_or("?"),
        session["steps"],
        session["usage"]["input_tokens"],
        session["usage"]["output_tokens"],
        session["cost_usd"].as_f64().unwrap_or(0.0),
        session["error"]
            .as_str()
            .map(|e| format!(" · {e}"))
            .unwrap_or_default()
    )
}

pub fn audit_line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
    format!(
        "#{} {} {} {:<5} {:<5} {}:{} {} {} credential={} sandbox={} status={} reason={}",
        r["seq"],
        s("ts"),
        s("event"),
        s("decision"),
        s("method"),
        s("host"),
        r["port"],
        s("path"),
        r["session"]
            .as_str()
            .map(|x| format!("session={x}"))
            .unwrap_or_default(),
        s("credential"),
        s("sandbox"),
        r["status"],
        s("reason"),
    )
}

/// `brain audit verify`'s line, worded like `vault-proxy audit verify`'s.
pub fn verify_line(r: &Value) -> String {
    if let Some(b) = r["broken"].as_object() {
        return format!(
            "audit log broken at seq {}: {}",
            b.get("seq").unwrap_or(&Value::Null),
            b.get("reason").and_then(Value::as_str).unwrap_or("-")
        );
    }
    let latest = match r["latest_recorded"].as_object() {
        Some(h) => format!(
            "; reaches all {} recorded heads (latest {}:{} recorded {})",
            r["recorded_heads"],
            h.get("seq").unwrap_or(&Value::Null),
            h.get("hash").and_then(Value::as_str).unwrap_or("-"),
            h.get("recorded_at").and_then(Value::as_str).unwrap_or("-"),
        ),
        None => "; no head recorded yet (a cut-off tail cannot be ruled out)".into(),
    };
    format!(
        "ok: {} records, head {}:{}{latest}",
        r["records"],
        r["head"]["seq"],
        r["head"]["hash"].as_str().unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verify_lines_name_the_head_or_the_first_bad_seq() {
        let h = "ab".repeat(32);
        let ok = json!({"ok": true, "records": 5, "head": {"seq": 5, "hash": h},
            "recorded_heads": 2, "latest_recorded": {"seq": 4, "hash": h,
            "recorded_at": "2026-01-01T00:00:00+00:00"}, "broken": null});
        assert_eq!(
            verify_line(&ok),
            format!(
                "ok: 5 records, head 5:{h}; reaches all 2 recorded heads (latest 4:{h} recorded 2026-01-01T00:00:00+00:00)"
            )
        );
        let broken = json!({"ok": false, "records": 3, "head": {"seq": 3, "hash": h},
            "recorded_heads": 1, "latest_recorded": {"seq": 5, "hash": h, "recorded_at": "x"},
            "broken": {"seq": 4, "reason": "its tail was cut off"}});
        assert_eq!(
            verify_line(&broken),
            "audit log broken at seq 4: its tail was cut off"
        );
    }

    #[test]
    fn exec_results_render_exit_code_and_output() {
        let content = json!({"exit_code": 0, "stdout": "hello\n", "stderr": ""}).to_string();
        let line = event_line(&json!({"kind": "tool_result", "data": {
            "name": "sandbox_execute", "content": content, "is_error": false}}))
        .unwrap();
        assert!(line.contains("exit 0"), "{line}");
        assert!(line.contains("│ hello"), "{line}");
        assert!(event_line(&json!({"kind": "model_request", "data": {}})).is_none());
        assert!(status_is_terminal(&json!("failed")));
        assert!(!status_is_terminal(&json!("running")));
    }
}
