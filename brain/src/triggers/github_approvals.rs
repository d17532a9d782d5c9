//! Egress approvals on GitHub (issue 15). A pending approval of a GitHub-started session is
//! posted as a comment on the session's issue ([`notify`]); a comment on that issue
//! `/airlock allow <host>` (this session), `/airlock allow once <host>`, `/airlock allow always
//! <host>` or `/airlock deny <host>` answers it ([`answer`]), only from a user with write
//! access — checked with `GET /repos/{owner}/{repo}/collaborators/{user}/permission`
//! (docs.github.com/rest/collaborators/collaborators#get-repository-permissions-for-a-user:
//! `permission` is `admin`, `write`, `read` or `none`; `maintain` counts as write), as the
//! trigger checks its requesters. The comment reaches the brain as a signed `issue_comment`
//! `created` webhook (`X-Hub-Signature-256`, verified by the hook before anything is parsed);
//! a replayed body is recognised by its comment id (signed), whatever its `X-GitHub-Delivery`.
//! The audit names the GitHub user: `… by github:<login>`. Replies go through the durable
//! outbox (`POST /repos/{repo}/issues/{n}/comments`), like every trigger reply.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::credentials::{ApprovalDecision, PendingApproval};
use crate::state::AppState;
use crate::triggers::Triggers;
use crate::triggers::store::{self, ReplyPayload, Source};

const POLL: Duration = Duration::from_secs(1);

/// An answer found in a comment: `<prefix> allow [once|always] <host>` or `<prefix> deny <host>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub decision: ApprovalDecision,
    /// Lower-case host, optionally `:port`.
    pub host: String,
}

/// Parses the text after the command prefix; `None` when it is not an approval answer (then
/// it is an ordinary follow-up for the session).
pub fn parse(rest: &str) -> Option<Command> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (decision, host) = match words.as_slice() {
        ["allow", host] => (ApprovalDecision::AllowSession, *host),
        ["allow", "once", host] => (ApprovalDecision::AllowOnce, *host),
        ["allow", "always", host] => (ApprovalDecision::AllowAlways, *host),
        ["deny", host] => (ApprovalDecision::Deny, *host),
        _ => return None,
    };
    let host = host
        .trim_matches('`')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 260
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    valid.then_some(Command { decision, host })
}

/// Whether `a` is a request to `host` (`name`, any port, or `name:port`).
fn same_host(a: &PendingApproval, host: &str) -> bool {
    if let Some((name, port)) = host.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
    {
        return port == a.port && a.host.eq_ignore_ascii_case(name);
    }
    a.host.eq_ignore_ascii_case(host)
}

/// The GitHub issue `(repo, number)` of a GitHub-started approval's session.
/// The session's row says so (`origin`); a launcher that keeps no row (the shell test
/// launcher) is found through the trigger's issue → session mapping.
async fn issue_of(state: &AppState, a: &PendingApproval) -> Option<(String, u64)> {
    let session = a.session.as_deref()?;
    if let Ok(Some(row)) = state.store.get_session(session).await {
        if row.origin["kind"] != "github" {
            return None;
        }
        return Some((
            row.origin["repo"].as_str()?.to_string(),
            row.origin["issue"].as_u64()?,
        ));
    }
    let key = store::session_thread(&state.store, Source::Github, session)
        .await
        .ok()??;
    let (repo, issue) = key.rsplit_once('#')?;
    Some((repo.to_string(), issue.parse().ok()?))
}

fn prompt(a: &PendingApproval, prefix: &str) -> String {
    format!(
        "Airlock: sandbox `{sandbox}` wants to reach **{host}:{port}** (`{method} {path}`); the \
         request is held until it is answered or expires ({expires}, then denied).\n\n\
         A user with write access can answer with a comment:\n\
         - `{prefix} allow {host}`: for this session\n\
         - `{prefix} allow once {host}`: this request only\n\
         - `{prefix} allow always {host}`: every sandbox, until the proxy restarts\n\
         - `{prefix} deny {host}`",
        sandbox = a.sandbox,
        host = a.host,
        port = a.port,
        method = a.method,
        path = a.path.replace('`', "'"),
        expires = a
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The outbox key of an approval's prompt on GitHub: one comment per approval, ever.
fn prompt_key(approval: &str) -> String {
    format!("approval-prompt:github:{approval}")
}

/// Comments each new pending approval of a GitHub-started session on its issue, once — also
/// across brain restarts and replicas (a remote vault proxy keeps its approvals pending while
/// the brain restarts): the prompt is queued with [`store::enqueue_reply_once`] under a key
/// per approval. The in-memory set only spares the database a claim per poll.
pub async fn notify(state: AppState, triggers: Arc<Triggers>, mut stop: watch::Receiver<bool>) {
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (Some(broker), Some(github)) = (state.broker.as_ref(), triggers.github.as_ref()) else {
            return;
        };
        let Ok(pending) = broker.approvals().await else {
            continue;
        };
        seen.retain(|id| pending.iter().any(|a| &a.id == id));
        for a in pending {
            if seen.contains(&a.id) {
                continue;
            }
            let Some((repo, issue)) = issue_of(&state, &a).await else {
                seen.insert(a.id.clone());
                continue;
            };
            let body = prompt(&a, &github.config.command_prefix);
            let payload = ReplyPayload::GithubComment { repo, issue, body };
            match store::enqueue_reply_once(&state.store, &prompt_key(&a.id), &payload).await {
                Ok(queued) => {
                    seen.insert(a.id.clone());
                    if queued {
                        triggers.outbox_wakeup.notify_one();
                    }
                }
                // Tried again at the next poll.
                Err(e) => {
                    tracing::warn!(approval = %a.id, error = %e, "cannot queue an approval prompt")
                }
            }
        }
    }
}

/// An answer from a signed `issue_comment` delivery.
#[derive(Debug, Clone)]
pub struct Answer {
    pub repo: String,
    pub issue: u64,
    pub actor: String,
    pub command: Command,
    /// The signed deduplication key of the comment (`github::replay_key`).
    pub replay_key: String,
}

/// Records the comment (a replay answers nothing twice) and answers it in the background;
/// the hook answers 200 at once (GitHub wants a 2XX within 10 s).
pub async fn accept(
    state: &AppState,
    triggers: &Arc<Triggers>,
    answer: Answer,
) -> Result<(), crate::store::StoreError> {
    let key = format!("approval:{}", answer.replay_key);
    if !store::record_delivery(&state.store, Source::Github, &key).await? {
        tracing::info!(key, "duplicate github approval comment ignored");
        return Ok(());
    }
    tokio::spawn(self::answer(state.clone(), triggers.clone(), answer));
    Ok(())
}

/// Checks the commenter's write access (fail closed), then answers the held requests of the
/// issue's session to that host, and says so on the issue.
pub async fn answer(state: AppState, triggers: Arc<Triggers>, ans: Answer) {
    let Some(github) = triggers.github.as_ref() else {
        return;
    };
    let reply = |body: String| ReplyPayload::GithubComment {
        repo: ans.repo.clone(),
        issue: ans.issue,
        body,
    };
    match github
        .client
        .permission_with_retry(&ans.repo, &ans.actor)
        .await
    {
        Ok(p) if p == "admin" || p == "write" || p == "maintain" => {}
        Ok(p) => {
            tracing::warn!(repo = %ans.repo, issue = ans.issue, user = %ans.actor, permission = %p,
                "github approval answer refused: the commenter lacks write access");
            triggers
                .reply(
                    &state,
                    reply(format!(
                        "@{}: only users with write access can answer egress approvals; nothing \
                         was changed.",
                        ans.actor
                    )),
                )
                .await;
            return;
        }
        Err(e) => {
            tracing::error!(repo = %ans.repo, user = %ans.actor, error = %e,
                "github approval answer: permission check failed; not answering");
            return;
        }
    }
    let key = format!("{}#{}", ans.repo, ans.issue);
    let session = match store::thread_session(&state.store, Source::Github, &key).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            triggers
                .reply(
                    &state,
                    reply(format!("There is no Airlock session on {key}.")),
                )
                .await;
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, issue = %key, "github approval answer: store unavailable");
            return;
        }
    };
    let pending = match crate::approvals::broker(&state) {
        Ok(b) => b.approvals().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut matching: Vec<PendingApproval> = pending
        .into_iter()
        .filter(|a| {
            a.session.as_deref() == Some(session.as_str()) && same_host(a, &ans.command.host)
        })
        .collect();
    matching.sort_by_key(|a| a.created_at);
    if ans.command.decision == ApprovalDecision::AllowOnce {
        // "Once" lets one request through: the oldest.
        matching.truncate(1);
    }
    let by = format!("github:{}", ans.actor);
    let mut answered = 0usize;
    for a in &matching {
        if crate::approvals::decide_as(&state, &a.id, ans.command.decision, &by)
            .await
            .is_ok()
        {
            answered += 1;
        }
    }
    let body = if answered == 0 {
        format!(
            "@{}: no request of session `{session}` is waiting for `{}` (answered, expired, or \
             never asked).",
            ans.actor, ans.command.host
        )
    } else {
        format!(
            "@{} chose `{}` for `{}` ({answered} held request{}).",
            ans.actor,
            ans.command.decision.as_str(),
            ans.command.host,
            if answered == 1 { "" } else { "s" }
        )
    };
    triggers.reply(&state, reply(body)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_commands_parse_and_other_text_does_not() {
        let c = |d, h: &str| {
            Some(Command {
                decision: d,
                host: h.into(),
            })
        };
        assert_eq!(
            parse("allow registry.npmjs.org"),
            c(ApprovalDecision::AllowSession, "registry.npmjs.org")
        );
        assert_eq!(
            parse("  allow once `Example.COM.` "),
            c(ApprovalDecision::AllowOnce, "example.com")
        );
        assert_eq!(
            parse("allow always a.test:8443"),
            c(ApprovalDecision::AllowAlways, "a.test:8443")
        );
        assert_eq!(
            parse("deny evil.test"),
            c(ApprovalDecision::Deny, "evil.test")
        );
        assert_eq!(parse("allow"), None);
        assert_eq!(parse("allow me to explain this"), None);
        assert_eq!(parse("please fix the bug"), None);
        assert_eq!(parse("allow <script>"), None);
        assert_eq!(parse("deny a b"), None);
    }

    #[test]
    fn hosts_match_with_or_without_the_port() {
        let a = PendingApproval {
            id: "a1".into(),
            sandbox: "sb".into(),
            session: Some("s".into()),
            host: "Registry.test".into(),
            port: 443,
            method: "GET".into(),
            path: "/".into(),
            created_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
        };
        assert!(same_host(&a, "registry.test"));
        assert!(same_host(&a, "registry.test:443"));
        assert!(!same_host(&a, "registry.test:8443"));
        assert!(!same_host(&a, "other.test"));
    }
}
