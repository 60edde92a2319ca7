//! Console sign-in. An API key is typed once into a form (never put in a URL) and becomes a
//! random session id in an `HttpOnly`, `SameSite=Strict` cookie; the server keeps only the
//! id's hash, the caller and a CSRF token. Requests that change anything or cost model time
//! must also carry that token (a header from the console's scripts, a hidden field in forms),
//! so another site cannot act with the cookie.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Caller;

pub const COOKIE: &str = "glassbox_session";
pub const CSRF_HEADER: &str = "x-glassbox-csrf";
/// Sign-ins kept at once; the oldest go first (a flood of logins cannot grow memory).
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    expires: Instant,
}

pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    glassbox_store::fsutil::hex(&b)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            by_hash: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session; returns the cookie value.
    pub fn start(&self, caller: Caller) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&id),
            Session {
                caller,
                csrf: random_token(),
                expires: now + self.ttl,
            },
        );
        id
    }

    /// The live session the request's cookie names.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.map();
        let key = digest(id);
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.map().remove(&digest(id));
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The `Set-Cookie` value that starts (or, with `None`, ends) a session; `secure` (served over
/// TLS) keeps the browser from ever sending it over plain HTTP.
pub fn set_cookie(id: Option<&str>, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ttl.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let s = Sessions::new(Duration::from_secs(60));
        let id = s.start(Caller {
            name: "ro".into(),
            role: Role::Viewer,
        });
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("a=b; {COOKIE}={id}").parse().unwrap());
        let found = s.get(&h).unwrap();
        assert_eq!(found.caller.name, "ro");
        assert!(csrf_ok(&found, Some(&found.csrf)));
        assert!(!csrf_ok(&found, Some("nope")) && !csrf_ok(&found, None));
        s.end(&h);
        assert!(s.get(&h).is_none());
        let mut other = HeaderMap::new();
        other.insert("cookie", format!("{COOKIE}=forged").parse().unwrap());
        assert!(s.get(&other).is_none());
    }
}
