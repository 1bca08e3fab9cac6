//! The library's one error type. `main.rs` maps each kind to an exit code:
//! bad usage, config or data → 2; anything that failed while running → 1.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file (or a `--set` override) is malformed or inconsistent.
    /// `location` is `file:line[:col]` or `--set key=value`.
    #[error("{location}: {message}")]
    Config { location: String, message: String },

    /// Input data is malformed: names the file, the 1-based line and the field where known.
    /// `line` 0 means the whole file (a binary file, a file-level property): no line is shown.
    #[error("{}{}: {}{}", file.display(), if *line > 0 { format!(":{line}") } else { String::new() }, field.as_ref().map(|f| format!("field '{f}': ")).unwrap_or_default(), message)]
    Data {
        file: PathBuf,
        line: usize,
        field: Option<String>,
        message: String,
    },

    /// An I/O failure, with the path it concerned.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A run was interrupted (Ctrl-C / SIGTERM) after its state was saved.
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// The command cannot run as asked (a run folder in use, a fresh run over existing
    /// checkpoints): nothing was changed; the message says what to do instead.
    #[error("{0}")]
    Usage(String),

    /// Anything else that went wrong while running (tokenizer, tensors, metrics…).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// Exit code for the CLI: 2 for bad usage/config/data, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Data { .. } | Error::Usage(_) => 2,
            Error::Io { .. } | Error::Interrupted(_) | Error::Runtime(_) => 1,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(
        file: impl Into<PathBuf>,
        line: usize,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Error::Data {
            file: file.into(),
            line,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}
