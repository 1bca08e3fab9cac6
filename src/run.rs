//! The run folder (`runs/<name>/`, DESIGN §6) and interruption handling.
//!
//! ```text
//! runs/<name>/
//!   config.resolved.toml   written before step 0
//!   tensorboard/           event files (one per process; never truncated)
//!   metrics.jsonl          every logged scalar/text/histogram, appended
//!   eval/                  reports and TREC run files
//!   checkpoints/           (stages) model + optimizer + RNG + data position
//! ```
//!
//! Ctrl-C / SIGTERM set a flag that loops poll between steps ([`interrupted`]): the loop then
//! saves, flushes its sinks and returns [`crate::Error::Interrupted`]. A second Ctrl-C exits at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, LoggingSection};
use crate::error::{Error, Result};
use crate::metrics::{ConsoleSink, JsonlSink, MultiSink, TensorBoardSink};

/// A run's output folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates `runs/<name>/` (or reuses it) and writes the resolved config into it.
    pub fn create(cfg: &Config) -> Result<Self> {
        let root = cfg.run_dir.clone();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let dir = RunDir { root };
        let mut text = format!(
            "# Resolved from {} by t1-train {}; every default filled in, paths absolute or as resolved.\n",
            cfg.source.display(),
            env!("CARGO_PKG_VERSION")
        );
        text.push_str(&cfg.to_toml()?);
        write_atomic(&dir.root.join("config.resolved.toml"), text.as_bytes())?;
        Ok(dir)
    }

    /// Opens an existing run folder (for reading reports, resuming).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.root.join("tensorboard")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `runs/<name>/<sub>/`, created on demand.
    pub fn subdir(&self, sub: &str) -> Result<PathBuf> {
        let p = self.root.join(sub);
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    }

    /// The sinks that `[logging]` asks for: TensorBoard, JSONL, and the console on `bar`.
    pub fn sinks(
        &self,
        logging: &LoggingSection,
        bar: indicatif::ProgressBar,
    ) -> Result<MultiSink> {
        let mut sinks = MultiSink::default();
        if logging.tensorboard {
            sinks.push(Box::new(TensorBoardSink::create(&self.tensorboard_dir())?));
        }
        if logging.jsonl {
            sinks.push(Box::new(JsonlSink::open(&self.metrics_path())?));
        }
        sinks.push(Box::new(ConsoleSink::new(
            bar,
            logging.log_every.max(10),
            6,
        )));
        Ok(sinks)
    }
}

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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the Ctrl-C / SIGTERM handler (idempotent). The first signal sets the flag that
/// [`interrupted`] reads; a second one exits immediately with code 130.
pub fn install_interrupt_handler() -> Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting now without saving");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt received: finishing the current step, then saving and stopping (Ctrl-C again to exit at once)");
        })
        .map_err(|e| Error::Runtime(format!("cannot install the Ctrl-C handler: {e}")));
    });
    result
}

/// True once Ctrl-C / SIGTERM has been received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
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
}
