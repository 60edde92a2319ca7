//! API keys and roles. Keys are kept only as SHA-256 hashes; a presented key is hashed and
//! compared in constant time against every configured hash, so timing reveals nothing about
//! which key or how much of it matched.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::KeyConfig;

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Run inference, read monitors, the catalog and events.
    Viewer,
    /// Create and delete monitors.
    Operator,
    /// Read the configuration (keys included, as hashes).
    Admin,
}

/// The configured keys, replaceable while serving (`POST /v1/keys/reload`, SIGHUP), each with
/// its own request budget.
pub struct Keys {
    entries: RwLock<Vec<Entry>>,
    /// The budget of a key that names none (`[limits] requests_per_minute`), and of everyone
    /// together on a server without keys.
    default_rate: Option<u32>,
    /// The open server's one shared budget.
    anonymous: Option<Arc<Limiter>>,
}

type Limiter = DefaultDirectRateLimiter;

struct Entry {
    config: KeyConfig,
    hash: [u8; 32],
    /// The budget in force: the key's own, else the default.
    rate: Option<u32>,
    limiter: Option<Arc<Limiter>>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn limiter(per_minute: Option<u32>) -> Option<Arc<Limiter>> {
    let n = NonZeroU32::new(per_minute?)?;
    // A minute's budget may be spent at once; it refills evenly over the minute.
    Some(Arc::new(RateLimiter::direct(Quota::per_minute(n))))
}

impl Keys {
    /// `default_rate`: requests per minute of a key that sets none (None: unlimited).
    pub fn new(keys: &[KeyConfig], default_rate: Option<u32>) -> Keys {
        let k = Keys {
            entries: RwLock::new(Vec::new()),
            default_rate,
            anonymous: limiter(default_rate),
        };
        k.replace(keys);
        k
    }

    fn entries(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `keys` in force. A key kept under the same name and budget keeps what it has
    /// spent of it (a reload is not a way around the limit).
    pub fn replace(&self, keys: &[KeyConfig]) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut *entries);
        *entries = keys
            .iter()
            .map(|k| {
                let mut hash = [0u8; 32];
                for (i, b) in hash.iter_mut().enumerate() {
                    *b = k
                        .sha256
                        .get(2 * i..2 * i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                }
                let rate = k.requests_per_minute.or(self.default_rate);
                let limiter = old
                    .iter()
                    .find(|e| e.config.name == k.name && e.rate == rate)
                    .map_or_else(|| limiter(rate), |e| e.limiter.clone());
                Entry {
                    config: k.clone(),
                    hash,
                    rate,
                    limiter,
                }
            })
            .collect();
    }

    /// With no keys configured, everyone is an admin (a local, single-user deployment).
    pub fn open(&self) -> bool {
        self.entries().is_empty()
    }

    /// The caller a bearer token identifies, if any.
    pub fn identify(&self, token: Option<&str>) -> Option<Caller> {
        let entries = self.entries();
        if entries.is_empty() {
            return Some(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        let h = hash_key(token?);
        let mut found = None;
        // Compare against every key (no early exit) so timing does not depend on which matched.
        for e in entries.iter() {
            if bool::from(e.hash.ct_eq(&h)) {
                found = Some(Caller {
                    name: e.config.name.clone(),
                    role: e.config.role,
                });
            }
        }
        found
    }

    /// Spends one request of the caller's budget, or says how long until one is free.
    pub fn admit(&self, caller: &Caller) -> Result<(), Duration> {
        let entries = self.entries();
        let limiter = if entries.is_empty() {
            self.anonymous.clone()
        } else {
            entries
                .iter()
                .find(|e| e.config.name == caller.name)
                .and_then(|e| e.limiter.clone())
        };
        drop(entries);
        match limiter {
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
            None => Ok(()),
        }
    }

    /// The keys in force, as configured (hashes only).
    pub fn configs(&self) -> Vec<KeyConfig> {
        self.entries().iter().map(|e| e.config.clone()).collect()
    }
}

/// A new random key (43 URL-safe characters, 256 bits) and its hash for the config.
pub fn new_key() -> (String, String) {
    use rand::RngCore;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 43];
    rand::rng().fill_bytes(&mut bytes);
    let key: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b & 63) as usize] as char)
        .collect();
    let key = format!("gbx_{key}");
    let hash = glassbox_store::fsutil::hex(&hash_key(&key));
    (key, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_identify_their_role_and_nothing_else_does() {
        let (a, ha) = new_key();
        let (b, hb) = new_key();
        let keys = Keys::new(
            &[
                KeyConfig {
                    name: "ops".into(),
                    role: Role::Operator,
                    sha256: ha,
                    requests_per_minute: None,
                },
                KeyConfig {
                    name: "ro".into(),
                    role: Role::Viewer,
                    sha256: hb,
                    requests_per_minute: Some(2),
                },
            ],
            None,
        );
        assert_eq!(keys.identify(Some(&a)).unwrap().role, Role::Operator);
        assert_eq!(keys.identify(Some(&b)).unwrap().name, "ro");
        assert_eq!(keys.identify(Some("gbx_wrong")), None);
        assert_eq!(keys.identify(None), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(
            Keys::new(&[], None).identify(None).unwrap().role,
            Role::Admin
        );
    }

    #[test]
    fn a_key_spends_its_own_budget_and_a_reload_does_not_refill_it() {
        let (_, ha) = new_key();
        let (_, hb) = new_key();
        let cfg = |name: &str, sha256: &str, rate| KeyConfig {
            name: name.into(),
            role: Role::Viewer,
            sha256: sha256.into(),
            requests_per_minute: rate,
        };
        let keys = Keys::new(&[cfg("a", &ha, Some(2)), cfg("b", &hb, None)], Some(100));
        let who = |name: &str| Caller {
            name: name.into(),
            role: Role::Viewer,
        };
        assert!(keys.admit(&who("a")).is_ok() && keys.admit(&who("a")).is_ok());
        let wait = keys.admit(&who("a")).unwrap_err();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        // b has the default budget, untouched by a's.
        assert!(keys.admit(&who("b")).is_ok());
        keys.replace(&[cfg("a", &ha, Some(2))]);
        assert!(
            keys.admit(&who("a")).is_err(),
            "a reload refilled the budget"
        );
        keys.replace(&[cfg("a", &ha, Some(3))]);
        assert!(keys.admit(&who("a")).is_ok(), "a new budget starts full");
        assert_eq!(keys.configs()[0].requests_per_minute, Some(3));
        let open = Keys::new(&[], Some(1));
        assert!(open.admit(&who("anonymous")).is_ok());
        assert!(open.admit(&who("anonymous")).is_err());
    }
}
