//! The micro-batches of one optimizer step and what each contributes: the one place a training
//! loss is scaled.
//!
//! Every stage means the same by its knobs: a micro-batch holds `train.batch_size` examples (stage
//! 3: queries, each with its `stage3.group_size` rollouts) and a step sums `train.grad_accum`
//! micro-batches. Each [`MicroBatch`] carries its `scale`, its share of the step's loss, chosen so
//! that `Σ scale · loss` over the step is the loss of the unsplit batch: the accumulated gradient
//! is then the unsplit one, and [`crate::train::common::Trainer`] logs that same sum as
//! `<stage>/loss`.
//!
//! - stages 1, 2 and latent average their micro-batches: `scale = 1 / grad_accum`;
//! - stage 3 ([`rollout_plan`]) follows its loss type's normaliser (`loss::grpo`): rows for
//!   `grpo` / `dr_grpo` (each micro-batch's loss is a mean over its rows), completion tokens for
//!   `bnpo` (a mean over its tokens), and 1 for `dapo`, whose loss is divided by the whole step's
//!   completion tokens ([`StepPlan::num_items`]) inside each micro-batch already.

use std::ops::Range;

use crate::loss::LossType;

/// One micro-batch of an optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    /// Its rows (stage 3: rollouts) among the step's.
    pub rows: Range<usize>,
    /// Its share of the step's loss (`Σ scale · loss` = the unsplit batch's loss).
    pub scale: f64,
}

/// How one optimizer step's batch is cut.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    pub micro: Vec<MicroBatch>,
    /// The divisor `dapo` normalises every micro-batch's loss by: the step's loss-bearing
    /// completion tokens (stage 3; 1 elsewhere).
    pub num_items: f64,
}

impl StepPlan {
    /// `parts` micro-batches of `per` rows each, averaged (stages 1, 2 and latent).
    pub fn equal(per: usize, parts: usize) -> Self {
        let parts = parts.max(1);
        Self {
            micro: (0..parts)
                .map(|k| MicroBatch {
                    rows: k * per..(k + 1) * per,
                    scale: 1.0 / parts as f64,
                })
                .collect(),
            num_items: 1.0,
        }
    }
}

/// Stage 3: the step's rollouts in micro-batches of `per` rows (`batch_size × G`, whole groups),
/// from each rollout's loss-bearing completion tokens (`tokens[i]`: 0 for a masked rollout), scaled
/// as `loss` normalises.
pub fn rollout_plan(tokens: &[f64], per: usize, loss: LossType) -> StepPlan {
    let n = tokens.len();
    let per = per.max(1);
    let total: f64 = tokens.iter().sum();
    let micro = (0..n.div_ceil(per))
        .map(|k| {
            let rows = k * per..((k + 1) * per).min(n);
            let scale = match loss {
                LossType::Dapo => 1.0,
                LossType::Bnpo if total > 0.0 => tokens[rows.clone()].iter().sum::<f64>() / total,
                _ => rows.len() as f64 / n as f64,
            };
            MicroBatch { rows, scale }
        })
        .collect();
    StepPlan {
        micro,
        num_items: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scales of every split sum to 1 for the mean-type losses (so Σ scale · mean = the
    /// unsplit mean), are token shares for bnpo, and 1 each for dapo (which divides by the
    /// step's tokens itself).
    #[test]
    fn scales_follow_the_loss_type() {
        let tokens = [3.0, 0.0, 5.0, 2.0, 4.0, 6.0];
        for per in [1, 2, 4, 6] {
            for loss in [LossType::Grpo, LossType::DrGrpo, LossType::Bnpo] {
                let p = rollout_plan(&tokens, per, loss);
                let rows: usize = p.micro.iter().map(|m| m.rows.len()).sum();
                assert_eq!(rows, 6, "{per} {loss:?}");
                let sum: f64 = p.micro.iter().map(|m| m.scale).sum();
                assert!((sum - 1.0).abs() < 1e-12, "{per} {loss:?}: {sum}");
            }
            let bnpo = rollout_plan(&tokens, per, LossType::Bnpo);
            for m in &bnpo.micro {
                let share = tokens[m.rows.clone()].iter().sum::<f64>() / 20.0;
                assert_eq!(m.scale, share);
            }
            let dapo = rollout_plan(&tokens, per, LossType::Dapo);
            assert!(dapo.micro.iter().all(|m| m.scale == 1.0));
            assert_eq!(dapo.num_items, 20.0);
        }
        let p = rollout_plan(&tokens, 4, LossType::Grpo);
        assert_eq!(
            p.micro[1].rows,
            4..6,
            "the last micro-batch takes what is left"
        );
        let e = StepPlan::equal(8, 4);
        assert_eq!(e.micro.len(), 4);
        assert!(e.micro.iter().all(|m| m.scale == 0.25));
    }
}
