//! Signed checkpoints of an audit log, kept by a witness outside the writer.
//!
//! The hash chain of [`crate::audit`] catches edits, removals and reorders inside a log, but
//! not a log whose tail was cut off, nor one rewritten from the first record on: both are
//! valid chains. So the writer signs, every so many records and only once they are on disk,
//! a checkpoint — how many records the log holds and the hash of the last one — with an
//! Ed25519 key kept outside the log's directory, and appends it to a witness file elsewhere
//! (another disk, another machine's mount, a file only the auditors can read). [`check`]
//! then finds a truncated tail (the log is shorter than a signed checkpoint says) and a
//! rewritten chain (a record's hash is not the one that was signed).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::error::{Result, StoreError};
use crate::fsutil::hex;

/// One line of a witness file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The log's file name (a witness may keep several logs' checkpoints).
    pub log: String,
    /// Records in the log when it was signed.
    pub records: u64,
    /// The hash of record `records - 1`.
    pub head: String,
    pub time_ms: u64,
    /// The signer's public key (hex); [`check`] trusts a pinned key over this one.
    pub key: String,
    /// Ed25519 over `message` (hex).
    pub signature: String,
}

/// What is signed: every field of the checkpoint but the key and the signature.
fn message(log: &str, records: u64, head: &str, time_ms: u64) -> Vec<u8> {
    format!("glassbox audit checkpoint v1\n{log}\n{records}\n{head}\n{time_ms}").into_bytes()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A public key from its hex form.
pub fn public_key(hex_key: &str) -> std::result::Result<VerifyingKey, String> {
    let bytes: [u8; 32] = unhex(hex_key.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or("a public key is 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// Writes a new signing key to `path` (64 hex digits, readable by its owner only; an existing
/// file is never replaced) and returns its public key in hex.
pub fn generate_key(path: &Path) -> Result<String> {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::io(tmp.path(), e))?;
    }
    writeln!(tmp, "{}", hex(&seed)).map_err(|e| StoreError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| StoreError::io(path, e))?;
    tmp.persist_noclobber(path).map_err(|e| {
        StoreError::store(
            path,
            format!(
                "cannot write the key ({}); an existing key is never replaced",
                e.error
            ),
        )
    })?;
    Ok(hex(key.verifying_key().as_bytes()))
}

fn load_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    let seed: [u8; 32] = unhex(text.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            StoreError::store(
                path,
                "not a checkpoint key (64 hex digits; make one with `glassbox audit keygen`)",
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs checkpoints of one log into its witness.
pub struct Signer {
    key: SigningKey,
    witness: PathBuf,
    log: String,
    every: u64,
    /// Records covered by the last checkpoint written.
    signed: u64,
}

impl Signer {
    /// `key` must not sit in the log's directory (whoever can rewrite the log could then sign
    /// the rewrite); a checkpoint is written every `every` records.
    pub fn open(key: &Path, witness: &Path, log: &Path, every: u64) -> Result<Signer> {
        let dir_of = |p: &Path| {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
        };
        if dir_of(key) == dir_of(log) {
            return Err(StoreError::store(
                key,
                "the checkpoint key is in the audit log's directory; keep it elsewhere (whoever can rewrite the log could sign the rewrite)",
            ));
        }
        if every == 0 {
            return Err(StoreError::store(
                witness,
                "checkpoints every 0 records: use 1 or more",
            ));
        }
        Ok(Signer {
            key: load_key(key)?,
            witness: witness.to_path_buf(),
            log: log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            every,
            signed: 0,
        })
    }

    /// Called after the log's records reached the disk: signs a checkpoint when `every`
    /// records arrived since the last one (or `force`, and any arrived).
    pub fn synced(&mut self, records: u64, head: &str, force: bool) -> Result<()> {
        if records == self.signed || (!force && records < self.signed + self.every) {
            return Ok(());
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let signature = self.key.sign(&message(&self.log, records, head, time_ms));
        let cp = Checkpoint {
            log: self.log.clone(),
            records,
            head: head.to_string(),
            time_ms,
            key: hex(self.key.verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
        };
        let line = serde_json::to_string(&cp)
            .map_err(|e| StoreError::store(&self.witness, e.to_string()))?
            + "\n";
        if let Some(dir) = self.witness.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.witness)
            .map_err(|e| StoreError::io(&self.witness, e))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| StoreError::io(&self.witness, e))?;
        self.signed = records;
        Ok(())
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WitnessCheck {
    /// Checkpoints of this log in the witness, all signatures good.
    pub checkpoints: usize,
    /// Records the newest good checkpoint covers.
    pub covered: u64,
    /// Whether a public key was given (otherwise each checkpoint's own key was used, which
    /// proves nothing against someone who can write the witness).
    pub pinned: bool,
    /// The first problem: a bad signature, a truncated tail, a rewritten chain.
    pub problem: Option<String>,
}

/// Checks the log at `log` against the checkpoints its witness holds. The chain itself is
/// [`audit::verify`]'s job; this compares the log with what was signed.
pub fn check(log: &Path, witness: &Path, key: Option<&VerifyingKey>) -> Result<WitnessCheck> {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let records = audit::records(log)?;
    let file = std::fs::File::open(witness).map_err(|e| StoreError::io(witness, e))?;
    let mut out = WitnessCheck {
        checkpoints: 0,
        covered: 0,
        pinned: key.is_some(),
        problem: None,
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| StoreError::io(witness, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{} line {}", witness.display(), i + 1);
        let cp: Checkpoint = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                out.problem = Some(format!("{at}: not a checkpoint ({e})"));
                return Ok(out);
            }
        };
        if cp.log != name {
            continue;
        }
        let own = public_key(&cp.key);
        let verifier = match (key, &own) {
            (Some(k), _) => *k,
            (None, Ok(k)) => *k,
            (None, Err(e)) => {
                out.problem = Some(format!("{at}: {e}"));
                return Ok(out);
            }
        };
        let signature = unhex(&cp.signature)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b));
        let good = signature.is_some_and(|s| {
            verifier
                .verify(&message(&cp.log, cp.records, &cp.head, cp.time_ms), &s)
                .is_ok()
        });
        if !good {
            out.problem = Some(format!(
                "{at}: the checkpoint's signature does not verify{}",
                if key.is_some() {
                    " with the pinned key (forged, or signed by another key)"
                } else {
                    ""
                }
            ));
            return Ok(out);
        }
        if cp.records > records.len() as u64 {
            out.problem = Some(format!(
                "the log has {} records but {at} signed {} (at {} ms): its tail was truncated",
                records.len(),
                cp.records,
                cp.time_ms
            ));
            return Ok(out);
        }
        if cp.records > 0 {
            let r = &records[cp.records as usize - 1];
            if r.hash != cp.head {
                out.problem = Some(format!(
                    "record {} is not the one {at} signed (hash {} vs {}): the chain was rewritten",
                    r.seq,
                    &r.hash[..r.hash.len().min(16)],
                    &cp.head[..cp.head.len().min(16)]
                ));
                return Ok(out);
            }
        }
        out.checkpoints += 1;
        out.covered = out.covered.max(cp.records);
    }
    if out.checkpoints == 0 {
        out.problem = Some(format!(
            "{} holds no checkpoint of `{name}`",
            witness.display()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use serde_json::json;

    /// A log of `n` records in `dir/log/`, checkpointed every 2 into `dir/witness.jsonl`.
    fn setup(dir: &Path, n: u64, tag: &str) -> (PathBuf, PathBuf, VerifyingKey) {
        let key = dir.join("keys/checkpoint.key");
        let public = if key.exists() {
            load_key(&key).unwrap().verifying_key()
        } else {
            public_key(&generate_key(&key).unwrap()).unwrap()
        };
        let (log, witness) = (dir.join("log/audit.jsonl"), dir.join("witness.jsonl"));
        let mut a = AuditLog::open(&log)
            .unwrap()
            .with_checkpoints(Signer::open(&key, &witness, &log, 2).unwrap())
            .unwrap();
        for i in 0..n {
            a.append("test", "event", json!({"i": i, "tag": tag}))
                .unwrap();
            a.sync().unwrap();
        }
        (log, witness, public)
    }

    #[test]
    fn an_intact_log_matches_its_signed_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (log, witness, key) = setup(dir.path(), 7, "a");
        let c = check(&log, &witness, Some(&key)).unwrap();
        assert_eq!(c.problem, None);
        // Every 2 records, and one at closing.
        assert_eq!((c.checkpoints, c.covered), (4, 7));
        // Reopened, the log goes on being checkpointed where it left off.
        let (log, witness, key) = setup(dir.path(), 1, "a");
        let c = check(&log, &witness, Some(&key)).unwrap();
        assert_eq!((c.problem, c.covered), (None, 8));
    }

    #[test]
    fn a_truncated_tail_and_a_rewritten_chain_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (log, witness, key) = setup(dir.path(), 6, "a");
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Cut the last two records: still a valid chain, but shorter than what was signed.
        std::fs::write(&log, lines[..4].join("\n") + "\n").unwrap();
        assert_eq!(audit::verify(&log).unwrap().problem, None);
        let p = check(&log, &witness, Some(&key)).unwrap().problem.unwrap();
        assert!(
            p.contains("has 4 records") && p.contains("truncated"),
            "{p}"
        );

        // A whole new chain of the same length in its place: valid, and not what was signed.
        std::fs::remove_file(&log).unwrap();
        let other = tempfile::tempdir().unwrap();
        let (fresh, _, _) = setup(other.path(), 6, "b");
        std::fs::copy(&fresh, &log).unwrap();
        assert_eq!(audit::verify(&log).unwrap().problem, None);
        let p = check(&log, &witness, Some(&key)).unwrap().problem.unwrap();
        assert!(p.contains("record 1 ") && p.contains("rewritten"), "{p}");
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, witness, _) = setup(dir.path(), 2, "a");
        let other = public_key(&generate_key(&dir.path().join("other.key")).unwrap()).unwrap();
        let p = check(&log, &witness, Some(&other))
            .unwrap()
            .problem
            .unwrap();
        assert!(p.contains("signature does not verify"), "{p}");
        // An edited checkpoint fails even against its own key.
        let text = std::fs::read_to_string(&witness).unwrap();
        std::fs::write(&witness, text.replacen("\"records\":2", "\"records\":1", 1)).unwrap();
        let c = check(&log, &witness, None).unwrap();
        assert!(!c.pinned && c.problem.unwrap().contains("signature"));
    }

    #[test]
    fn keys_are_never_overwritten_nor_kept_beside_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        generate_key(&key).unwrap();
        let before = std::fs::read(&key).unwrap();
        assert!(generate_key(&key).is_err());
        assert_eq!(std::fs::read(&key).unwrap(), before);
        let log = dir.path().join("audit.jsonl");
        let e = Signer::open(&key, &dir.path().join("w"), &log, 1)
            .err()
            .unwrap();
        assert!(e.to_string().contains("keep it elsewhere"), "{e}");
    }
}
