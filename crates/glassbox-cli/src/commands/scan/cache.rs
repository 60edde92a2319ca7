//! The baseline's measurements, cached under `$GLASSBOX_HOME/scan-cache/<key>.json`. The key
//! hashes everything they depend on (the baseline's weights, the spec, every data file, the
//! Glassbox version and build); each entry carries the SHA-256 of its body, so a corrupt or edited entry
//! is detected and recomputed, never trusted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glassbox_model::registry;
use glassbox_store::fsutil::{hex, sha256_file};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::side::Side;
use super::spec::Spec;

pub fn key(model_sha256: &str, spec: &Spec, data: &str) -> Result<String> {
    let v = json!({
        "glassbox": env!("CARGO_PKG_VERSION"),
        // The running build itself: a rebuilt binary may measure differently under one version.
        "build": build_sha256(),
        "model": model_sha256,
        "spec": serde_json::to_value(spec)?,
        "data": data,
    });
    Ok(hex(&Sha256::digest(v.to_string().as_bytes())))
}

/// SHA-256 of the running executable (empty if it cannot be read: then the version alone keys).
fn build_sha256() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| sha256_file(&p).ok())
        .unwrap_or_default()
}

pub fn path(key: &str) -> PathBuf {
    registry::home()
        .join("scan-cache")
        .join(format!("{key}.json"))
}

/// The cached side for `key`, if there is a sound one; says why an entry was not used.
pub fn read(key: &str, say: &mut dyn FnMut(String)) -> Option<Side> {
    let p = path(key);
    let text = std::fs::read_to_string(&p).ok()?;
    let entry: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            say(format!(
                "cache entry {} is not JSON: recomputing",
                p.display()
            ));
            return None;
        }
    };
    let body = entry["body"].as_str().unwrap_or_default();
    if entry["key"] != key || entry["sha256"] != hex(&Sha256::digest(body.as_bytes())) {
        say(format!(
            "cache entry {} fails its checksum: recomputing",
            p.display()
        ));
        return None;
    }
    match serde_json::from_str(body) {
        Ok(side) => Some(side),
        Err(e) => {
            say(format!(
                "cache entry {} is unreadable ({e}): recomputing",
                p.display()
            ));
            None
        }
    }
}

pub fn write(key: &str, side: &Side) -> Result<()> {
    let p = path(key);
    let dir = p.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let body = serde_json::to_string(side)?;
    let entry = json!({"key": key, "sha256": hex(&Sha256::digest(body.as_bytes())), "body": body});
    glassbox_model::fsutil::atomic_write(&p, entry.to_string().as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

/// SHA-256 over files and directories (every file below, in name order, with its path).
pub fn digest_paths(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for p in paths {
        let mut files = Vec::new();
        collect(p, &mut files)?;
        files.sort();
        for f in files {
            h.update(f.to_string_lossy().as_bytes());
            h.update(sha256_file(&f)?.as_bytes());
        }
    }
    Ok(hex(&h.finalize()))
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
            collect(&e?.path(), out)?;
        }
    } else if p.is_file() {
        out.push(p.to_path_buf());
    } else {
        anyhow::bail!("{} does not exist", p.display());
    }
    Ok(())
}
