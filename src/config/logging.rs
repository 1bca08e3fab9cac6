//! `[logging]`: where metrics go (TensorBoard, JSONL, the console).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;
use crate::metrics::ProgressMode;

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// Write TensorBoard event files under the run folder.
    #[serde_inline_default(true)]
    pub tensorboard: bool,
    /// Write `metrics.jsonl` under the run folder.
    #[serde_inline_default(true)]
    pub jsonl: bool,
    /// Progress bars: `auto` (only on a terminal), `always`, `never`.
    #[serde(default)]
    pub progress: ProgressMode,
    /// Log scalars every N steps.
    #[serde_inline_default(1)]
    pub log_every: u64,
}

impl LoggingSection {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        c.at_least(1, "", &[("logging.log_every", self.log_every)])
    }
}
