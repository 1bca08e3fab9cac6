//! The ground floor every layer may use for files: atomic writes. (Checksums of model folders
//! are `checksums`, on the same floor.)

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temp file beside it, `fsync`, rename, `fsync` the folder.
/// A crash at any moment leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Puts the finished folder `tmp` in place of `dir` (removing an old `dir` first), the last step
/// of writing a model or checkpoint folder into a temp folder beside it.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_swaps_the_whole_folder_in() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, dir) = (root.path().join(".x.tmp"), root.path().join("x"));
        for d in [&tmp, &dir] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dir.join("old.txt"), "old").unwrap();
        std::fs::write(tmp.join("new.txt"), "new").unwrap();
        replace_dir(&tmp, &dir).unwrap();
        assert!(!tmp.exists() && !dir.join("old.txt").exists());
        assert_eq!(std::fs::read_to_string(dir.join("new.txt")).unwrap(), "new");
        // into a folder that is not there yet
        std::fs::create_dir(&tmp).unwrap();
        replace_dir(&tmp, &root.path().join("y")).unwrap();
        assert!(root.path().join("y").is_dir() && !tmp.exists());
    }
}
