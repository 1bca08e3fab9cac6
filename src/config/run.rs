//! `[run]`: the run's identity and where its folder goes.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run name: outputs go to `<output_dir>/<name>/`. Letters, digits, `-`, `_`, `.` only.
    pub name: String,
    /// Folder holding run folders. Relative to the config file. Unset: `runs` in the working
    /// directory.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Seed for every random choice in the run (sampling, shuffling, init).
    #[serde_inline_default(42)]
    pub seed: u64,
}

impl RunSection {
    /// The name is a plain folder name.
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        let name = &self.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
            || name.len() > 200
        {
            return Err(c.err(
                "run.name",
                format!(
                    "run name {name:?} must be 1–200 characters, only letters, digits, '-', '_', '.', not starting with '.'"
                ),
            ));
        }
        Ok(())
    }

    /// `output_dir` resolved against the config's folder (`runs` when unset).
    pub(super) fn resolve_output_dir(&mut self, c: &Ctx) -> PathBuf {
        let dir = match &self.output_dir {
            Some(dir) => c.resolve(dir),
            None => PathBuf::from("runs"),
        };
        self.output_dir = Some(dir.clone());
        dir
    }
}
