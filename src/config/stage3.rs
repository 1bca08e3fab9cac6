//! `[stage3]`: GRPO — rollouts per query, the clipped objective and its KL, how the loss is
//! averaged, sampling, the live index, and the rewards (`[[stage3.rewards]]`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::{Ctx, never};
use crate::error::Result;

/// How per-token losses are averaged (TRL's `loss_type`; matched in `loss::grpo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then over sequences.
    Grpo,
    /// Mean over all tokens of the micro-batch.
    Bnpo,
    /// Sum over all tokens ÷ the active tokens of the whole generation batch (DAPO).
    #[default]
    Dapo,
    /// Sum ÷ (sequences × max_completion_length) (Dr. GRPO).
    DrGrpo,
}

/// KL estimator between the policy and the reference, per token (matched in `loss::grpo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    K1,
    K2,
    /// TRL's choice: low variance, unbiased, non-negative.
    #[default]
    K3,
}

/// How rewards are scaled after subtracting the group mean (matched in `advantage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (GRPO).
    #[default]
    Group,
    /// Divide by the std of the whole batch.
    Batch,
    /// No scaling (Dr. GRPO).
    None,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage3Section {
    /// G: rollouts per query (≥ 2).
    #[serde_inline_default(4)]
    pub group_size: usize,
    /// μ: optimisation passes over one batch of rollouts (μ = 1 ⇒ ratio ≡ 1).
    #[serde_inline_default(1)]
    pub iterations: usize,
    /// Lower clip ε of the importance ratio.
    #[serde_inline_default(0.2)]
    pub epsilon: f64,
    /// Upper clip (DAPO clip-higher). Unset: `epsilon`.
    #[serde(default)]
    pub epsilon_high: Option<f64>,
    /// KL weight β to the frozen reference (the starting model); 0 keeps no reference.
    #[serde(default)]
    pub beta: f64,
    /// The per-token KL estimator: `k1`, `k2` or `k3`.
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// How per-token losses are averaged: `grpo`, `bnpo`, `dapo` (TRL's default) or `dr_grpo`.
    #[serde(default)]
    pub loss_type: LossType,
    /// How rewards are scaled after subtracting the group mean: by the group's std (`group`),
    /// the batch's (`batch`) or not at all (`none`).
    #[serde(default)]
    pub scale_rewards: ScaleRewards,
    /// Rollouts that hit `max_new_tokens` without `</think>` get no loss.
    #[serde_inline_default(true)]
    pub mask_truncated: bool,
    /// Sampling temperature.
    #[serde_inline_default(1.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[serde_inline_default(1.0)]
    pub top_p: f32,
    /// Top-k sampling (unset = off).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Rebuild the document index with the current model every N steps (0 = frozen).
    #[serde(default)]
    pub refresh_every: u64,
    /// Documents in each rollout's top-k list handed to rewards.
    #[serde_inline_default(10)]
    pub reward_top_k: usize,
    /// A saved index (`t1-train index`) of the starting model to rank against instead of
    /// encoding the corpus at start; refused unless its model and corpus hashes match
    /// `model.path` and `data.dataset`. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
    /// Weight of the auxiliary InfoNCE of each rollout's own `<emb_token>` state against the
    /// document index (its relevant documents as positives, the whole corpus as negatives),
    /// added to the GRPO loss (0 = off).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(skip_serializing_if = "never")]
    pub aux_infonce_weight: f64,
    /// Temperature τ of that InfoNCE. Unset: 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_infonce_temperature: Option<f64>,
    /// The rewards, combined with their weights (at least one; `[[stage3.rewards]]` tables, the
    /// README's "Swapping rewards").
    #[serde_inline_default(vec![t1_rewards::RewardSpec::Ndcg { k: 10, weight: 1.0 }])]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub rewards: Vec<t1_rewards::RewardSpec>,
}

impl Stage3Section {
    /// Whether a stage 3 starting at `step` encodes its frozen index from the starting model:
    /// the resume (step > 0) of a run with `refresh_every = 0` and no saved `index`. (A
    /// refreshed index is encoded by the current policy; a saved one is read.)
    pub fn resume_encodes_frozen_index(&self, step: u64) -> bool {
        step > 0 && self.refresh_every == 0 && self.index.is_none()
    }

    /// Ranges checked, the index path resolved, each reward resolved and built once.
    pub(super) fn validate(&mut self, c: &Ctx) -> Result<()> {
        let s3 = self;
        let group = " (advantages are group-relative)";
        c.at_least(2, group, &[("stage3.group_size", s3.group_size as u64)])?;
        c.at_least(1, "", &[("stage3.iterations", s3.iterations as u64)])?;
        c.non_negative(&[("stage3.aux_infonce_weight", s3.aux_infonce_weight)])?;
        if let Some(t) = s3.aux_infonce_temperature {
            c.positive(&[("stage3.aux_infonce_temperature", t)])?;
        }
        if let Some(eh) = s3.epsilon_high {
            c.non_negative(&[("stage3.epsilon_high", eh)])?;
        }
        let eh = s3.epsilon_high.unwrap_or(s3.epsilon);
        if !(0.0..1.0).contains(&s3.epsilon) {
            return Err(c.err(
                "stage3.epsilon",
                format!(
                    "epsilon must be in [0, 1) and epsilon_high ≥ 0, got {} / {eh}",
                    s3.epsilon
                ),
            ));
        }
        c.non_negative(&[("stage3.beta", s3.beta)])?;
        c.positive(&[("stage3.temperature", s3.temperature)])?;
        if !(s3.top_p > 0.0 && s3.top_p <= 1.0) {
            return Err(c.err(
                "stage3.top_p",
                format!("must be in (0, 1], got {}", s3.top_p),
            ));
        }
        if s3.top_k == Some(0) {
            return Err(c.err("stage3.top_k", "must be at least 1"));
        }
        if s3.rewards.is_empty() {
            return Err(c.err(
                "stage3.rewards",
                format!(
                    "at least one reward is needed; names: {}",
                    t1_rewards::NAMES.join(", ")
                ),
            ));
        }
        if let Some(p) = &s3.index {
            let p = c.resolve(p);
            if !p.is_file() {
                return Err(c.err(
                    "stage3.index",
                    format!(
                        "index file {} does not exist (write it with `t1-train index`)",
                        p.display()
                    ),
                ));
            }
            s3.index = Some(p);
        }
        for (i, r) in s3.rewards.iter_mut().enumerate() {
            r.resolve(c.base);
            r.build()
                .map_err(|e| c.err(&format!("stage3.rewards[{i}]"), e.0))?;
        }
        Ok(())
    }
}
