//! The grant registry: which sandbox may use the proxy (its token) and which
//! stubs it holds, plus the global stub index used to recognise any sandbox's
//! stub anywhere in a request.
//!
//! Invariants:
//! - a stub is minted once and never again (every stub ever minted or
//!   configured stays in `State::owners`, revoked ones included, so a revoked
//!   or foreign stub is still recognised and blocked);
//! - revoking a grant flips its cancellation token: authentication fails at
//!   once, open tunnels holding the `Arc<Grant>` see `is_revoked()` on their
//!   next request and are closed by the tunnel task watching `revoked()`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::CredentialType;
use crate::config::GrantConfig;
use crate::pipeline::scrub_response::Replacer;
use crate::secrets::{Credential, Credentials, SecretValue};

/// Why a grant could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The request names a credential the proxy does not have.
    #[error("unknown credential `{0}`")]
    UnknownCredential(String),
    /// Sandbox ids are non-empty, at most 128 characters, no `:`.
    #[error("invalid sandbox id")]
    InvalidSandbox,
    /// A configured stub is already in use (or was used before).
    #[error("stub for `{0}` is already in use")]
    StubInUse(String),
    /// Could not mint a unique stub (should not happen).
    #[error("could not mint a unique stub for `{0}`")]
    Mint(String),
    /// A configured stub of an `aws_sigv4` credential is not `ACCESS_KEY_ID:SECRET`.
    #[error("stub for `{0}` must be `ACCESS_KEY_ID:SECRET_ACCESS_KEY` (aws_sigv4)")]
    BadStub(String),
}

/// Who a stub belongs to.
#[derive(Debug)]
pub struct StubOwner {
    /// Sandbox the stub was minted for.
    pub sandbox: String,
    /// Credential name.
    pub credential: String,
    /// Id of the grant (a re-granted sandbox gets a new id).
    pub grant_id: u64,
}

/// One sandbox's grant. Shared by every tunnel of that sandbox.
pub struct Grant {
    /// Unique per grant (never reused).
    pub id: u64,
    /// Sandbox id.
    pub sandbox: String,
    /// Session id, if the brain gave one (audit only).
    pub session: Option<String>,
    /// The W3C `traceparent` the brain issued the grant under, parsed once (here, not for
    /// every record), so audit records carry the session's trace id and egress decisions
    /// join its trace. Shared with each event: a pointer in the event, as the `Arc<str>` it
    /// replaces was (the parsed value is 64 bytes; carried inline it made every event and the
    /// futures holding one bigger, ~0.6k more `memcpy` instructions a swap with tracing off,
    /// callgrind).
    pub traceparent: Option<Arc<airlock_telemetry::TraceParent>>,
    token_digest: [u8; 32],
    /// Credential name → stub (for `aws_sigv4`, the stub access key id).
    stubs: BTreeMap<String, String>,
    /// `aws_sigv4` credential name → the stub secret key.
    aws_stub_secrets: BTreeMap<String, SecretValue>,
    /// The stubs as issued, for rebuilding the scrubber (`stubs` keeps only the key id of
    /// an `aws_sigv4` pair).
    scrub_stubs: BTreeMap<String, String>,
    /// Credential name → real credential.
    creds: BTreeMap<String, Arc<Credential>>,
    /// Real values of *all* credentials → this grant's stub (or a mask), with the
    /// scrub generation it was built at (minted tokens grow the set: rebuilt lazily).
    scrubber: RwLock<(u64, Arc<Replacer>)>,
    all_creds: Arc<Credentials>,
    revoked: CancellationToken,
    /// Open tunnels, for the per-sandbox limit.
    pub(crate) open_tunnels: AtomicUsize,
    /// Requests in flight (all tunnels and HTTP/2 streams), for the per-sandbox limit.
    pub(crate) inflight: AtomicUsize,
    /// Request body bytes buffered right now, for the per-sandbox limit.
    pub(crate) buffered: AtomicUsize,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("id", &self.id)
            .field("sandbox", &self.sandbox)
            .field("credentials", &self.stubs.keys().collect::<Vec<_>>())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl Grant {
    /// True once revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }

    /// Resolves when the grant is revoked.
    pub async fn revoked(&self) {
        self.revoked.cancelled().await
    }

    /// The stub this grant holds for `credential`.
    pub fn stub_for(&self, credential: &str) -> Option<&str> {
        self.stubs.get(credential).map(String::as_str)
    }

    /// The real credential behind one of this grant's credential names.
    pub fn credential(&self, name: &str) -> Option<&Arc<Credential>> {
        self.creds.get(name)
    }

    /// This grant's credential names.
    pub fn credential_names(&self) -> impl Iterator<Item = &str> {
        self.creds.keys().map(String::as_str)
    }

    /// The stub secret key of one of this grant's `aws_sigv4` credentials.
    pub fn aws_stub_secret(&self, name: &str) -> Option<&SecretValue> {
        self.aws_stub_secrets.get(name)
    }

    /// Whether any credential of this grant has a body position (`form:`, `json:`).
    pub fn has_body_positions(&self) -> bool {
        self.creds.values().any(|c| c.scope.has_body_positions())
    }

    /// Replacer of real values → stubs for responses (rebuilt when a minted token or a
    /// rotated refresh token joined the set since it was built).
    pub fn scrubber(&self) -> Arc<Replacer> {
        let generation = self.all_creds.scrub_generation();
        {
            let g = self.scrubber.read().unwrap_or_else(|p| p.into_inner());
            if g.0 == generation {
                return g.1.clone();
            }
        }
        let fresh = Arc::new(Replacer::for_grant(&self.all_creds, &self.scrub_stubs));
        *self.scrubber.write().unwrap_or_else(|p| p.into_inner()) = (generation, fresh.clone());
        fresh
    }

    fn token_matches(&self, token: &str) -> bool {
        // Compare fixed-size digests: timing reveals nothing about the token.
        let d = digest(token);
        let mut diff = 0u8;
        for (a, b) in d.iter().zip(self.token_digest.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a new grant hands back (to the brain, never logged).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct IssuedGrant {
    /// Proxy token (password of `Proxy-Authorization: Basic sandbox:token`).
    pub token: String,
    /// Credential name → stub (for `aws_sigv4`, the pair as
    /// `ACCESS_KEY_ID:SECRET`, see [`crate::aws_sigv4::join_pair`]).
    pub stubs: BTreeMap<String, String>,
    /// Names of the `aws_sigv4` credentials among `stubs`.
    #[serde(skip)]
    pub aws: std::collections::BTreeSet<String>,
    /// Extra env vars the sandbox gets for typed credentials (`GH_TOKEN`/`GITHUB_TOKEN`
    /// = the `github_app` stub); a credential's own name always wins over these.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl IssuedGrant {
    /// `stubs` as the admin API shows them: an `aws_sigv4` pair as
    /// `{"access_key_id","secret_access_key"}`, others as strings.
    pub fn stubs_json(&self) -> serde_json::Value {
        self.stubs
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    crate::aws_sigv4::stub_json(s, self.aws.contains(n)),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl std::fmt::Debug for IssuedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedGrant")
            .field("token", &"[REDACTED]")
            .field("stubs", &self.stubs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A multi-pattern index over every stub ever minted, for O(n) scanning of
/// a request surface against all sandboxes' stubs at once.
pub struct StubIndex {
    ac: Option<AhoCorasick>,
    owners: Vec<Arc<StubOwner>>,
}

impl StubIndex {
    fn build(owners: &HashMap<String, Arc<StubOwner>>) -> StubIndex {
        let mut pats = Vec::with_capacity(owners.len());
        let mut own = Vec::with_capacity(owners.len());
        for (stub, o) in owners {
            pats.push(stub.as_bytes());
            own.push(o.clone());
        }
        let ac = if pats.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&pats)
                .ok()
        };
        StubIndex { ac, owners: own }
    }

    /// Every stub occurrence in `hay`: (byte range, owner).
    pub fn find_all<'a>(
        &'a self,
        hay: &'a [u8],
    ) -> impl Iterator<Item = (std::ops::Range<usize>, &'a Arc<StubOwner>)> + 'a {
        self.ac
            .iter()
            .flat_map(move |ac| ac.find_iter(hay))
            .map(move |m| (m.range(), &self.owners[m.pattern().as_usize()]))
    }

    /// Whether `hay` holds any known stub.
    pub fn contains_any(&self, hay: &[u8]) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(hay))
    }

    /// Length of the longest stub (0 when none).
    pub fn max_len(&self) -> usize {
        self.ac.as_ref().map_or(0, |ac| ac.max_pattern_len())
    }
}

#[derive(Default)]
struct State {
    by_sandbox: HashMap<String, Arc<Grant>>,
    /// Stubs of live grants → their owner (what the index is built from:
    /// revoked stubs leave it, so the scan does not grow with churn).
    owners: HashMap<String, Arc<StubOwner>>,
    /// SHA-256 of every stub ever minted or configured: never reused.
    used: std::collections::HashSet<[u8; 32]>,
}

/// The registry. Cheap reads (`authenticate`, `index`); writes rebuild the index.
pub struct Grants {
    creds: Arc<Credentials>,
    state: Mutex<State>,
    index: RwLock<Arc<StubIndex>>,
    next_id: AtomicU64,
}

impl Grants {
    /// An empty registry over the resolved credentials.
    pub fn new(creds: Arc<Credentials>) -> Grants {
        Grants {
            creds,
            state: Mutex::new(State::default()),
            index: RwLock::new(Arc::new(StubIndex::build(&HashMap::new()))),
            next_id: AtomicU64::new(1),
        }
    }

    /// The current stub index.
    pub fn index(&self) -> Arc<StubIndex> {
        match self.index.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a
        // way that weakens security (revocation is a token flip), so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a static grant from the config (token and stubs given).
    pub fn add_static(&self, g: &GrantConfig) -> Result<(), GrantError> {
        check_sandbox(&g.sandbox)?;
        let mut st = self.lock();
        for (name, stub) in &g.credentials {
            let Some(c) = self.creds.get(name) else {
                return Err(GrantError::UnknownCredential(name.clone()));
            };
            // An aws_sigv4 stub is written `ACCESS_KEY_ID:SECRET`.
            let searched = match c.kind {
                CredentialType::AwsSigv4 => {
                    crate::aws_sigv4::split_pair(stub)
                        .ok_or_else(|| GrantError::BadStub(name.clone()))?
                        .access_key_id
                }
                _ => stub.as_str(),
            };
            if st.used.contains(&digest(searched)) {
                return Err(GrantError::StubInUse(name.clone()));
            }
        }
        let grant = self.build_grant(
            &g.sandbox,
            g.session.clone(),
            &g.token,
            g.credentials.clone(),
        );
        self.install(&mut st, grant);
        Ok(())
    }

    /// Issues a grant with a fresh token and freshly minted stubs. An existing
    /// grant for the same sandbox is revoked and replaced.
    pub fn issue(
        &self,
        sandbox: &str,
        session: Option<String>,
        credentials: &[String],
    ) -> Result<IssuedGrant, GrantError> {
        self.issue_traced(sandbox, session, credentials, None)
    }

    /// [`Grants::issue`] under a trace: `traceparent` (a W3C header value; ignored when
    /// malformed) makes the sandbox's egress decisions spans of that trace.
    pub fn issue_traced(
        &self,
        sandbox: &str,
        session: Option<String>,
        credentials: &[String],
        traceparent: Option<&str>,
    ) -> Result<IssuedGrant, GrantError> {
        check_sandbox(sandbox)?;
        let mut real = Vec::new();
        for name in credentials {
            match self.creds.get(name) {
                Some(c) => real.push(c.clone()),
                None => return Err(GrantError::UnknownCredential(name.clone())),
            }
        }
        let mut rng = rand::rng();
        let mut tok = [0u8; 32];
        rng.fill(&mut tok);
        let token = hex::encode(tok);
        let mut st = self.lock();
        let mut stubs = BTreeMap::new();
        for c in &real {
            let mut minted = None;
            // Minted credentials: the stub has the shape of the tokens it stands for.
            let template = c.minter.as_ref().map(|m| m.stub_template());
            let shape = template.as_deref().unwrap_or(c.value.expose());
            for _ in 0..32 {
                let (s, searched) = match c
                    .aws
                    .as_ref()
                    .filter(|_| c.kind == CredentialType::AwsSigv4)
                {
                    Some(keys) => {
                        let pair = crate::aws_sigv4::mint_pair(keys, &mut rng);
                        let id = pair.split(':').next().unwrap_or_default().to_string();
                        (pair, id)
                    }
                    None => {
                        let s = mint_stub(shape, &mut rng);
                        (s.clone(), s)
                    }
                };
                if s != c.value.expose()
                    && !st.used.contains(&digest(&searched))
                    && !stubs.values().any(|v: &String| v.starts_with(&searched))
                {
                    minted = Some(s);
                    break;
                }
            }
            let Some(s) = minted else {
                return Err(GrantError::Mint(c.name.clone()));
            };
            stubs.insert(c.name.clone(), s);
        }
        let aws = real
            .iter()
            .filter(|c| c.kind == CredentialType::AwsSigv4)
            .map(|c| c.name.clone())
            .collect();
        let mut grant = self.build_grant(sandbox, session, &token, stubs.clone());
        grant.traceparent = traceparent
            .and_then(airlock_telemetry::TraceParent::parse)
            .map(Arc::new);
        self.install(&mut st, grant);
        let env = stub_env_aliases(&self.creds, &stubs);
        Ok(IssuedGrant {
            token,
            stubs,
            aws,
            env,
        })
    }

    fn build_grant(
        &self,
        sandbox: &str,
        session: Option<String>,
        token: &str,
        stubs: BTreeMap<String, String>,
    ) -> Grant {
        let creds: BTreeMap<String, Arc<Credential>> = stubs
            .keys()
            .filter_map(|n| self.creds.get(n).map(|c| (n.clone(), c.clone())))
            .collect();
        let scrubber = Arc::new(Replacer::for_grant(&self.creds, &stubs));
        // The scrubber maps real values to the stubs as issued (an aws_sigv4 pair whole).
        let scrub_stubs = stubs.clone();
        // aws_sigv4: requests carry the stub key id; the stub secret stays here.
        let mut stubs = stubs;
        let mut aws_stub_secrets = BTreeMap::new();
        for (name, stub) in stubs.iter_mut() {
            if creds
                .get(name)
                .is_some_and(|c| c.kind == CredentialType::AwsSigv4)
                && let Some(p) = crate::aws_sigv4::split_pair(stub)
            {
                aws_stub_secrets.insert(
                    name.clone(),
                    SecretValue::new(p.secret_access_key.to_string()),
                );
                *stub = p.access_key_id.to_string();
            }
        }
        let generation = self.creds.scrub_generation();
        Grant {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sandbox: sandbox.to_string(),
            session,
            traceparent: None,
            token_digest: digest(token),
            stubs,
            aws_stub_secrets,
            scrub_stubs,
            creds,
            scrubber: RwLock::new((generation, scrubber)),
            all_creds: self.creds.clone(),
            revoked: CancellationToken::new(),
            open_tunnels: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
        }
    }

    fn install(&self, st: &mut State, grant: Grant) {
        for (name, stub) in &grant.stubs {
            st.used.insert(digest(stub));
            st.owners.insert(
                stub.clone(),
                Arc::new(StubOwner {
                    sandbox: grant.sandbox.clone(),
                    credential: name.clone(),
                    grant_id: grant.id,
                }),
            );
        }
        if let Some(old) = st.by_sandbox.insert(grant.sandbox.clone(), Arc::new(grant)) {
            old.revoked.cancel();
            Self::forget_stubs(st, &old);
        }
        self.rebuild_index(st);
    }

    fn forget_stubs(st: &mut State, g: &Grant) {
        for stub in g.stubs.values() {
            if st.owners.get(stub).is_some_and(|o| o.grant_id == g.id) {
                st.owners.remove(stub);
            }
        }
    }

    fn rebuild_index(&self, st: &State) {
        let idx = Arc::new(StubIndex::build(&st.owners));
        match self.index.write() {
            Ok(mut g) => *g = idx,
            Err(p) => *p.into_inner() = idx,
        }
    }

    /// Revokes the sandbox's grant: its token and stubs are dead at once.
    /// Returns whether there was one.
    pub fn revoke(&self, sandbox: &str) -> bool {
        let mut st = self.lock();
        match st.by_sandbox.remove(sandbox) {
            Some(g) => {
                g.revoked.cancel();
                Self::forget_stubs(&mut st, &g);
                self.rebuild_index(&st);
                true
            }
            None => false,
        }
    }

    /// Revokes everything (shutdown).
    pub fn revoke_all(&self) {
        let mut st = self.lock();
        for (_, g) in st.by_sandbox.drain() {
            g.revoked.cancel();
        }
        st.owners.clear();
        self.rebuild_index(&st);
    }

    /// The live grant of `sandbox` if `token` is its token.
    pub fn authenticate(&self, sandbox: &str, token: &str) -> Option<Arc<Grant>> {
        let g = self.lock().by_sandbox.get(sandbox).cloned()?;
        (g.token_matches(token) && !g.is_revoked()).then_some(g)
    }

    /// Whether `sandbox` has a live grant.
    pub fn contains(&self, sandbox: &str) -> bool {
        self.lock().by_sandbox.contains_key(sandbox)
    }

    /// Number of live grants.
    pub fn len(&self) -> usize {
        self.lock().by_sandbox.len()
    }

    /// Open tunnels across every live grant (for `/metrics`).
    pub fn open_tunnels(&self) -> usize {
        let st = self.lock();
        st.by_sandbox
            .values()
            .map(|g| g.open_tunnels.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Whether there is no live grant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The env vars a typed credential's stub is also known by: the names its clients
/// read (`gh` reads `GH_TOKEN`, Actions-style tools `GITHUB_TOKEN`). Never one that is
/// itself a granted credential's name.
pub fn stub_env_aliases(
    creds: &Credentials,
    stubs: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (name, stub) in stubs {
        let aliases: &[&str] = match creds.get(name).map(|c| &c.kind) {
            Some(crate::config::CredentialType::GithubApp(_)) => &["GH_TOKEN", "GITHUB_TOKEN"],
            _ => &[],
        };
        for a in aliases {
            if !stubs.contains_key(*a) {
                env.entry(a.to_string()).or_insert_with(|| stub.clone());
            }
        }
    }
    env
}

fn check_sandbox(s: &str) -> Result<(), GrantError> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(GrantError::InvalidSandbox);
    }
    Ok(())
}

// === stub minting ===

/// Well-known token prefixes kept verbatim (longest first where they nest).
const KNOWN_PREFIXES: &[&str] = &[
    "github_pat_",
    "sk-ant-api03-",
    "sk-ant-admin01-",
    "sk-ant-",
    "sk-proj-",
    "sk-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xapp-",
    "glpat-",
    "hf_",
    "npm_",
    "pypi-",
];

/// Fewest random characters a stub gets (when the secret is long enough).
const MIN_RANDOM: usize = 16;

/// The part of `real` kept verbatim in its stub.
pub fn stub_prefix(real: &str) -> &str {
    if !real.is_ascii() {
        return "";
    }
    for p in KNOWN_PREFIXES {
        if real.starts_with(p) && real.len() >= p.len() + MIN_RANDOM {
            return p;
        }
    }
    // Generic: up to the last `-`/`_` within the first 16 characters, if that
    // leaves enough randomness.
    let window = &real[..real.len().min(16).min(real.len() / 2)];
    match window.rfind(['-', '_']) {
        Some(i) if real.len() - (i + 1) >= MIN_RANDOM => &real[..=i],
        _ => "",
    }
}

/// Mints a stub for `real`: same prefix, same length, random remainder drawn
/// from the remainder's alphabet (hex stays hex, alphanumerics stay alphanumeric).
pub fn mint_stub(real: &str, rng: &mut impl Rng) -> String {
    const HEX_LOWER: &[u8] = b"0123456789abcdef";
    const HEX_UPPER: &[u8] = b"0123456789ABCDEF";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const ALNUM_DASH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let prefix = stub_prefix(real);
    let rest = &real[prefix.len()..];
    let n = rest.chars().count();
    let alphabet: &[u8] = if rest.bytes().all(|b| HEX_LOWER.contains(&b)) {
        HEX_LOWER
    } else if rest.bytes().all(|b| HEX_UPPER.contains(&b)) {
        HEX_UPPER
    } else if rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        ALNUM
    } else if rest.bytes().all(|b| ALNUM_DASH.contains(&b)) {
        ALNUM_DASH
    } else {
        ALNUM
    };
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    for _ in 0..n {
        s.push(alphabet[rng.random_range(0..alphabet.len())] as char);
    }
    s
}

#[cfg(test)]
mod tests;
