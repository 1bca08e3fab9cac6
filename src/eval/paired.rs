//! Paired comparison of two rankings of the same queries: the per-query differences of a metric,
//! wins / losses / ties, and the two-sided p-value of a paired randomisation (sign-flip) test —
//! under the null hypothesis each query's difference is as likely negative as positive, so the
//! p-value is the share of the 2ⁿ sign assignments whose summed difference is at least as far
//! from zero as the observed one (Smucker, Allan & Carterette 2007 recommend it for IR). Exact for
//! up to [`EXACT_UP_TO`] queries, Monte Carlo with a fixed seed above.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Query counts up to which every sign assignment is enumerated.
pub const EXACT_UP_TO: usize = 16;

/// Sign assignments drawn above [`EXACT_UP_TO`] queries.
pub const PERMUTATIONS: usize = 100_000;

/// `b` against `a` on the queries both have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    pub num_queries: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// Queries where `b` scores higher, lower, the same.
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    /// Two-sided, of the mean difference `b − a`.
    pub p_value: f64,
}

impl Paired {
    pub fn diff(&self) -> f64 {
        self.mean_b - self.mean_a
    }
}

/// Compares `b` with `a` (per-query values of one metric) on their common queries.
pub fn paired(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Paired {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .filter_map(|(q, &x)| b.get(q).map(|&y| (x, y)))
        .collect();
    let n = pairs.len();
    let d: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
    let mean = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>() / n.max(1) as f64;
    // a difference below this counts as a tie (metrics are sums of a few terms: rounding only)
    let eps = 1e-12;
    let observed: f64 = d.iter().sum::<f64>().abs();
    let at_least = |sum: f64| sum.abs() >= observed - eps;
    let p_value = if n == 0 || observed <= eps {
        1.0
    } else if n <= EXACT_UP_TO {
        let hits = (0u64..1 << n)
            .filter(|mask| {
                let s: f64 = (0..n)
                    .map(|i| if mask >> i & 1 == 1 { -d[i] } else { d[i] })
                    .sum();
                at_least(s)
            })
            .count();
        hits as f64 / (1u64 << n) as f64
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(0x7031);
        let hits = (0..PERMUTATIONS)
            .filter(|_| {
                let s: f64 = d
                    .iter()
                    .map(|&x| if rng.random::<bool>() { -x } else { x })
                    .sum();
                at_least(s)
            })
            .count();
        // the observed assignment counts as one of the draws
        (hits + 1) as f64 / (PERMUTATIONS + 1) as f64
    };
    Paired {
        num_queries: n,
        mean_a: mean(&mut pairs.iter().map(|p| p.0)),
        mean_b: mean(&mut pairs.iter().map(|p| p.1)),
        wins: d.iter().filter(|&&x| x > eps).count(),
        losses: d.iter().filter(|&&x| x < -eps).count(),
        ties: d.iter().filter(|&&x| x.abs() <= eps).count(),
        p_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: &[f64]) -> BTreeMap<String, f64> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| (format!("q{i:03}"), x))
            .collect()
    }

    #[test]
    fn exact_sign_flips() {
        // five equal gains: only "all +" and "all −" of the 32 assignments reach |Σ| = 5
        let p = paired(&map(&[0.0; 5]), &map(&[1.0; 5]));
        assert_eq!((p.wins, p.losses, p.ties), (5, 0, 0));
        assert_eq!(p.p_value, 2.0 / 32.0);
        // differences 3, 1, −1 (Σ = 3): signs (+,+,+) → 3, (+,+,−) → 5, (+,−,−) → 3 reach
        // |Σ| ≥ 3, (+,−,+) → 1 does not; with the mirrors 6 of 8
        let p = paired(&map(&[0.0, 0.0, 1.0]), &map(&[3.0, 1.0, 0.0]));
        assert_eq!((p.wins, p.losses), (2, 1));
        assert_eq!(p.p_value, 6.0 / 8.0);
        // differences 3, 1, 1 (Σ = 5): only (+,+,+) and its mirror
        let p = paired(&map(&[0.0, 0.0, 0.0]), &map(&[3.0, 1.0, 1.0]));
        assert_eq!(p.p_value, 2.0 / 8.0);
        // no difference: p = 1, all ties
        let p = paired(&map(&[0.2, 0.4]), &map(&[0.2, 0.4]));
        assert_eq!((p.p_value, p.ties), (1.0, 2));
    }

    #[test]
    fn symmetric_and_on_common_queries_only() {
        let a = map(&[0.1, 0.5, 0.3, 0.9, 0.0, 0.2]);
        let mut b = map(&[0.4, 0.5, 0.1, 1.0, 0.3, 0.6]);
        b.insert("only-in-b".into(), 1.0);
        let (ab, ba) = (paired(&a, &b), paired(&b, &a));
        assert_eq!(ab.num_queries, 6);
        assert_eq!(ab.p_value, ba.p_value);
        assert_eq!((ab.wins, ab.losses), (ba.losses, ba.wins));
        assert!((ab.diff() + ba.diff()).abs() < 1e-12);
    }

    #[test]
    fn monte_carlo_above_the_exact_range() {
        // 40 queries, a consistent small gain: far below 0.05; 40 zero-mean differences: far above
        let a = map(&[0.5; 40]);
        let gain: Vec<f64> = (0..40)
            .map(|i| 0.5 + 0.01 + 0.001 * (i % 3) as f64)
            .collect();
        assert!(paired(&a, &map(&gain)).p_value < 0.001);
        let noise: Vec<f64> = (0..40)
            .map(|i| if i % 2 == 0 { 0.6 } else { 0.4 })
            .collect();
        let p = paired(&a, &map(&noise)).p_value;
        assert!(p > 0.9, "{p}");
    }
}
