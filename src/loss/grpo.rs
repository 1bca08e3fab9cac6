//! Stage 3's policy loss: the clipped importance-ratio objective of GRPO with an optional KL
//! penalty to a frozen reference, exactly as TRL 1.16.0's `GRPOTrainer._compute_loss`
//! (token-level importance sampling):
//!
//! ```text
//! ρ      = exp(logp − logp_old)                              [n, t]
//! L_tok  = −min(ρ·A, clamp(ρ, 1 − ε_low, 1 + ε_high)·A) + β·KL_tok
//! KL_tok = k3: exp(ref − logp) − (ref − logp) − 1   (TRL's; unbiased, ≥ 0)
//!          k1: logp − ref        k2: ½ (logp − ref)²  (Schulman's estimators)
//! grpo    : mean over sequences of (Σ_t L·m / max(Σ_t m, 1))
//! bnpo    : Σ L·m / max(Σ m, 1)
//! dr_grpo : Σ L·m / (n · max_completion_length)
//! dapo    : Σ L·m / num_items   (active tokens of the whole generation batch)
//! ```
//!
//! With one optimisation pass per batch (`iterations = 1`) `logp_old = logp.detach()` and ρ ≡ 1,
//! as in TRL. Clip fractions are TRL's: low = ρ < 1 − ε_low with A < 0, high = ρ > 1 + ε_high
//! with A > 0, masked token means. Golden values: `scripts/golden_grpo.py`.

pub use crate::config::KlEstimator;
pub use crate::config::LossType;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// Knobs of the loss (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoParams {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub beta: f64,
    pub kl: KlEstimator,
    pub loss_type: LossType,
    /// `max_new_tokens`, for `dr_grpo`.
    pub max_completion_length: usize,
    /// Active completion tokens of the whole generation batch, for `dapo`.
    pub num_items: f64,
}

/// The loss and TRL's logged statistics.
#[derive(Debug, Clone)]
pub struct GrpoOut<B: Backend> {
    /// Scalar `[1]`.
    pub loss: Tensor<B, 1>,
    /// Masked token mean of the KL estimate (0 when β = 0 and no reference is given).
    pub kl: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
}

/// `logps`, `old_logps`, `ref_logps` `[n, t]` log-probs of the completion tokens under the
/// policy (with gradient), the sampling policy and the reference; `advantages` `[n]`; `mask`
/// `[n, t]` 1.0 on completion tokens that count (0 on padding and masked-truncated rows).
pub fn grpo_loss<B: Backend>(
    logps: Tensor<B, 2>,
    old_logps: Tensor<B, 2>,
    ref_logps: Option<Tensor<B, 2>>,
    advantages: Tensor<B, 1>,
    mask: Tensor<B, 2>,
    p: &GrpoParams,
) -> GrpoOut<B> {
    let [n, t] = logps.dims();
    let adv = advantages.reshape([n, 1]); // [n, 1]
    let ratio = (logps.clone() - old_logps).exp(); // [n, t]
    let clipped = ratio
        .clone()
        .clamp(1.0 - p.epsilon_low, 1.0 + p.epsilon_high);
    let l1 = ratio.clone() * adv.clone();
    let l2 = clipped * adv.clone();
    let mut per_token = l1.min_pair(l2).neg(); // [n, t]
    let tokens = mask.clone().sum().into_scalar().elem::<f64>().max(1.0);
    let mut kl_mean = 0.0;
    if let Some(r) = ref_logps {
        let d = r - logps; // ref − logp
        let kl = match p.kl {
            KlEstimator::K1 => d.clone().neg(),
            KlEstimator::K2 => d.clone().powi_scalar(2) * 0.5,
            KlEstimator::K3 => d.clone().exp() - d - 1.0,
        };
        kl_mean = (kl.clone().detach() * mask.clone())
            .sum()
            .into_scalar()
            .elem::<f64>()
            / tokens;
        if p.beta != 0.0 {
            per_token = per_token + kl * p.beta;
        }
    }
    let masked = per_token * mask.clone();
    let loss = match p.loss_type {
        LossType::Grpo => {
            let per_seq = masked.sum_dim(1) / mask.clone().sum_dim(1).clamp_min(1.0); // [n, 1]
            per_seq.mean()
        }
        LossType::Bnpo => masked.sum() / tokens,
        LossType::DrGrpo => masked.sum() / (n * p.max_completion_length.max(1)) as f64,
        LossType::Dapo => masked.sum() / p.num_items.max(1.0),
    };
    // clip statistics (no gradient)
    let r = ratio.detach();
    let a = adv.expand([n, t]);
    let low = r
        .clone()
        .lower_elem(1.0 - p.epsilon_low)
        .bool_and(a.clone().lower_elem(0.0));
    let high = r
        .greater_elem(1.0 + p.epsilon_high)
        .bool_and(a.greater_elem(0.0));
    let frac = |b: Tensor<B, 2, burn::tensor::Bool>| {
        (b.float() * mask.clone()).sum().into_scalar().elem::<f64>() / tokens
    };
    let region = low.clone().bool_or(high.clone());
    GrpoOut {
        loss,
        kl: kl_mean,
        clip_low: frac(low),
        clip_high: frac(high),
        clip_region: frac(region),
    }
}
