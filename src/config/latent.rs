//! `[latent]`: LaSER (DESIGN §1) — the latent query view and its self-distillation objective.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

/// How the K latent states are aligned with the explicit trajectory (matched in `loss::latent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trajectory {
    /// 1 − cosine between latent state k and explicit segment end k.
    #[default]
    Cosine,
    /// KL between their score distributions over the batch's documents, per step.
    Kl,
}

/// What one latent step feeds to the next (matched in `model::latent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatentFeed {
    /// `softmax(logits / τ) · E`.
    #[default]
    SoftToken,
    /// The last-layer state as it is.
    Hidden,
}

/// How the K states become one query vector (matched in `model::latent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatentPooling {
    #[default]
    Mean,
    Last,
}

#[serde_inline_default]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatentSection {
    /// K: latent steps after the query prompt (no token is decoded).
    #[serde_inline_default(3)]
    pub steps: usize,
    /// What a latent step feeds to the next: `soft_token` (`softmax(logits / soft_temperature) · E`,
    /// E = the input embedding table) or `hidden` (the raw last-layer state).
    #[serde(default)]
    pub feed: LatentFeed,
    /// τ of the soft token's softmax.
    #[serde_inline_default(1.0)]
    pub soft_temperature: f64,
    /// Query vector from the K last-layer states: `mean` or `last`.
    #[serde(default)]
    pub pooling: LatentPooling,
    /// Temperature of the latent (student) view's scores: its InfoNCE and the student side of
    /// the output alignment.
    #[serde_inline_default(0.02)]
    pub temperature: f64,
    /// Temperature of the explicit (teacher) view's scores: its InfoNCE and the teacher side of
    /// the alignments.
    #[serde_inline_default(0.02)]
    pub teacher_temperature: f64,
    /// λ₁: weight of the explicit view's InfoNCE.
    #[serde_inline_default(1.0)]
    pub explicit_weight: f64,
    /// λ₂: weight of the output alignment KL(P_explicit ‖ P_latent) over the batch's documents.
    #[serde_inline_default(10.0)]
    pub output_weight: f64,
    /// λ₃: weight of the trajectory alignment.
    #[serde_inline_default(0.1)]
    pub trajectory_weight: f64,
    /// Trajectory alignment: `cosine` (1 − cos between latent state k and the explicit state at
    /// the end of reasoning segment k) or `kl` (per step, KL between their score distributions
    /// over the batch's documents).
    #[serde(default)]
    pub trajectory: Trajectory,
    /// The explicit view is a teacher: no gradient flows through its side of the alignments
    /// (its own InfoNCE still trains it).
    #[serde_inline_default(true)]
    pub detach_teacher: bool,
    /// Documents per query in a training step: a relevant one + hard negatives (as stage 2).
    #[serde_inline_default(4)]
    pub group_size: usize,
    /// Weight of the stage-1 SFT loss on the explicit view's gold reasoning, so the same
    /// checkpoint keeps writing reasoning for the explicit view.
    #[serde_inline_default(0.1)]
    pub sft_weight: f64,
}

impl LatentSection {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        let l = self;
        c.at_least(1, "", &[("latent.steps", l.steps as u64)])?;
        c.positive(&[
            ("latent.soft_temperature", l.soft_temperature),
            ("latent.temperature", l.temperature),
            ("latent.teacher_temperature", l.teacher_temperature),
        ])?;
        c.non_negative(&[
            ("latent.explicit_weight", l.explicit_weight),
            ("latent.output_weight", l.output_weight),
            ("latent.trajectory_weight", l.trajectory_weight),
            ("latent.sft_weight", l.sft_weight),
        ])?;
        c.at_least(
            1,
            " (the positive)",
            &[("latent.group_size", l.group_size as u64)],
        )
    }
}
