//! Group-relative advantages (DESIGN §2), exactly as TRL 1.16.0's `GRPOTrainer`
//! (`_generate_and_score_completions`, `multi_objective_aggregation = "sum_then_normalize"`):
//!
//! ```text
//! r_i      = Σ_k w_k · reward_k(i)   (abstentions left out; None when all abstain = unscorable)
//! mean_g   = nanmean of the group's r        (unscorable rows excluded)
//! std      = group: nanstd of the group's r  | batch: nanstd of all r | none: group std, logging only
//! A_i      = r_i − mean_g, divided by (std + 1e−4) unless scale_rewards = none
//! A_i      = 0 where it is NaN (unscorable rows, groups with < 2 scorable rows when scaling)
//! ```
//!
//! `nanstd` is Bessel-corrected (NaN for fewer than two values), as TRL's `trainer/utils.py`.
//! Pure host-side arithmetic on `[B·G]` values, rows grouped consecutively (G per query).

pub use crate::config::ScaleRewards;

/// Advantages and the statistics logged with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// `[B·G]`.
    pub values: Vec<f32>,
    /// Fraction of rollouts whose std (the one used or logged) is zero: no learning signal.
    pub frac_zero_std: f64,
}

fn nanmean(xs: &[f64]) -> f64 {
    let v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Bessel-corrected std ignoring NaN (NaN for fewer than two values).
fn nanstd(xs: &[f64]) -> f64 {
    let v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.len() < 2 {
        return f64::NAN;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (var * v.len() as f64 / (v.len() - 1) as f64).sqrt()
}

/// `rewards` `[B·G]` (None = unscorable), `g` rollouts per query.
pub fn group_advantages(rewards: &[Option<f32>], g: usize, scale: ScaleRewards) -> Advantages {
    assert!(
        g > 0 && rewards.len().is_multiple_of(g),
        "rewards must hold G per query"
    );
    let r: Vec<f64> = rewards
        .iter()
        .map(|x| x.map_or(f64::NAN, |v| v as f64))
        .collect();
    let n = r.len();
    let group_std: Vec<f64> = r
        .chunks(g)
        .flat_map(|c| std::iter::repeat_n(nanstd(c), g))
        .collect();
    let std: Vec<f64> = match scale {
        ScaleRewards::Group | ScaleRewards::None => group_std,
        ScaleRewards::Batch => vec![nanstd(&r); n],
    };
    let mean: Vec<f64> = r
        .chunks(g)
        .flat_map(|c| std::iter::repeat_n(nanmean(c), g))
        .collect();
    let values = (0..n)
        .map(|i| {
            let mut a = r[i] - mean[i];
            if scale != ScaleRewards::None {
                a /= std[i] + 1e-4;
            }
            if a.is_nan() { 0.0 } else { a as f32 }
        })
        .collect();
    // torch.isclose(std, 0): |std| ≤ 1e-8 (atol); NaN is not close
    let zero = std.iter().filter(|s| s.abs() <= 1e-8).count();
    Advantages {
        values,
        frac_zero_std: zero as f64 / n.max(1) as f64,
    }
}
