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

impl Stage2Section {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        c.positive(&[("stage2.temperature", self.temperature)])?;
        c.at_least(
            1,
            " (the positive)",
            &[("stage2.group_size", self.group_size as u64)],
        )?;
        c.non_negative(&[("stage2.sft_weight", self.sft_weight)])
    }
}
