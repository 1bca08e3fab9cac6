//! `[train]`: the optimisation loop every stage shares (batch, AdamW, schedule, evaluation and
//! checkpoint periods, fault tolerance, recomputation).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::{Ctx, never};
use crate::error::Result;

/// Learning-rate shape after warm-up (matched in `train::optim`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Half-cosine from the peak down to `min_lr_ratio · peak` at the last step.
    #[default]
    Cosine,
    /// Straight line from the peak down to `min_lr_ratio · peak` at the last step.
    Linear,
    /// The peak, held.
    Constant,
}

/// `train.max_nonfinite_steps` when unset (left out of the resolved config, so of the config
/// hash, when it has this value).
const DEFAULT_MAX_NONFINITE: u64 = 3;

fn is_default_max_nonfinite(n: &u64) -> bool {
    *n == DEFAULT_MAX_NONFINITE
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps in the stage (may be raised on `--resume`).
    #[serde_inline_default(200)]
    pub steps: u64,
    /// Examples per micro-batch (stage 3: queries, each with its `stage3.group_size` rollouts).
    #[serde_inline_default(16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size × grad_accum, in every
    /// stage; stage 3 samples the step's batch_size × grad_accum queries at once, as TRL's
    /// generation batch).
    #[serde_inline_default(1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[serde_inline_default(1e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine/linear).
    #[serde_inline_default(0.1)]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    #[serde_inline_default(10)]
    pub warmup_steps: u64,
    /// The learning-rate shape after warm-up: `cosine`, `linear` or `constant`.
    #[serde(default)]
    pub schedule: Schedule,
    /// AdamW decoupled weight decay (the AdamW defaults are PyTorch's; burn's differ).
    #[serde(default)]
    pub weight_decay: f32,
    /// AdamW β1.
    #[serde_inline_default(0.9)]
    pub beta1: f32,
    /// AdamW β2.
    #[serde_inline_default(0.999)]
    pub beta2: f32,
    /// AdamW ε.
    #[serde_inline_default(1e-8)]
    pub eps: f32,
    /// Clip the global gradient norm to this, like `clip_grad_norm_` (0 = no clipping; the norm
    /// is logged either way).
    #[serde_inline_default(1.0)]
    pub max_grad_norm: f64,
    /// Evaluate on the dev split every N optimizer steps, and at the end (see `eval_at_end`).
    /// 0 = only at the end.
    #[serde_inline_default(50)]
    pub eval_every: u64,
    /// Evaluate on the dev split after the last step too (what writes `best/` when `eval_every`
    /// is 0). false: only every `eval_every` steps, e.g. for a sweep that evaluates the last
    /// checkpoint on the test split itself. May change on resume.
    #[serde_inline_default(true)]
    #[serde(skip_serializing_if = "is_true")]
    #[schemars(skip_serializing_if = "never")]
    pub eval_at_end: bool,
    /// Checkpoint every N optimizer steps (and at the end).
    #[serde_inline_default(50)]
    pub save_every: u64,
    /// `step-*` checkpoints kept (the best one is always kept).
    #[serde_inline_default(2)]
    pub keep_checkpoints: usize,
    /// Sequences per forward pass when encoding documents and queries for evaluation.
    #[serde_inline_default(32)]
    pub eval_batch_size: usize,
    /// Steps in a row whose loss or gradient norm is NaN/inf that are skipped (no update, counted
    /// in `<stage>/nonfinite_steps`) before the run stops with a checkpoint of the last good
    /// weights; 0 = stop at the first. May change on resume.
    #[serde_inline_default(DEFAULT_MAX_NONFINITE)]
    #[serde(skip_serializing_if = "is_default_max_nonfinite")]
    #[schemars(skip_serializing_if = "never")]
    pub max_nonfinite_steps: u64,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    /// (`model::recompute`): activation memory of one layer plus each layer's input, each layer
    /// run forward twice; the same losses and gradients. May change on resume.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(skip_serializing_if = "never")]
    pub gradient_checkpointing: bool,
}

impl TrainSection {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        let t = self;
        c.at_least(
            1,
            "",
            &[
                ("train.steps", t.steps as u64),
                ("train.batch_size", t.batch_size as u64),
                ("train.grad_accum", t.grad_accum as u64),
                ("train.save_every", t.save_every as u64),
                ("train.keep_checkpoints", t.keep_checkpoints as u64),
                ("train.eval_batch_size", t.eval_batch_size as u64),
            ],
        )?;
        c.positive(&[("train.lr", t.lr)])?;
        c.unit(true, &[("train.min_lr_ratio", t.min_lr_ratio)])?;
        if t.warmup_steps > t.steps {
            return Err(c.err(
                "train.warmup_steps",
                format!(
                    "{} warm-up steps exceed train.steps = {}",
                    t.warmup_steps, t.steps
                ),
            ));
        }
        c.unit(false, &[("train.beta1", t.beta1), ("train.beta2", t.beta2)])?;
        c.positive(&[("train.eps", t.eps)])?;
        c.non_negative(&[("train.weight_decay", t.weight_decay)])?;
        c.non_negative(&[("train.max_grad_norm", t.max_grad_norm)])
    }
}
