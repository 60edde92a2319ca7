//! Writes that never leave a partial file: write a temporary sibling, fsync, rename, fsync the
//! directory.

use std::io::Write;
use std::path::Path;

/// `path`'s directory and a hidden sibling of it for this process (`.NAME.KIND-PID`).
fn sibling<'p>(path: &'p Path, kind: &str) -> (&'p Path, std::path::PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    (
        dir,
        dir.join(format!(".{name}.{kind}-{}", std::process::id())),
    )
}

pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_with(path, |tmp| std::fs::File::create(tmp)?.write_all(bytes))
}

/// As [`atomic_write`], for writers that want a path (e.g. a library's `save(path)`): `write`
/// creates the temporary file, which is then synced and renamed over `path`.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (dir, tmp) = sibling(path, "tmp");
    let write = || -> std::io::Result<()> {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Replaces directory `dir` with what `fill` writes into a fresh temporary sibling: readers see
/// the old directory or the new one, never a half-written one, and a failed `fill` leaves the
/// old one as it was.
pub fn replace_dir(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let (parent, tmp) = sibling(dir, "tmp");
    let (_, old) = sibling(dir, "old");
    std::fs::create_dir_all(parent)?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    let swap = || -> std::io::Result<()> {
        fill(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            std::fs::File::open(entry?.path())?.sync_all()?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&tmp, dir)?;
        std::fs::File::open(parent)?.sync_all()
    };
    let done = swap();
    let _ = std::fs::remove_dir_all(if done.is_ok() { &old } else { &tmp });
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replacement_keeps_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        replace_dir(&dir, |tmp| std::fs::write(tmp.join("a"), "old")).unwrap();
        let failed = replace_dir(&dir, |tmp| {
            std::fs::write(tmp.join("a"), "new")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "old");
        replace_dir(&dir, |tmp| std::fs::write(tmp.join("b"), "new")).unwrap();
        assert!(!dir.join("a").exists());
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "new");
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary directories left");
    }
}
