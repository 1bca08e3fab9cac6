//! `[data]`: the dataset folder (BEIR layout + reasoning, DESIGN §5) and its split names.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Dataset folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`). Relative to the
    /// config file.
    pub dataset: PathBuf,
    /// Split used for training (a `qrels/` file stem).
    #[serde_inline_default("train".to_string())]
    pub train_split: String,
    /// Split used for periodic evaluation.
    #[serde_inline_default("dev".to_string())]
    pub dev_split: String,
    /// Split used for final reports.
    #[serde_inline_default("test".to_string())]
    pub test_split: String,
}

impl DataSection {
    /// The folder exists (resolved against the config's folder); split names are file stems.
    pub(super) fn validate(&mut self, c: &Ctx) -> Result<()> {
        self.dataset = c.resolve(&self.dataset);
        if !self.dataset.is_dir() {
            return Err(c.err(
                "data.dataset",
                format!("dataset folder {} does not exist", self.dataset.display()),
            ));
        }
        for (key, split) in [
            ("data.train_split", &self.train_split),
            ("data.dev_split", &self.dev_split),
            ("data.test_split", &self.test_split),
        ] {
            if split.is_empty() || split.contains(['/', '\\']) {
                return Err(c.err(
                    key,
                    format!("split name {split:?} must be a plain file stem"),
                ));
            }
        }
        Ok(())
    }
}
