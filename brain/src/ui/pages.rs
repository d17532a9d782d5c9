//! HTML of the console pages (maud: escaped by default, no inline script or style).

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::credentials::{AuditHead, AuditRecord, CredentialInfo, PendingApproval};
use crate::sessions::{EventRow, SessionView};
use crate::store::SandboxRow;

/// `<time>` with the absolute time in `datetime`/`title`; app.js makes the text relative.
pub fn time(ts: &str) -> Markup {
    html! { time datetime=(ts) title=(ts) data-rel { (ts) } }
}

pub fn time_dt(ts: &DateTime<Utc>) -> Markup {
    time(&ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Who is signed in, for the header.
pub struct User<'a> {
    pub who: &'a str,
    /// The master key (every page) or a virtual key (its sessions and their approvals).
    pub master: bool,
    pub csrf: &'a str,
}

pub fn layout(title: &str, active: &str, user: Option<&User>, body: Markup) -> Markup {
    // (key, href, label, master key only)
    let nav = [
        ("sessions", "/ui/sessions", "Sessions", false),
        ("sandboxes", "/ui/sandboxes", "Sandboxes", true),
        ("audit", "/ui/audit", "Egress audit", true),
        ("credentials", "/ui/credentials", "Credentials", true),
        ("approvals", "/ui/approvals", "Approvals", false),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Airlock" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                header {
                    span.brand { "Airlock" }
                    @if let Some(u) = user {
                        @for (key, href, label, master) in nav {
                            @if u.master || !master {
                                a.on[key == active] href=(href) { (label) }
                            }
                        }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(u.csrf);
                            span.mut #who { (u.who) " " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        div.login {
            h1 { "Sign in to Airlock" }
            @if let Some(e) = error { div.flash { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="key" { "Master key or virtual key" }
                input #key type="password" name="key" autocomplete="current-password" autofocus required;
                button.primary type="submit" { "Sign in" }
            }
        }
    }
}

fn status(s: &str) -> Markup {
    html! { span class={ "st st-" (s) } { (s) } }
}

pub struct SessionsQuery<'a> {
    pub status: &'a str,
    pub origin: &'a str,
    pub q: &'a str,
}

/// The link to the next (older) page of sessions.
pub struct Next {
    pub href: String,
    /// Set when this page is short but there is more to look at: how many sessions this
    /// page looked at, back to when.
    pub searched: Option<(usize, DateTime<Utc>)>,
}

pub fn sessions(list: &[SessionView], f: &SessionsQuery, next: Option<&Next>) -> Markup {
    html! {
        h1 { "Sessions" }
        form.filters method="get" action="/ui/sessions" {
            label { "Status" select name="status" {
                @for s in ["", "queued", "running", "succeeded", "failed", "cancelled"] {
                    option value=(s) selected[s == f.status] { @if s.is_empty() { "any" } @else { (s) } }
                }
            } }
            label { "Origin" select name="origin" {
                @for s in ["", "api", "slack", "github", "mcp"] {
                    option value=(s) selected[s == f.origin] { @if s.is_empty() { "any" } @else { (s) } }
                }
            } }
            label { "Search (task, id)" input type="search" name="q" value=(f.q); }
            button type="submit" { "Filter" }
        }
        div #sessions data-refresh="3000" {
        @if list.is_empty() { div.empty { "No sessions." } } @else {
            table {
                thead { tr { th { "Session" } th { "Status" } th { "Origin" } th { "Model" }
                    th { "Steps" } th { "Cost" } th { "Task" } th { "Created" } } }
                tbody { @for s in list {
                    tr {
                        td.mono { a href={ "/ui/sessions/" (s.id) } { (s.id) } }
                        td { (status(s.status.as_str())) }
                        td { (s.origin["kind"].as_str().unwrap_or("?")) }
                        td.mono { (s.model) }
                        td { (s.steps) "/" (s.max_steps) }
                        td { "$" (format!("{:.4}", s.cost_usd)) }
                        td.wrap { (truncate(&s.task, 160)) }
                        td { (time(&s.created_at)) }
                    }
                } }
            }
        }
        }
        @if let Some(n) = next {
            div.pager {
                @if let Some((scanned, until)) = &n.searched {
                    span.mut #searched { "Looked at " (scanned) " sessions, back to " (time_dt(until)) ". " }
                }
                a #older href=(n.href) { "Older →" }
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

pub fn event(e: &EventRow) -> Markup {
    let body = serde_json::to_string_pretty(&e.data).unwrap_or_default();
    let ts = DateTime::<Utc>::from_timestamp_millis(e.ts).unwrap_or_default();
    html! {
        div class={ "ev ev-" (e.kind) } data-seq=(e.seq) {
            div.mut { span.mono { "#" (e.seq) " " (e.kind) " " } (time_dt(&ts)) }
            @if body.len() > 600 {
                details { summary { (truncate(&body.replace('\n', " "), 120)) }
                    pre.mono { (body) } }
            } @else { pre.mono { (body) } }
        }
    }
}

pub fn session(s: &SessionView, events: &[EventRow], csrf: &str) -> Markup {
    let after = events.last().map_or(0, |e| e.seq);
    html! {
        h1 { "Session " span.mono { (s.id) } " " span #status class={ "st st-" (s.status.as_str()) } { (s.status.as_str()) } }
        table { tbody {
            tr { th { "Task" } td.wrap { (s.task) } }
            tr { th { "Origin" } td { (s.origin["kind"].as_str().unwrap_or("?")) } }
            tr { th { "Model" } td.mono { (s.model) } }
            tr { th { "Usage" } td { (s.steps) " steps · " (s.usage.input_tokens) " in / " (s.usage.output_tokens) " out · $" (format!("{:.4}", s.cost_usd)) } }
            tr { th { "Sandboxes" } td.mono { @for id in &s.sandbox_ids { (id) " " } } }
            @if let Some(r) = &s.result { tr { th { "Result" } td.wrap { (r) } } }
            @if let Some(e) = &s.error { tr { th { "Error" } td.wrap { (e) } } }
            tr { th { "Created" } td { (time(&s.created_at)) } }
        } }
        p {
            form.inline method="post" action={ "/ui/sessions/" (s.id) "/cancel" } {
                input type="hidden" name="csrf" value=(csrf);
                button.danger type="submit" { "Cancel session" }
            }
        }
        form method="post" action={ "/ui/sessions/" (s.id) "/messages" } {
            input type="hidden" name="csrf" value=(csrf);
            textarea name="text" rows="2" cols="80" placeholder="Follow-up message" required {}
            " " button type="submit" { "Send" }
        }
        h1 { "Transcript" }
        div.events #events data-stream={ "/ui/sessions/" (s.id) "/events" } data-after=(after) {
            @for e in events { (event(e)) }
        }
        @if events.is_empty() { noscript { div.empty { "No events yet; reload to refresh." } } }
    }
}

pub fn sandboxes(list: &[SandboxRow], csrf: &str) -> Markup {
    html! {
        h1 { "Sandboxes" }
        @if list.is_empty() { div.empty { "No sandboxes." } } @else {
            table {
                thead { tr { th { "Sandbox" } th { "Backend" } th { "Status" } th { "Session" }
                    th { "Credentials" } th { "Expires" } th { "Created" } th {} } }
                tbody { @for s in list {
                    tr {
                        td.mono { (s.id) }
                        td { (s.backend.as_str()) }
                        td { (status(&format!("{:?}", s.status).to_lowercase())) }
                        td.mono { @if let Some(id) = &s.session_id { a href={ "/ui/sessions/" (id) } { (id) } } }
                        td.mono { @if let Some(c) = s.request["credentials"].as_array() {
                            @for n in c { (n.as_str().unwrap_or("")) " " } } }
                        td { (time_dt(&s.expires_at)) }
                        td { (time_dt(&s.created_at)) }
                        td { @if s.destroyed_at.is_none() {
                            form.inline method="post" action={ "/ui/sandboxes/" (s.id) "/destroy" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.danger type="submit" { "Destroy" } } } }
                    }
                } }
            }
        }
    }
}

pub struct AuditQuery<'a> {
    pub session: &'a str,
    pub sandbox: &'a str,
    pub credential: &'a str,
    pub decision: &'a str,
    pub host: &'a str,
    pub since: &'a str,
}

/// The audit chain's state for the audit page.
pub struct Chain<'a> {
    pub checked: Option<&'a super::audit_status::Checked>,
    pub running: bool,
    pub head: Option<&'a AuditHead>,
    pub head_error: Option<&'a str>,
    pub csrf: &'a str,
}

fn chain(c: &Chain) -> Markup {
    let at = |ts: &DateTime<Utc>| time_dt(ts);
    html! {
        div.chain #chain {
            @match c.checked.map(|k| (&k.at, &k.result)) {
                None => { span.st #chain-status { "not verified yet" } }
                Some((ts, Ok(v))) if v["ok"] == true => {
                    span class="st st-ok" #chain-status { "chain intact" }
                    " " (v["records"].to_string()) " records verified against " (v["recorded_heads"].to_string()) " recorded heads, " (at(ts))
                }
                Some((ts, Ok(v))) => {
                    span class="st st-broken" #chain-status { "chain BROKEN" }
                    " at seq " span.mono { (v["broken"]["seq"].to_string()) } ": " (v["broken"]["reason"].as_str().unwrap_or("")) ", " (at(ts))
                }
                Some((ts, Err(e))) => {
                    span class="st st-failed" #chain-status { "not verified" } " " (e) ", " (at(ts))
                }
            }
            @if c.running { " " span.mut { "(verifying…)" } }
            " · head "
            @if let Some(h) = c.head {
                span.mono #chain-head title=(h.hash) { (h.seq) ":" (truncate(&h.hash, 16)) }
            } @else {
                span.mut { (c.head_error.unwrap_or("unknown")) }
            }
            " "
            form.inline method="post" action="/ui/audit/verify" {
                input type="hidden" name="csrf" value=(c.csrf);
                button type="submit" { "Verify now" }
            }
        }
    }
}

pub fn audit(
    recs: &[AuditRecord],
    f: &AuditQuery,
    export: &str,
    older: Option<&str>,
    c: &Chain,
) -> Markup {
    html! {
        h1 { "Egress audit" }
        (chain(c))
        form.filters method="get" action="/ui/audit" {
            label { "Session" input name="session" value=(f.session); }
            label { "Sandbox" input name="sandbox" value=(f.sandbox); }
            label { "Credential" input name="credential" value=(f.credential); }
            label { "Decision" select name="decision" {
                @for s in ["", "allow", "deny"] { option value=(s) selected[s == f.decision] { @if s.is_empty() { "any" } @else { (s) } } }
            } }
            label { "Host (exact)" input name="host" value=(f.host); }
            label { "Since (RFC 3339)" input name="since" value=(f.since) placeholder="2026-12-01T00:00:00Z"; }
            button type="submit" { "Filter" }
            a href=(export) { "Export JSONL" }
        }
        @if recs.is_empty() { div.empty { "No records." } } @else {
            table {
                thead { tr { th { "Seq" } th { "Time" } th { "Event" } th { "Decision" } th { "Sandbox" }
                    th { "Session" } th { "Host" } th { "Request" } th { "Credential" } th { "Reason" } th { "Status" } } }
                tbody { @for r in recs {
                    tr {
                        td.mono { (r.seq) }
                        td { (time(&r.ts)) }
                        td { (r.event.as_str()) }
                        td { (status(r.decision.as_str())) }
                        td.mono { (r.sandbox) }
                        td.mono { (r.session.as_deref().unwrap_or("")) }
                        td.mono { (r.host) ":" (r.port) }
                        td.mono.wrap { (r.method) " " (r.path) }
                        td.mono { (r.credential.as_deref().unwrap_or("")) }
                        td.wrap { (r.reason) }
                        td { @if let Some(s) = r.status { (s) } }
                    }
                } }
            }
        }
        @if let Some(href) = older {
            div.pager { a #older href=(href) { "Older →" } }
        }
    }
}

pub fn inbox(list: &[PendingApproval], csrf: &str) -> Markup {
    html! {
        @if list.is_empty() { div.empty { "Nothing is waiting for approval." } } @else {
            table {
                thead { tr { th { "Host" } th { "Request" } th { "Sandbox" } th { "Session" }
                    th { "Asked" } th { "Expires" } th { "Decision" } } }
                tbody { @for a in list {
                    tr data-approval=(a.id) {
                        td.mono { strong { (a.host) } ":" (a.port) }
                        td.mono.wrap { (a.method) " " (a.path) }
                        td.mono { (a.sandbox) }
                        td.mono { @if let Some(s) = &a.session { a href={ "/ui/sessions/" (s) } { (s) } } }
                        td { (time_dt(&a.created_at)) }
                        td { (time_dt(&a.expires_at)) }
                        td { form.inline method="post" action={ "/ui/approvals/" (a.id) } {
                            input type="hidden" name="csrf" value=(csrf);
                            button.primary type="submit" name="decision" value="allow_once" { "Allow once" } " "
                            button type="submit" name="decision" value="allow_session" { "Allow for session" } " "
                            button type="submit" name="decision" value="allow_always" { "Allow always" } " "
                            button.danger type="submit" name="decision" value="deny" { "Deny" }
                        } }
                    }
                } }
            }
        }
    }
}

pub fn approvals(list: &[PendingApproval], csrf: &str) -> Markup {
    html! {
        h1 { "Approvals" }
        p.mut { "Requests held by the vault proxy (egress " code { "ask" } "). Unanswered ones are denied when they expire." }
        div #inbox data-stream="/ui/approvals/stream" data-poll="/ui/approvals/inbox" { (inbox(list, csrf)) }
    }
}

fn list_or(items: &[String], empty: &str) -> Markup {
    html! {
        @if items.is_empty() { span.mut { (empty) } }
        @else { @for (i, v) in items.iter().enumerate() { @if i > 0 { ", " } span.mono { (v) } } }
    }
}

pub fn credentials(list: &Result<Vec<CredentialInfo>, String>) -> Markup {
    html! {
        h1 { "Credentials" }
        p.mut { "Where each credential may go. Values never leave the vault proxy; sandboxes hold stubs." }
        @match list {
            Err(e) => { div.flash { (e) } }
            Ok(l) if l.is_empty() => { div.empty { "No credentials are configured." } }
            Ok(l) => {
                table {
                    thead { tr { th { "Name" } th { "Type" } th { "Hosts" } th { "Positions" }
                        th { "Paths" } th { "Methods" } } }
                    tbody { @for c in l {
                        tr data-credential=(c.name) {
                            td.mono { strong { (c.name) } }
                            td { (c.kind) }
                            td { @if c.stored && c.hosts.is_empty() { span.mut { "from the secret store" } }
                                 @else { (list_or(&c.hosts, "none")) } }
                            td { (list_or(&c.positions, "none")) }
                            td { (list_or(&c.paths, "any")) }
                            td { (list_or(&c.methods, "any")) }
                        }
                    } }
                }
            }
        }
    }
}
