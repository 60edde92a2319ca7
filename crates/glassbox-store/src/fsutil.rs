//! File helpers: atomic writes (see `glassbox_model::fsutil`) and content hashes.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    glassbox_model::fsutil::atomic_write(path, bytes).map_err(|e| StoreError::io(path, e))
}

/// SHA-256 of a file, hex, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| StoreError::io(path, e))?;
    Ok(hex(&h.finalize()))
}

/// A dictionary's identity: the SHA-256 of its weights file in `dict_dir` (SAELens layout).
pub fn dictionary_sha256(dict_dir: &Path) -> Result<String> {
    sha256_file(&dict_dir.join(glassbox_dictionary::saelens::WEIGHTS))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
