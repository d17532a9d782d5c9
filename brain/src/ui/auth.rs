//! Console sign-in: an opaque session id in an `HttpOnly; SameSite=Strict` cookie, mapped
//! server-side to who signed in and the CSRF token every form of that sign-in carries. The
//! key itself is never stored in the cookie nor in the map.
//!
//! Limits: the map lives in this process (a console sign-in is per brain replica; a restart
//! signs everyone out), holds at most [`MAX_SIGNINS`] entries and each expires after
//! [`SIGNIN_TTL`].

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;

use crate::api::Caller;
use crate::config::constant_time_eq;

pub const COOKIE: &str = "airlock_ui";
/// Double-submit cookie that protects the sign-in form itself.
pub const LOGIN_COOKIE: &str = "airlock_ui_login";
const SIGNIN_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SIGNINS: usize = 10_000;

/// A signed-in console user.
#[derive(Debug, Clone)]
pub struct Signin {
    /// Shown in the header and recorded as who decided an approval (`console:<who>`):
    /// `master`, or `vk:` and the first 12 hex digits of the virtual key's hash.
    pub who: String,
    /// What the key may see: everything (master) or its own sessions (a virtual key).
    pub caller: Caller,
    pub csrf: String,
    expires: Instant,
}

impl Signin {
    pub fn is_master(&self) -> bool {
        self.caller == Caller::Master
    }
}

static SIGNINS: LazyLock<Mutex<HashMap<String, Signin>>> = LazyLock::new(Default::default);

pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut b = vec![0u8; n];
    rand::rng().fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates a sign-in; returns its cookie value (the opaque id).
pub fn sign_in(caller: Caller) -> String {
    let who = match &caller {
        Caller::Master => "master".to_string(),
        Caller::Key(id) => id.chars().take(15).collect(),
    };
    let id = random_hex(32);
    let mut map = SIGNINS.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    map.retain(|_, s| s.expires > now);
    if map.len() >= MAX_SIGNINS {
        // Full: drop the one closest to expiry rather than refuse every new sign-in.
        if let Some(k) = map
            .iter()
            .min_by_key(|(_, s)| s.expires)
            .map(|(k, _)| k.clone())
        {
            map.remove(&k);
        }
    }
    map.insert(
        id.clone(),
        Signin {
            who,
            caller,
            csrf: random_hex(24),
            expires: now + SIGNIN_TTL,
        },
    );
    id
}

pub fn sign_out(id: &str) {
    SIGNINS.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The live sign-in of this request, with its id.
pub fn current(headers: &HeaderMap) -> Option<(String, Signin)> {
    let id = cookie(headers, COOKIE)?;
    let map = SIGNINS.lock().unwrap_or_else(|p| p.into_inner());
    let s = map.get(id)?;
    (s.expires > Instant::now()).then(|| (id.to_string(), s.clone()))
}

/// Whether the sign-in with this id is still live (not signed out, not expired).
pub fn is_live(id: &str) -> bool {
    let map = SIGNINS.lock().unwrap_or_else(|p| p.into_inner());
    map.get(id).is_some_and(|s| s.expires > Instant::now())
}

/// Whether a submitted CSRF token is this sign-in's (constant time).
pub fn csrf_ok(s: &Signin, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| constant_time_eq(s.csrf.as_bytes(), p.as_bytes()))
}

pub fn set_cookie(name: &str, value: &str, max_age_s: u64) -> String {
    format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age_s}")
}

pub fn signin_cookie(id: &str) -> String {
    set_cookie(COOKIE, id, SIGNIN_TTL.as_secs())
}
