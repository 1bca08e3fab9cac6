//! `[stage2]`: contrastive embedding (InfoNCE with hard negatives, a joint SFT term, mining).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage2Section {
    /// InfoNCE temperature τ.
    #[serde_inline_default(0.05)]
    pub temperature: f64,
    /// Documents per query: the positive + (group_size − 1) hard negatives from
    /// `hard_negatives.jsonl` (queries with fewer are topped up from random documents).
    #[serde_inline_default(2)]
    pub group_size: usize,
    /// Add the document→query term.
    #[serde(default)]
    pub symmetric: bool,
    /// Weight of a joint SFT term on the gold reasoning, so generation does not decay.
    #[serde_inline_default(0.1)]
    pub sft_weight: f64,
    /// Mine hard negatives with the current model at step 0 and every N steps (0 = use
    /// `hard_negatives.jsonl` only).
    #[serde(default)]
    pub mine_every: u64,
    /// Mined negatives kept per query.
    #[serde_inline_default(20)]
    pub mine_depth: usize,
    /// Best-ranked non-relevant documents skipped when mining (likely unjudged positives).
    #[serde(default)]
    pub mine_skip: usize,
}

impl Default for Stage2Section {
    fn default() -> Self {
        toml::from_str("").expect("every stage2 field has a default")
    }
}

impl Stage2Section {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(c.err(
                "stage2.temperature",
                format!("must be > 0, got {}", self.temperature),
            ));
        }
        if self.group_size == 0 {
            return Err(c.err("stage2.group_size", "must be at least 1 (the positive)"));
        }
        if !(self.sft_weight >= 0.0 && self.sft_weight.is_finite()) {
            return Err(c.err(
                "stage2.sft_weight",
                format!("must be ≥ 0 and finite, got {}", self.sft_weight),
            ));
        }
        Ok(())
    }
}
