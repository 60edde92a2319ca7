//! API keys and roles. Keys are kept only as SHA-256 hashes; a presented key is hashed and
//! compared in constant time against every configured hash, so timing reveals nothing about
//! which key or how much of it matched.

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

pub struct Keys {
    keys: Vec<(String, Role, [u8; 32])>,
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

impl Keys {
    pub fn new(keys: &[KeyConfig]) -> Keys {
        Keys {
            keys: keys
                .iter()
                .map(|k| {
                    let mut h = [0u8; 32];
                    for (i, b) in h.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&k.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
                    }
                    (k.name.clone(), k.role, h)
                })
                .collect(),
        }
    }

    /// With no keys configured, everyone is an admin (a local, single-user deployment).
    pub fn open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller a bearer token identifies, if any.
    pub fn identify(&self, token: Option<&str>) -> Option<Caller> {
        if self.open() {
            return Some(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        let h = hash_key(token?);
        let mut found = None;
        // Compare against every key (no early exit) so timing does not depend on which matched.
        for (name, role, k) in &self.keys {
            if bool::from(k.ct_eq(&h)) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
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
        let keys = Keys::new(&[
            KeyConfig {
                name: "ops".into(),
                role: Role::Operator,
                sha256: ha,
            },
            KeyConfig {
                name: "ro".into(),
                role: Role::Viewer,
                sha256: hb,
            },
        ]);
        assert_eq!(keys.identify(Some(&a)).unwrap().role, Role::Operator);
        assert_eq!(keys.identify(Some(&b)).unwrap().name, "ro");
        assert_eq!(keys.identify(Some("gbx_wrong")), None);
        assert_eq!(keys.identify(None), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Keys::new(&[]).identify(None).unwrap().role, Role::Admin);
    }
}
