//! `SHA256SUMS` files: every folder t1-train writes a model into (checkpoints, `best/`) gets one,
//! in the format `sha256sum -c` reads (`<64 hex>  <file name>` per line), written last, so a
//! corrupted, truncated or half-copied file is detected before it is loaded — never used silently.
//!
//! Why not a crate: the format is two fields per line and `sha2` (already a dependency) does the
//! hashing; the point is interoperability with coreutils, which needs nothing more.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The name of the checksum file inside a folder.
pub const FILE: &str = "SHA256SUMS";

/// An error unless `path` is a regular file (following symlinks): a FIFO, socket or device in
/// a model folder would block or stream forever instead of being read.
pub fn require_regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Data {
            file: path.to_path_buf(),
            line: 0,
            field: None,
            message: format!(
                "not a regular file ({}); model, checkpoint and index files must be plain files",
                if meta.is_dir() {
                    "a folder"
                } else {
                    "a FIFO, socket or device"
                }
            ),
        });
    }
    Ok(())
}

/// SHA-256 of a file's bytes, lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Writes `dir/SHA256SUMS` covering every regular file directly in `dir` (sorted by name).
pub fn write(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != FILE && !n.starts_with('.'))
        .collect();
    names.sort();
    let mut text = String::new();
    for n in &names {
        text.push_str(&format!("{}  {n}\n", file_sha256(&dir.join(n))?));
    }
    crate::fsio::write_atomic(&dir.join(FILE), text.as_bytes())
}

/// Checks every file `dir/SHA256SUMS` lists. `Ok(false)` when the folder has no such file (a
/// model folder from elsewhere, e.g. the HF hub); an error naming the file when one is missing,
/// altered or truncated, or when `SHA256SUMS` itself is malformed.
pub fn verify(dir: &Path) -> Result<bool> {
    let sums = dir.join(FILE);
    let text = match std::fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&sums, e)),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hash, name) = line
            .split_once("  ")
            .filter(|(h, n)| h.len() == 64 && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| {
                Error::data(&sums, i + 1, None, "expected `<sha256 hex>  <file name>`")
            })?;
        let path = dir.join(name);
        if path.exists() {
            require_regular(&path)?;
        }
        if !path.exists() {
            return Err(Error::Runtime(format!(
                "{}: listed in {} but missing — the folder is incomplete",
                path.display(),
                sums.display()
            )));
        }
        let actual = file_sha256(&path)?;
        if actual != hash {
            return Err(Error::Runtime(format!(
                "{}: SHA-256 {}… differs from {}… recorded in {} — the file is corrupted or truncated; \
                 it will not be loaded (restore it, or delete this folder to fall back to an older checkpoint)",
                path.display(),
                &actual[..12],
                &hash[..12],
                sums.display()
            )));
        }
    }
    Ok(true)
}

/// The file names `dir/SHA256SUMS` lists (`Ok(None)` when the folder has none).
pub fn listed(dir: &Path) -> Result<Option<Vec<String>>> {
    let sums = dir.join(FILE);
    let text = match std::fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&sums, e)),
    };
    Ok(Some(
        text.lines()
            .filter_map(|l| l.split_once("  ").map(|(_, n)| n.to_string()))
            .collect(),
    ))
}

/// For a folder with a `SHA256SUMS`: an error unless it lists every one of `required` (that
/// exist in the folder or are needed by it), so emptying the file or deleting a line cannot let
/// an altered file be loaded unverified. Folders without one pass (see [`verify`]).
pub fn verify_listing(dir: &Path, required: &[&str]) -> Result<()> {
    let Some(names) = listed(dir)? else {
        return Ok(());
    };
    for r in required {
        if !names.iter().any(|n| n == r) {
            return Err(Error::Runtime(format!(
                "{}: {r} is not listed in {} — the folder cannot be verified and is not loaded \
                 (the checksum file was emptied or edited; restore it, or delete this folder to fall \
                 back to an older checkpoint)",
                dir.display(),
                dir.join(FILE).display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_sums_verify_and_any_change_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.bin"), [1u8, 2, 3]).unwrap();
        std::fs::write(d.join("b.json"), "{}").unwrap();
        assert!(!verify(d).unwrap(), "no SHA256SUMS yet");
        write(d).unwrap();
        let text = std::fs::read_to_string(d.join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        // the same digest coreutils prints for b"{}"
        assert!(
            text.contains(
                "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a  b.json"
            )
        );
        assert!(verify(d).unwrap());

        std::fs::write(d.join("a.bin"), [1u8, 2, 4]).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("a.bin") && e.contains("corrupted"), "{e}");

        std::fs::write(d.join("a.bin"), [1u8, 2]).unwrap();
        assert!(verify(d).unwrap_err().to_string().contains("truncated"));

        std::fs::remove_file(d.join("a.bin")).unwrap();
        assert!(verify(d).unwrap_err().to_string().contains("missing"));

        std::fs::write(d.join("a.bin"), [1u8, 2, 3]).unwrap();
        write(d).unwrap();
        verify_listing(d, &["a.bin", "b.json"]).unwrap();
        let only_b = std::fs::read_to_string(d.join(FILE))
            .unwrap()
            .lines()
            .filter(|l| l.ends_with("b.json"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        std::fs::write(d.join(FILE), only_b).unwrap();
        assert!(verify(d).unwrap(), "what is listed still verifies");
        let e = verify_listing(d, &["a.bin", "b.json"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.bin is not listed"), "{e}");
        std::fs::write(d.join(FILE), "").unwrap();
        assert!(
            verify_listing(d, &["b.json"]).is_err(),
            "an emptied file lists nothing"
        );

        std::fs::write(d.join(FILE), "nonsense\n").unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("SHA256SUMS:1"), "{e}");
    }
}
