//! The audit log: append-only JSON lines, hash-chained. Each record carries its sequence
//! number, the hash of the record before it and its own hash — SHA-256 over the record's
//! canonical JSON without `hash` — so editing, removing or reordering any record breaks the
//! chain at that record, and [`verify`] names it. The first record's `prev` is 64 zeros.
//!
//! Records are written with one `write` each; when they reach the disk is the caller's policy
//! ([`AuditLog::sync`]). A crash can leave a torn last line, which [`verify`] reports and
//! [`AuditLog::open`] refuses to append after.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::fsutil::hex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who: an API key's name, `config` for the deployment file, `server` for the server.
    pub actor: String,
    /// What: `server.start`, `monitor.create`, `monitor.delete`, `firing`, ...
    pub event: String,
    pub detail: Value,
    pub prev: String,
    pub hash: String,
}

/// The hash of a record line: SHA-256 of its exact bytes without the final `"hash"` member,
/// so no JSON number or escape is ever re-encoded to check it.
fn line_digest(line: &str) -> Option<String> {
    let at = line.rfind(HASH_MEMBER)?;
    let body = format!("{}}}", &line[..at]);
    Some(hex(&Sha256::digest(body.as_bytes())))
}

const HASH_MEMBER: &str = ",\"hash\":\"";

pub struct AuditLog {
    path: PathBuf,
    file: File,
    last_hash: String,
    next_seq: u64,
    /// The file's length after the last whole record: a failed write is cut back to it.
    bytes: u64,
    /// Signs checkpoints into a witness once records are on disk ([`crate::witness`]).
    signer: Option<crate::witness::Signer>,
}

impl AuditLog {
    /// Opens (or creates) the log and checks its whole chain before appending to it.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        // One writer at a time: two processes appending would fork the chain.
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => StoreError::store(
                path,
                "another process is writing this audit log (a running `glassbox serve`?); stop it or use another log",
            ),
            std::fs::TryLockError::Error(e) => StoreError::io(path, e),
        })?;
        let report = verify(path)?;
        let bytes = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        if let Some(problem) = report.problem {
            return Err(StoreError::store(
                path,
                format!("the audit log is broken ({problem}); nothing is appended to a broken chain — run `glassbox audit verify {}`", path.display()),
            ));
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            last_hash: report.last_hash,
            next_seq: report.records,
            bytes,
            signer: None,
        })
    }

    /// Signs checkpoints of this log from now on: one of the log as it is (verified at
    /// opening, on disk), then one per `every` records synced, and one when it is closed.
    pub fn with_checkpoints(mut self, mut signer: crate::witness::Signer) -> Result<AuditLog> {
        signer.synced(self.next_seq, &self.last_hash, true)?;
        self.signer = Some(signer);
        Ok(self)
    }

    /// Appends one record (not yet synced).
    pub fn append(&mut self, actor: &str, event: &str, detail: Value) -> Result<Record> {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut r = Record {
            seq: self.next_seq,
            time_ms,
            actor: actor.into(),
            event: event.into(),
            detail,
            prev: self.last_hash.clone(),
            hash: String::new(),
        };
        let encoded = serde_json::to_string(&r)
            .map_err(|e| StoreError::store(&self.path, format!("cannot encode a record: {e}")))?;
        // `hash` is serialised last: the record is hashed without it, then it is filled in.
        let prefix = encoded
            .strip_suffix(",\"hash\":\"\"}")
            .ok_or_else(|| StoreError::store(&self.path, "unexpected record encoding"))?;
        r.hash = hex(&Sha256::digest(format!("{prefix}}}").as_bytes()));
        let line = format!("{prefix}{HASH_MEMBER}{}\"}}\n", r.hash);
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // A full disk or a size limit can leave part of the line: cut it off, so the log
            // stays a chain of whole records and a later append does not continue a torn one.
            let _ = self.file.set_len(self.bytes);
            return Err(StoreError::io(&self.path, e));
        }
        self.bytes += line.len() as u64;
        self.last_hash = r.hash.clone();
        self.next_seq += 1;
        Ok(r)
    }

    /// Flushes appended records to the disk (then signs a checkpoint when one is due).
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(&self.path, e))?;
        if let Some(s) = &mut self.signer {
            s.synced(self.next_seq, &self.last_hash, false)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AuditLog {
    /// A closing checkpoint covers the last records (best effort: errors cannot be returned).
    fn drop(&mut self) {
        if self.signer.is_some() && self.file.sync_data().is_ok() {
            if let Some(s) = &mut self.signer {
                let _ = s.synced(self.next_seq, &self.last_hash, true);
            }
        }
    }
}

/// The outcome of checking a log's chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    /// Records read before the first problem (all of them if none).
    pub records: u64,
    pub last_hash: String,
    /// The first problem, naming its line and record.
    pub problem: Option<String>,
    /// The problem is only an incomplete last line (a crash mid-write): [`repair_torn_tail`]
    /// can remove it.
    pub torn: bool,
}

/// Checks every record's hash, sequence number and link to the record before it.
pub fn verify(path: &Path) -> Result<Verification> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut out = Verification {
        records: 0,
        last_hash: GENESIS.into(),
        problem: None,
        torn: false,
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            return Ok(out);
        }
        number += 1;
        let fail = |why: String| format!("line {number}: {why}");
        if line.last() != Some(&b'\n') {
            out.problem = Some(fail(
                "the last record is incomplete (a torn write; `glassbox audit repair` removes it)"
                    .into(),
            ));
            out.torn = true;
            return Ok(out);
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        let r: Record = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                out.problem = Some(fail(format!("not a record ({e})")));
                return Ok(out);
            }
        };
        let problem = if r.seq != out.records {
            Some(if r.seq > out.records {
                format!(
                    "record {} follows record {}: records removed or reordered",
                    r.seq,
                    out.records as i64 - 1
                )
            } else {
                format!(
                    "record {} where record {} belongs: records reordered or duplicated",
                    r.seq, out.records
                )
            })
        } else if line_digest(&text).as_deref() != Some(r.hash.as_str()) {
            Some(format!(
                "record {} was edited (its hash does not match its content)",
                r.seq
            ))
        } else if r.prev != out.last_hash {
            Some(format!(
                "record {} does not link to the record before it (removed, reordered or rewritten)",
                r.seq
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            out.problem = Some(fail(p));
            return Ok(out);
        }
        out.records += 1;
        out.last_hash = r.hash;
    }
}

/// Removes an incomplete last line — what a crash in the middle of a write leaves; a record
/// that was never whole was never synced, so no answered request and no signed checkpoint is
/// in it — and records the removal (its length and SHA-256) as an `audit.repair` record by
/// `actor`. Anything else wrong with the chain is refused: that is tampering, not a crash.
/// Returns the bytes removed (`None`: nothing to repair).
pub fn repair_torn_tail(path: &Path, actor: &str) -> Result<Option<u64>> {
    let v = verify(path)?;
    match (&v.problem, v.torn) {
        (None, _) => return Ok(None),
        (Some(p), false) => {
            return Err(StoreError::store(
                path,
                format!(
                    "{p}: only a torn last record is repaired; anything else is evidence to keep"
                ),
            ))
        }
        (Some(_), true) => {}
    }
    let bytes = std::fs::read(path).map_err(|e| StoreError::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let removed = &bytes[keep..];
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    file.set_len(keep as u64)
        .and_then(|_| file.sync_all())
        .map_err(|e| StoreError::io(path, e))?;
    drop(file);
    let mut log = AuditLog::open(path)?;
    log.append(
        actor,
        "audit.repair",
        serde_json::json!({"removed_bytes": removed.len(), "removed_sha256": hex(&Sha256::digest(removed)),
                           "after_record": v.records}),
    )?;
    log.sync()?;
    Ok(Some(removed.len() as u64))
}

/// The event a commitment is recorded under: `{"sha256", "file", ...}` in its detail.
pub const COMMIT_EVENT: &str = "commitment";

/// A commitment in the log to a file's exact bytes, made before the file may be shown (the red
/// team's held-out set), checked against the file when it is revealed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Commitment {
    pub seq: u64,
    pub file: PathBuf,
    pub sha256: String,
    /// `Some(true)`: the file has the committed bytes; `Some(false)`: it differs; `None`: absent.
    pub matches: Option<bool>,
}

/// Appends a commitment to `file`'s current bytes (SHA-256) and syncs it.
pub fn commit(log: &mut AuditLog, actor: &str, file: &Path, detail: Value) -> Result<Record> {
    let bytes = std::fs::read(file).map_err(|e| StoreError::io(file, e))?;
    let mut d = serde_json::Map::new();
    d.insert("file".into(), Value::String(file.display().to_string()));
    d.insert("sha256".into(), Value::String(hex(&Sha256::digest(&bytes))));
    if let Value::Object(extra) = detail {
        d.extend(extra);
    }
    let r = log.append(actor, COMMIT_EVENT, Value::Object(d))?;
    log.sync()?;
    Ok(r)
}

/// Every record of the log that parses, oldest first (check the chain with [`verify`]).
pub fn records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .collect())
}

/// Every commitment in the log, each checked against its file as it is now (a relative path
/// is taken from the log's folder).
pub fn commitments(path: &Path) -> Result<Vec<Commitment>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for r in records(path)? {
        if r.event != COMMIT_EVENT {
            continue;
        }
        let (Some(file), Some(sha)) = (r.detail["file"].as_str(), r.detail["sha256"].as_str())
        else {
            continue;
        };
        let file = base.join(file);
        let matches = std::fs::read(&file)
            .ok()
            .map(|b| hex(&Sha256::digest(&b)) == sha);
        out.push(Commitment {
            seq: r.seq,
            file,
            sha256: sha.to_string(),
            matches,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log(dir: &Path, n: u64) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append("ops", "firing", json!({"monitor": "m", "i": i}))
                .unwrap();
        }
        log.sync().unwrap();
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_log_verifies_and_reopens_on_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 5);
        let v = verify(&path).unwrap();
        assert_eq!((v.records, v.problem), (5, None));
        let mut again = AuditLog::open(&path).unwrap();
        let r = again.append("admin", "monitor.delete", json!({})).unwrap();
        assert_eq!((r.seq, r.prev), (5, v.last_hash));
        assert_eq!(verify(&path).unwrap().records, 6);
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let first = AuditLog::open(&path).unwrap();
        let err = AuditLog::open(&path).err().unwrap().to_string();
        assert!(err.contains("another process is writing"), "{err}");
        drop(first);
        AuditLog::open(&path).unwrap();
    }

    #[test]
    fn a_commitment_fails_when_its_file_differs_by_one_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let held = dir.path().join("heldout.jsonl");
        std::fs::write(&held, b"{\"text\":\"attack one\"}\n").unwrap();
        let mut log = AuditLog::open(&path).unwrap();
        commit(&mut log, "red", &held, json!({"texts": 1})).unwrap();
        let c = commitments(&path).unwrap();
        assert_eq!((c.len(), c[0].matches), (1, Some(true)));
        let mut bytes = std::fs::read(&held).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&held, &bytes).unwrap();
        assert_eq!(commitments(&path).unwrap()[0].matches, Some(false));
        std::fs::remove_file(&held).unwrap();
        assert_eq!(commitments(&path).unwrap()[0].matches, None);
        assert_eq!(
            verify(&path).unwrap().problem,
            None,
            "the chain itself is intact"
        );
    }

    #[test]
    fn edits_removals_reorders_and_torn_writes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 5);
        let good = lines(&path);
        let problem = |ls: &[String]| {
            write(&path, ls);
            verify(&path).unwrap().problem.unwrap()
        };
        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"i\":2", "\"i\":7");
        assert!(problem(&edited).contains("line 3: record 2 was edited"));
        let mut removed = good.clone();
        removed.remove(1);
        assert!(problem(&removed).contains("line 2: record 2 follows record 0"));
        let mut swapped = good.clone();
        swapped.swap(1, 3);
        assert!(problem(&swapped).contains("line 2: record 3 follows record 0"));
        let mut last_removed = good.clone();
        last_removed.remove(4);
        write(&path, &last_removed);
        assert_eq!(
            verify(&path).unwrap().problem,
            None,
            "a removed tail is a shorter log"
        );
        std::fs::write(&path, good.join("\n") + "\n{\"seq\":5").unwrap();
        let torn = verify(&path).unwrap().problem.unwrap();
        assert!(torn.contains("line 6") && torn.contains("torn"), "{torn}");
        let err = AuditLog::open(&path).err().unwrap().to_string();
        assert!(err.contains("glassbox audit verify"), "{err}");
    }

    #[test]
    fn only_a_torn_tail_is_repaired_and_the_repair_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = log(dir.path(), 3);
        let good = lines(&path);
        assert_eq!(repair_torn_tail(&path, "ops").unwrap(), None);
        std::fs::write(&path, good.join("\n") + "\n{\"seq\":3,\"ti").unwrap();
        assert_eq!(repair_torn_tail(&path, "ops").unwrap(), Some(12));
        let v = verify(&path).unwrap();
        assert_eq!((v.problem, v.records), (None, 4));
        let last = records(&path).unwrap().pop().unwrap();
        assert_eq!(
            (last.actor.as_str(), last.event.as_str()),
            ("ops", "audit.repair")
        );
        assert_eq!(last.detail["removed_bytes"], 12);
        // An edit is evidence, not a crash: refused, and the file is left as it was.
        let mut edited = lines(&path);
        edited[1] = edited[1].replace("\"i\":1", "\"i\":9");
        write(&path, &edited);
        let before = std::fs::read(&path).unwrap();
        let e = repair_torn_tail(&path, "ops").unwrap_err().to_string();
        assert!(e.contains("only a torn last record"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
