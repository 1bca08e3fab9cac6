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
//! [`checkpoint`] writes and verifies what `checkpoints/` holds.

pub mod checkpoint;
pub mod launch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::config::{Config, LoggingSection};
use crate::error::{Error, Result};
use crate::metrics::{ConsoleSink, JsonlSink, MultiSink, TensorBoardSink};

/// A run's output folder, held under an exclusive lock (`.lock`) while a command writes into it.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    /// The open, locked `.lock` file; the lock goes with the last clone (or the process).
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

/// The lock file inside a run folder. It holds who took it (pid, host, command, time) so a
/// refused second process can name the holder. The lock itself is the OS's advisory file lock
/// (`flock` on Linux): the kernel drops it when its holder exits, even by `kill -9`, so a stale
/// file never blocks a resume.
pub const LOCK_FILE: &str = ".lock";

impl RunDir {
    /// Creates `runs/<name>/` (or reuses it), takes its lock and writes the resolved config into
    /// it. For commands that accept any state of the folder (eval, index); the training stages
    /// use [`RunDir::lock`] and [`RunDir::write_resolved`] once they have accepted the run.
    pub fn create(cfg: &Config) -> Result<Self> {
        let dir = Self::lock(cfg)?;
        dir.write_resolved(cfg)?;
        Ok(dir)
    }

    /// Creates `runs/<name>/` (or reuses it) and takes its lock; refuses with exit 2, naming the
    /// holder, when another process holds it. Nothing in the folder is changed.
    pub fn lock(cfg: &Config) -> Result<Self> {
        let root = cfg.run_dir.clone();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let path = root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(Error::Usage(format!(
                    "{} is in use by another t1-train process ({}): wait for it to finish, stop it,                      or pick another run.name",
                    root.display(),
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let args: Vec<String> = std::env::args().collect();
        let about = format!(
            "pid {} on {}, started {} s after the epoch: {}",
            std::process::id(),
            gethostname::gethostname().to_string_lossy(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            args.join(" ")
        );
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all(about.as_bytes()))
            .and_then(|()| file.flush());
        written.map_err(|e| Error::io(&path, e))?;
        Ok(RunDir {
            root,
            _lock: Some(std::sync::Arc::new(file)),
        })
    }

    /// Writes `config.resolved.toml` (once the run is accepted: a refused run leaves the folder's
    /// record of its own config alone).
    pub fn write_resolved(&self, cfg: &Config) -> Result<()> {
        let mut text = format!(
            "# Resolved from {} by t1-train {}; every default filled in, paths absolute or as resolved.\n",
            cfg.source.display(),
            env!("CARGO_PKG_VERSION")
        );
        text.push_str(&cfg.to_toml()?);
        crate::fsio::write_atomic(&self.root.join("config.resolved.toml"), text.as_bytes())
    }

    /// Opens an existing run folder (for reading reports, resuming).
    pub fn open(root: impl Into<PathBuf>) -> Self {
        RunDir {
            root: root.into(),
            _lock: None,
        }
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
/// Loops that poll [`interrupted`] and save before stopping (training stages) hold a
/// [`PollGuard`]; with none alive a signal stops the process at once.
static POLLERS: AtomicUsize = AtomicUsize::new(0);

/// Held by a loop that polls [`interrupted`] between steps (see [`install_interrupt_handler`]).
#[derive(Debug)]
pub struct PollGuard(());

impl PollGuard {
    pub fn new() -> Self {
        POLLERS.fetch_add(1, Ordering::SeqCst);
        PollGuard(())
    }
}

impl Default for PollGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        POLLERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Installs the Ctrl-C / SIGTERM handler (idempotent). While a training loop polls (holds a
/// [`PollGuard`]) the first signal sets the flag that [`interrupted`] reads and the loop saves and
/// stops; a second one exits immediately with code 130. With no polling loop (`index`, `eval`,
/// `generate`, `search`, loading) the first signal exits at once with 130: those commands write
/// their outputs atomically at the end, so stopping leaves nothing half-written.
pub fn install_interrupt_handler() -> Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = ctrlc::set_handler(|| {
            if POLLERS.load(Ordering::SeqCst) == 0 {
                eprintln!("\ninterrupt received: stopped (nothing was half-written)");
                std::process::exit(130);
            }
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
