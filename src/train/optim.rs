//! The optimizer side every stage shares: learning-rate schedule and global-norm gradient
//! clipping (as PyTorch's `clip_grad_norm_`; burn's own `GradientClipping::Norm` clips each
//! parameter separately). AdamW itself is burn's (`AdamWConfig`), built by [`adamw`].

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// Learning rate for optimizer step `step` (0-based) of `total`: linear warm-up from
/// `peak / warmup` over the first `warmup` steps (as transformers' schedulers: step 0 is not 0),
/// then the schedule's decay. Pure.
pub fn lr_at(
    step: u64,
    total: u64,
    warmup: u64,
    peak: f64,
    min_ratio: f64,
    schedule: Schedule,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let floor = peak * min_ratio;
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => floor + (peak - floor) * (1.0 - progress),
        Schedule::Cosine => {
            floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// burn's AdamW with PyTorch's defaults for what the config does not set (ε 1e-8; burn's
/// defaults are ε 1e-5 and decay 1e-4). Weight decay applies to every parameter.
pub fn adamw(betas: (f32, f32), eps: f32, weight_decay: f32) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(betas.0)
        .with_beta_2(betas.1)
        .with_epsilon(eps)
        .with_weight_decay(weight_decay)
}

/// Sums the squared gradient entries of every float parameter (one device scalar).
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient by a factor.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Global L2 norm of all gradients (before clipping); when `max_norm` is set and exceeded, every
/// gradient is scaled by `max_norm / (norm + 1e-6)`, exactly as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, f64) {
    let mut v = SquaredNorm::<B> {
        grads: &grads,
        total: None,
    };
    model.visit(&mut v);
    let norm = v
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0);
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            let mut s = Scale::<B> {
                grads: &mut grads,
                factor: coef,
                _b: std::marker::PhantomData,
            };
            model.visit(&mut s);
        }
    }
    (grads, norm)
}

use burn::tensor::ElementConversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_matches_transformers() {
        // transformers.get_cosine_schedule_with_warmup(peak=1, warmup=10, total=110): step 0 of
        // warm-up is 0 there; here warm-up counts the step being taken (1/10 at step 0).
        assert!((lr_at(0, 110, 10, 1.0, 0.0, Schedule::Cosine) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 110, 10, 1.0, 0.0, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 110, 10, 1.0, 0.0, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 110, 10, 1.0, 0.0, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!(lr_at(110, 110, 10, 1.0, 0.0, Schedule::Cosine).abs() < 1e-12);
        assert!((lr_at(110, 110, 10, 1.0, 0.1, Schedule::Cosine) - 0.1).abs() < 1e-12);
        assert!((lr_at(60, 110, 10, 2.0, 0.0, Schedule::Linear) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(100, 110, 10, 3.0, 0.0, Schedule::Constant), 3.0);
        assert_eq!(lr_at(5, 110, 0, 3.0, 0.0, Schedule::Constant), 3.0);
    }
}
