//! `POST /hooks/github`: an issue labelled `airlock` (`issues` opened/labeled) or a comment
//! starting with `/airlock` (`issue_comment` created) from a user with write access starts a
//! session (or continues the issue's session). When it settles, the brain — not the model —
//! pushes the changes in the session's sandbox to `airlock/issue-N` and opens a draft PR
//! from inside the sandbox, with the sandbox's stub credential that the vault proxy swaps
//! for the real token toward the bound hosts only; then it comments the result on the issue.
//! The brain's own token (comments, permission checks) never enters a sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_wire::ExecRequest;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::inbox;
use super::outbox::{Delivery, retry_after};
use super::signature;
use super::store::{self, ReplyPayload, Source};
use super::waits::WaitContext;
use super::{
    GithubConfig, LaunchError, Limiter, TaskOutcome, TriggerSetupError, TriggeredTask, Triggers,
    truncate,
};
use crate::state::AppState;

/// GitHub caps a comment body at 65,536 characters.
const MAX_COMMENT_BYTES: usize = 60_000;
/// Attempts at the API calls made inline (permission check, opening the PR).
const INLINE_ATTEMPTS: u32 = 4;

pub struct GithubTrigger {
    pub config: GithubConfig,
    webhook_secret: String,
    pub client: GithubClient,
    pub limiter: Limiter,
}

impl GithubTrigger {
    pub fn new(
        config: GithubConfig,
        webhook_secret: String,
        token: String,
    ) -> Result<Self, TriggerSetupError> {
        let client = GithubClient::new(&config, token)?;
        let limiter = Limiter::new(config.max_concurrent, config.max_queued);
        Ok(Self {
            config,
            webhook_secret,
            client,
            limiter,
        })
    }
}

// === webhook payloads (the fields we use) ===

#[derive(Debug, Deserialize)]
struct Payload {
    action: String,
    issue: Issue,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    comment: Option<Comment>,
    repository: Repository,
    sender: User,
}

#[derive(Debug, Deserialize)]
struct Issue {
    /// GitHub's global id (absent only in hand-made payloads).
    #[serde(default)]
    id: Option<u64>,
    number: u64,
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Comment {
    #[serde(default)]
    id: Option<u64>,
    body: String,
    user: User,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// What a delivery asks for. Serialised into `trigger_waits` so another brain can finish it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub(crate) repo: String,
    pub(crate) issue: u64,
    title: String,
    /// The requester's words: the issue body, or the comment after the prefix.
    text: String,
    /// Who must have write access.
    actor: String,
    base: String,
}

fn valid_repo(full_name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(full_name.split_once('/'), Some((o, r)) if part(o) && part(r))
}

fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '.', '/'])
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// The deduplication key of a delivery, built from fields the signature covers (the
/// `X-GitHub-Delivery` header is not signed: a captured body resent with a fresh delivery id
/// must not start another session). A comment is one request (its id); a label or an opening
/// is one request per issue, action and label.
fn replay_key(event: &str, p: &Payload) -> String {
    let repo = &p.repository.full_name;
    let issue = p
        .issue
        .id
        .map_or_else(|| format!("#{}", p.issue.number), |id| id.to_string());
    match (event, p.comment.as_ref()) {
        ("issue_comment", Some(Comment { id: Some(id), .. })) => format!("comment:{id}"),
        ("issue_comment", Some(c)) => format!("comment:{repo}:{issue}:{}", c.body),
        _ => format!(
            "issue:{repo}:{issue}:{}:{}",
            p.action,
            p.label.as_ref().map_or("", |l| l.name.as_str())
        ),
    }
}

/// Picks the deliveries that start or continue work; `None` for everything else.
fn classify(event: &str, p: Payload, config: &GithubConfig) -> Option<Request> {
    if !valid_repo(&p.repository.full_name) {
        return None;
    }
    let base = p
        .repository
        .default_branch
        .filter(|b| valid_branch(b))
        .unwrap_or_else(|| "main".into());
    let text = match (event, p.action.as_str()) {
        ("issues", "labeled") if p.label.as_ref()?.name == config.label => {
            p.issue.body.clone().unwrap_or_default()
        }
        ("issues", "opened") if p.issue.labels.iter().any(|l| l.name == config.label) => {
            p.issue.body.clone().unwrap_or_default()
        }
        ("issue_comment", "created") => {
            let comment = p.comment.as_ref()?;
            if comment.user.kind.as_deref() == Some("Bot") {
                return None;
            }
            let rest = comment
                .body
                .trim_start()
                .strip_prefix(&config.command_prefix)?;
            // `/airlockfoo` is not the command.
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                return None;
            }
            rest.trim().to_string()
        }
        _ => return None,
    };
    if p.sender.kind.as_deref() == Some("Bot") {
        return None;
    }
    Some(Request {
        repo: p.repository.full_name,
        issue: p.issue.number,
        title: p.issue.title,
        text,
        actor: p.sender.login,
        base,
    })
}

/// A created comment (from a person) `<prefix> allow|deny …` naming a host.
fn approval_answer(
    event: &str,
    p: &Payload,
    config: &GithubConfig,
    replay_key: &str,
) -> Option<crate::triggers::github_approvals::Answer> {
    if event != "issue_comment" || p.action != "created" || !valid_repo(&p.repository.full_name) {
        return None;
    }
    let comment = p.comment.as_ref()?;
    if comment.user.kind.as_deref() == Some("Bot") || p.sender.kind.as_deref() == Some("Bot") {
        return None;
    }
    let rest = comment
        .body
        .trim_start()
        .strip_prefix(&config.command_prefix)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some(crate::triggers::github_approvals::Answer {
        repo: p.repository.full_name.clone(),
        issue: p.issue.number,
        actor: p.sender.login.clone(),
        command: crate::triggers::github_approvals::parse(rest)?,
        replay_key: replay_key.to_string(),
    })
}

pub async fn hook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(triggers) = state.triggers.clone() else {
        return (StatusCode::NOT_FOUND, "no github trigger configured").into_response();
    };
    let Some(github) = triggers.github.as_ref() else {
        return (StatusCode::NOT_FOUND, "no github trigger configured").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify_github(
        github.webhook_secret.as_bytes(),
        header("x-hub-signature-256"),
        &body,
    ) {
        tracing::warn!(reason = %e, delivery = header("x-github-delivery"), "github webhook refused");
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }
    let (Some(event), Some(delivery)) = (header("x-github-event"), header("x-github-delivery"))
    else {
        tracing::warn!("github webhook without X-GitHub-Event or X-GitHub-Delivery");
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event or X-GitHub-Delivery",
        )
            .into_response();
    };
    let (event, delivery) = (event.to_string(), delivery.to_string());
    if event == "ping" {
        return StatusCode::OK.into_response();
    }
    if event != "issues" && event != "issue_comment" {
        return StatusCode::OK.into_response();
    }
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(delivery, error = %e, "github webhook: unreadable payload");
            return (StatusCode::BAD_REQUEST, format!("invalid payload: {e}")).into_response();
        }
    };
    let key = replay_key(&event, &payload);
    // `/airlock allow|deny <host>`: an answer to a held egress request, not a follow-up.
    if let Some(answer) = approval_answer(&event, &payload, &github.config, &key) {
        return match crate::triggers::github_approvals::accept(&state, &triggers, answer).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => {
                tracing::error!(delivery, error = %e, "github approval answer: cannot record it");
                (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable").into_response()
            }
        };
    }
    let Some(request) = classify(&event, payload, &github.config) else {
        tracing::debug!(delivery, event, "github event ignored");
        return StatusCode::OK.into_response();
    };
    let Some(admission) = github.limiter.try_admit() else {
        tracing::warn!(
            delivery,
            in_flight = github.limiter.in_flight(),
            "github trigger at capacity; delivery refused (redeliver it later)"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    };
    // Durable before the 200 (the signed key and the event in one transaction): a crash right
    // after the ack loses nothing, and a store failure answers 500 so GitHub can redeliver.
    let (repo, issue) = (request.repo.clone(), request.issue);
    let payload = inbox::Payload::Github { request };
    let owner = state.sessions.instance();
    let claimed = match inbox::accept(&state.store, &key, &payload, owner, inbox::lease_ms(&state))
        .await
    {
        Ok(Some(claimed)) => {
            // Kept for tracing a delivery; the signed key above is what deduplicates.
            if let Err(e) = store::record_delivery(&state.store, Source::Github, &delivery).await {
                tracing::warn!(delivery, error = %e, "github webhook: cannot record delivery id");
            }
            claimed
        }
        Ok(None) => {
            tracing::info!(
                delivery,
                key,
                "duplicate github delivery ignored (same signed key: a redelivery or a replay)"
            );
            state.metrics.webhook("github", "deduplicated");
            return StatusCode::OK.into_response();
        }
        Err(e) => {
            tracing::error!(delivery, error = %e, "github webhook: cannot record delivery");
            return (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable").into_response();
        }
    };
    tracing::info!(delivery, repo = %repo, issue, "github event accepted");
    state.metrics.webhook("github", "accepted");
    tokio::spawn(inbox::process(state, triggers, claimed, admission));
    StatusCode::OK.into_response()
}

/// Checks the requester, then starts or continues the issue's session. Returns the comment
/// (and push) then owed, if any.
pub(crate) async fn handle_request(
    state: &AppState,
    triggers: &Arc<Triggers>,
    ev: &inbox::Claimed,
    req: Request,
) -> Option<(String, WaitContext)> {
    let github = triggers.github.as_ref()?;
    let key = format!("{}#{}", req.repo, req.issue);
    if let Some(session) = &ev.session_id {
        // Taken over after it had started or continued its session: only the reply is left.
        store::bind_thread(&state.store, Source::Github, &key, session)
            .await
            .ok();
        return Some((session.clone(), WaitContext::Github { request: req }));
    }
    let config = &github.config;
    match github
        .client
        .permission_with_retry(&req.repo, &req.actor)
        .await
    {
        Ok(p) if p == "admin" || p == "write" || p == "maintain" => {}
        Ok(p) => {
            tracing::warn!(repo = %req.repo, issue = req.issue, user = %req.actor, permission = %p,
                "github trigger refused: the requester lacks write access");
            return None;
        }
        Err(e) => {
            // Fail closed: no proof of write access, no session.
            tracing::error!(repo = %req.repo, issue = req.issue, user = %req.actor, error = %e,
                "github trigger: permission check failed; not starting");
            return None;
        }
    }
    let comment = |body: String| ReplyPayload::GithubComment {
        repo: req.repo.clone(),
        issue: req.issue,
        body: truncate(&body, MAX_COMMENT_BYTES),
    };
    // Held from the lookup until the new session is bound, so two events for one new
    // thread cannot both start a session (within this brain).
    let start_guard = triggers.thread_lock.lock().await;
    // The session this event starts, if the issue has none (idempotent: see below).
    let own = format!("ses-{}", super::session_key(&ev.id));
    let existing = match super::retry_store("github: reading the issue mapping", || {
        store::thread_session(&state.store, Source::Github, &key)
    })
    .await
    {
        Ok(existing) => existing,
        Err(e) => {
            tracing::error!(error = %e, issue = %key, "github: cannot read the issue mapping");
            return None;
        }
    };
    let session_id = match existing {
        // This event started it before a takeover or a lost answer: only the reply is left.
        Some(session) if session == own => session,
        Some(session) => {
            let follow_up = super::retry_launch("github: continuing a session", || {
                triggers.launcher.follow_up(&session, req.text.clone())
            });
            if let Err(e) = follow_up.await {
                triggers
                    .reply(
                        state,
                        comment(super::public_error(
                            &format!("Airlock could not continue session `{session}`"),
                            Some(&session),
                            &e,
                        )),
                    )
                    .await;
                return None;
            }
            session
        }
        None => {
            let clone_url = format!("https://{}/{}.git", config.git_host, req.repo);
            let task = TriggeredTask {
                task: format!(
                    "GitHub issue {key}: {title}\n\n{text}\n\n\
                     Clone {clone_url} into ./{dir} (use the {cred} credential: \
                     https://x-access-token:${cred}@{host}/{repo}.git) and make the change there. \
                     Do not push: Airlock pushes a branch and opens a draft pull request itself.",
                    title = req.title,
                    text = req.text,
                    dir = config.repo_dir,
                    cred = config.credential,
                    host = config.git_host,
                    repo = req.repo,
                ),
                request: req.text.clone(),
                credentials: vec![config.credential.clone()],
                origin: json!({"kind": "github", "repo": req.repo, "issue": req.issue,
                               "user": req.actor}),
                key: Some(super::session_key(&ev.id)),
            };
            let start = super::retry_launch("github: starting a session", || {
                triggers.launcher.start(task.clone())
            });
            let session = match start.await {
                Ok(id) => id,
                Err(e) => {
                    triggers
                        .reply(
                            state,
                            comment(super::public_error(
                                "Airlock could not start a session",
                                None,
                                &e,
                            )),
                        )
                        .await;
                    return None;
                }
            };
            let bind = super::retry_store("github: recording the issue", || {
                store::bind_thread(&state.store, Source::Github, &key, &session)
            });
            if let Err(e) = bind.await {
                tracing::error!(error = %e, session = %session, "github: cannot record the issue");
            }
            tracing::info!(session = %session, issue = %key, "github session started");
            session
        }
    };
    drop(start_guard);
    // A takeover of this event from here on only owes the comment.
    let recorded = super::retry_store("github: recording the event's session", || {
        inbox::set_session(&state.store, &ev.id, &session_id)
    });
    if let Err(e) = recorded.await {
        tracing::warn!(event = %ev.id, error = %e, "cannot record the event's session");
    }
    // The comment (and the push) are owed from here on; `waits` keeps that across a restart.
    Some((session_id, WaitContext::Github { request: req }))
}

/// For a settled session: pushes its changes and opens a draft PR when it succeeded, and
/// returns the issue comment that reports it.
pub(crate) async fn settled_reply(
    state: &AppState,
    triggers: &Arc<Triggers>,
    req: &Request,
    session_id: &str,
    outcome: Result<TaskOutcome, LaunchError>,
) -> ReplyPayload {
    let comment = |body: String| ReplyPayload::GithubComment {
        repo: req.repo.clone(),
        issue: req.issue,
        body: truncate(&body, MAX_COMMENT_BYTES),
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            return comment(super::public_error(
                &format!("Airlock lost track of session `{session_id}`"),
                Some(session_id),
                &e,
            ));
        }
    };
    let mut body = if outcome.succeeded {
        format!(
            "Airlock session `{session_id}` finished:\n\n{}",
            fenced(&outcome.summary)
        )
    } else {
        format!(
            "Airlock session `{session_id}` failed:\n\n{}",
            fenced(&outcome.summary)
        )
    };
    if let (true, Some(sandbox), Some(github)) = (
        outcome.succeeded,
        outcome.sandbox_id.as_deref(),
        triggers.github.as_ref(),
    ) {
        match publish(state, &github.config, sandbox, req).await {
            Ok(Published::PullRequest(url)) => {
                body.push_str(&format!("\n\nDraft pull request: {url}"))
            }
            Ok(Published::NoChanges) => body.push_str("\n\nNo code changes to push."),
            Err(e) => {
                let text = super::public_error("Pushing the changes failed", Some(session_id), &e);
                body.push_str(&format!("\n\n{text}"));
            }
        }
    }
    comment(body)
}

fn fenced(text: &str) -> String {
    let text = if text.trim().is_empty() {
        "(no output)"
    } else {
        text.trim()
    };
    format!("```\n{}\n```", text.replace("```", "`\u{200b}``"))
}

#[derive(Debug, PartialEq)]
enum Published {
    PullRequest(String),
    NoChanges,
}

/// Exit codes of [`PUSH_SCRIPT`] other than success.
const NO_CLONE: i32 = 3;
const NO_CHANGES: i32 = 4;

/// Runs in the sandbox, in its working directory. Inputs come as env vars (never spliced into
/// the script); the credential's stub is expanded inside the sandbox only.
const PUSH_SCRIPT: &str = r#"set -eu
export GIT_TERMINAL_PROMPT=0
[ -d "$AIRLOCK_REPO_DIR/.git" ] || exit 3
cd "$AIRLOCK_REPO_DIR"
git add -A
ahead=$(git rev-list --count "origin/$AIRLOCK_BASE..HEAD" 2>/dev/null || echo 0)
if git diff --cached --quiet && [ "$ahead" = 0 ]; then exit 4; fi
git checkout -q -B "$AIRLOCK_BRANCH"
if ! git diff --cached --quiet; then
  git -c user.name=Airlock -c user.email=airlock@localhost commit -q -m "$AIRLOCK_COMMIT_MSG"
fi
git push -q --force "https://x-access-token:${CREDENTIAL}@$AIRLOCK_GIT_HOST/$AIRLOCK_REPO.git" "HEAD:refs/heads/$AIRLOCK_BRANCH"
"#;

/// Opens the pull request; the body (JSON) comes on stdin. Prints the response body, then
/// the status code on the last line.
const PR_SCRIPT: &str = r#"curl -sS -X POST \
  -H "Authorization: Bearer ${CREDENTIAL}" \
  -H "Accept: application/vnd.github+json" \
  -H "X-GitHub-Api-Version: 2022-11-28" \
  -H "User-Agent: airlock" \
  -H "Content-Type: application/json" \
  --data-binary @- -w '\n%{http_code}' \
  "$AIRLOCK_API/repos/$AIRLOCK_REPO/pulls"
"#;

/// Pushes the session's changes and opens a draft PR, both from inside the sandbox.
async fn publish(
    state: &AppState,
    config: &GithubConfig,
    sandbox_id: &str,
    req: &Request,
) -> Result<Published, String> {
    let branch = format!("airlock/issue-{}", req.issue);
    let api = config
        .sandbox_api_base_url
        .as_deref()
        .unwrap_or(&config.api_base_url)
        .trim_end_matches('/')
        .to_string();
    let env: BTreeMap<String, String> = [
        ("AIRLOCK_REPO_DIR", config.repo_dir.clone()),
        ("AIRLOCK_BRANCH", branch.clone()),
        ("AIRLOCK_BASE", req.base.clone()),
        ("AIRLOCK_REPO", req.repo.clone()),
        ("AIRLOCK_GIT_HOST", config.git_host.clone()),
        ("AIRLOCK_API", api),
        (
            "AIRLOCK_COMMIT_MSG",
            format!(
                "{} (#{})",
                req.title.lines().next().unwrap_or("airlock"),
                req.issue
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The credential name was validated as an identifier (config::validate).
    let cred = format!("${{{}}}", config.credential);
    let push = sandbox_exec(
        state,
        sandbox_id,
        PUSH_SCRIPT.replace("${CREDENTIAL}", &cred),
        env.clone(),
        None,
    )
    .await?;
    match push.exit_code {
        Some(0) => {}
        Some(NO_CLONE) => return Ok(Published::NoChanges),
        Some(NO_CHANGES) => return Ok(Published::NoChanges),
        other => {
            return Err(format!(
                "git push exited {other:?}: {}",
                truncate(push.stderr.trim(), 2000)
            ));
        }
    }
    let pr = json!({
        "title": req.title,
        "head": branch,
        "base": req.base,
        "body": format!("Opened by Airlock for #{}.", req.issue),
        "draft": true,
    })
    .to_string();
    let mut last = String::new();
    for attempt in 0..INLINE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let out = sandbox_exec(
            state,
            sandbox_id,
            PR_SCRIPT.replace("${CREDENTIAL}", &cred),
            env.clone(),
            Some(pr.clone()),
        )
        .await?;
        let (body, status) = match out.stdout.trim_end().rsplit_once('\n') {
            Some((body, code)) => (body, code.trim().parse::<u16>().unwrap_or(0)),
            None => ("", out.stdout.trim().parse::<u16>().unwrap_or(0)),
        };
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        match status {
            201 => {
                return parsed["html_url"]
                    .as_str()
                    .map(|u| Published::PullRequest(u.to_string()))
                    .ok_or_else(|| {
                        format!("the PR response has no html_url: {}", truncate(body, 500))
                    });
            }
            // The branch already has a PR (a follow-up updated it): the push was the update.
            422 if body.contains("already exists") => {
                return Ok(Published::PullRequest(format!(
                    "(existing pull request for branch {branch} updated)"
                )));
            }
            0 | 429 | 500..=599 => {
                last = format!(
                    "HTTP {status}: {} {}",
                    truncate(body, 500),
                    truncate(out.stderr.trim(), 500)
                );
            }
            _ => {
                return Err(format!(
                    "creating the pull request: HTTP {status}: {}",
                    truncate(body, 1000)
                ));
            }
        }
    }
    Err(format!(
        "creating the pull request failed {INLINE_ATTEMPTS} times; last: {last}"
    ))
}

async fn sandbox_exec(
    state: &AppState,
    sandbox_id: &str,
    script: String,
    env: BTreeMap<String, String>,
    stdin: Option<String>,
) -> Result<airlock_wire::ExecResult, String> {
    let row = state
        .store
        .get_sandbox(sandbox_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no sandbox {sandbox_id}"))?;
    let handle = row
        .handle
        .as_ref()
        .filter(|_| row.status == crate::store::SandboxStatus::Running)
        .ok_or_else(|| format!("sandbox {sandbox_id} is {}", row.status))?;
    let backend = state
        .backends
        .get(row.backend)
        .await
        .map_err(|e| e.to_string())?;
    let request = ExecRequest {
        argv: Some(vec!["sh".into(), "-c".into(), script]),
        env: Some(env),
        stdin,
        timeout_ms: Some(300_000),
        max_output_bytes: Some(state.config.sandbox.max_output_bytes),
        ..ExecRequest::default()
    };
    backend
        .exec(handle, request)
        .await
        .map_err(|e| e.to_string())
}

// === REST client ===

/// The brain's GitHub REST client (its own token): permission checks and comments.
pub struct GithubClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl GithubClient {
    pub fn new(config: &GithubConfig, token: String) -> Result<Self, TriggerSetupError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .user_agent("airlock");
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                TriggerSetupError::Config(format!(
                    "triggers.github.ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                TriggerSetupError::Config(format!(
                    "triggers.github.ca_file {}: {e}",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder
            .build()
            .map_err(|e| TriggerSetupError::Config(format!("github http client: {e}")))?;
        Ok(Self {
            http,
            base: config.api_base_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    }

    /// `admin`, `write`, `read` or `none` (GitHub answers 404 for a non-collaborator).
    pub async fn permission(&self, repo: &str, user: &str) -> Result<String, Delivery> {
        if !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '[' || c == ']')
        {
            return Ok("none".into());
        }
        let path = format!("/repos/{repo}/collaborators/{user}/permission");
        let resp = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| Delivery::Retry {
                error: format!("GET {path}: {e}"),
                after: None,
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok("none".into());
        }
        if !status.is_success() {
            return Err(classify_failure(status, resp.headers(), &path));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| Delivery::Retry {
            error: format!("GET {path}: {e}"),
            after: None,
        })?;
        Ok(body["permission"].as_str().unwrap_or("none").to_string())
    }

    pub(crate) async fn permission_with_retry(
        &self,
        repo: &str,
        user: &str,
    ) -> Result<String, String> {
        let mut last = String::new();
        for attempt in 0..INLINE_ATTEMPTS {
            match self.permission(repo, user).await {
                Ok(p) => return Ok(p),
                Err(Delivery::Retry { error, after }) => {
                    last = error;
                    let wait = after.unwrap_or(Duration::from_millis(500 << attempt));
                    tokio::time::sleep(wait.min(Duration::from_secs(30))).await;
                }
                Err(Delivery::Fatal(error)) => return Err(error),
                Err(Delivery::Delivered) => unreachable!("permission never reports delivered"),
            }
        }
        Err(last)
    }

    /// `POST /repos/{repo}/issues/{issue}/comments`.
    pub async fn comment(&self, repo: &str, issue: u64, body: &str) -> Delivery {
        let path = format!("/repos/{repo}/issues/{issue}/comments");
        let resp = match self
            .request(reqwest::Method::POST, &path)
            .json(&json!({ "body": body }))
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                return Delivery::Retry {
                    error: format!("POST {path}: {e}"),
                    after: None,
                };
            }
        };
        if resp.status() == reqwest::StatusCode::CREATED {
            return Delivery::Delivered;
        }
        classify_failure(resp.status(), resp.headers(), &path)
    }
}

/// GitHub's failure statuses: 429 and 5xx are transient; 403 is a rate limit when
/// `x-ratelimit-remaining: 0` (wait for `x-ratelimit-reset`); 401 is a bad token an operator
/// can fix (retried); 404/410/422 will not change.
fn classify_failure(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    path: &str,
) -> Delivery {
    let error = format!("{path}: HTTP {status}");
    let rate_limited = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        == Some("0");
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 401 {
        return Delivery::Retry {
            error,
            after: retry_after(headers),
        };
    }
    if status.as_u16() == 403 && (rate_limited || headers.contains_key("retry-after")) {
        let reset = headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .map(|reset| {
                Duration::from_secs(
                    u64::try_from(reset - chrono::Utc::now().timestamp()).unwrap_or(1),
                )
            });
        return Delivery::Retry {
            error,
            after: retry_after(headers).or(reset),
        };
    }
    Delivery::Fatal(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(event: &str, v: serde_json::Value) -> Option<Request> {
        classify(
            event,
            serde_json::from_value(v).unwrap(),
            &GithubConfig::default(),
        )
    }

    fn issue(labels: &[&str]) -> serde_json::Value {
        json!({"number": 7, "title": "Fix it", "body": "echo hi",
               "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
               "user": {"login": "alice"}})
    }

    #[test]
    fn labelled_issues_and_prefixed_comments_start_work() {
        let repo = json!({"full_name": "acme/widgets", "default_branch": "trunk"});
        let sender = json!({"login": "alice", "type": "User"});
        let r = payload(
            "issues",
            json!({"action": "labeled", "label": {"name": "airlock"},
            "issue": issue(&["airlock"]), "repository": repo, "sender": sender}),
        )
        .unwrap();
        assert_eq!(
            (r.repo.as_str(), r.issue, r.text.as_str(), r.base.as_str()),
            ("acme/widgets", 7, "echo hi", "trunk")
        );
        // What another brain needs to finish the request after a crash survives the store.
        let ctx = WaitContext::Github { request: r.clone() };
        let stored = serde_json::to_string(&ctx).unwrap();
        assert_eq!(serde_json::from_str::<WaitContext>(&stored).unwrap(), ctx);
        assert!(
            payload(
                "issues",
                json!({"action": "labeled", "label": {"name": "bug"},
            "issue": issue(&["bug"]), "repository": repo, "sender": sender})
            )
            .is_none()
        );
        assert!(
            payload(
                "issues",
                json!({"action": "opened",
            "issue": issue(&["airlock"]), "repository": repo, "sender": sender})
            )
            .is_some()
        );
        assert!(
            payload(
                "issues",
                json!({"action": "opened",
            "issue": issue(&[]), "repository": repo, "sender": sender})
            )
            .is_none()
        );
        let comment = |body: &str, kind: &str| {
            json!({"action": "created", "issue": issue(&[]),
            "comment": {"body": body, "user": {"login": "alice", "type": kind}},
            "repository": repo, "sender": {"login": "alice", "type": kind}})
        };
        let r = payload("issue_comment", comment("/airlock  ls -la ", "User")).unwrap();
        assert_eq!(r.text, "ls -la");
        assert!(payload("issue_comment", comment("/airlockx", "User")).is_none());
        assert!(payload("issue_comment", comment("please /airlock", "User")).is_none());
        assert!(payload("issue_comment", comment("/airlock ls", "Bot")).is_none());
        // A repository name that could escape the push URL is refused.
        let bad = json!({"full_name": "acme/../x", "default_branch": "main"});
        assert!(
            payload(
                "issues",
                json!({"action": "labeled", "label": {"name": "airlock"},
            "issue": issue(&["airlock"]), "repository": bad, "sender": sender})
            )
            .is_none()
        );
    }

    #[test]
    fn failures_are_classified() {
        let h = reqwest::header::HeaderMap::new();
        assert!(matches!(
            classify_failure(reqwest::StatusCode::BAD_GATEWAY, &h, "/x"),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            classify_failure(reqwest::StatusCode::NOT_FOUND, &h, "/x"),
            Delivery::Fatal(_)
        ));
        assert!(matches!(
            classify_failure(reqwest::StatusCode::FORBIDDEN, &h, "/x"),
            Delivery::Fatal(_)
        ));
        let mut limited = reqwest::header::HeaderMap::new();
        limited.insert("x-ratelimit-remaining", "0".parse().unwrap());
        limited.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            classify_failure(reqwest::StatusCode::FORBIDDEN, &limited, "/x"),
            Delivery::Retry {
                error: "/x: HTTP 403 Forbidden".into(),
                after: Some(Duration::from_secs(7))
            }
        );
    }
}
