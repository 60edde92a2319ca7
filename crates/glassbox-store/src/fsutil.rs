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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
