//! `ndcg` (k): nDCG@k of the rollout's ranking with trec_eval's gains (graded relevance,
//! discount 1/log2(rank + 1)), ideal DCG from the gold grades. Abstains without gold documents.

use crate::types::{Reward, RolloutOutcome};

pub struct Ndcg {
    pub k: usize,
}

fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 1) as f64).log2()
}

impl Reward for Ndcg {
    fn name(&self) -> &str {
        "ndcg"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        if o.gold.is_empty() {
            return None;
        }
        let dcg: f64 = o
            .gold
            .iter()
            .filter(|(d, _)| d.rank <= self.k)
            .map(|(d, g)| *g as f64 * discount(d.rank))
            .sum();
        let mut grades: Vec<i32> = o.gold.iter().map(|(_, g)| *g).collect();
        grades.sort_unstable_by(|a, b| b.cmp(a));
        let idcg: f64 = grades
            .iter()
            .take(self.k)
            .enumerate()
            .map(|(i, g)| *g as f64 * discount(i + 1))
            .sum();
        Some(if idcg > 0.0 { (dcg / idcg) as f32 } else { 0.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn graded_gains_and_cutoff() {
        let n = Ndcg { k: 10 };
        assert_eq!(n.score(&outcome(&[(1, 1)])), Some(1.0));
        // one gold at rank 3: 1/log2(4) = 0.5
        assert!((n.score(&outcome(&[(3, 1)])).unwrap() - 0.5).abs() < 1e-6);
        // grades 2 at rank 2 and 1 at rank 1: dcg = 1 + 2/log2(3); idcg = 2 + 1/log2(3)
        let want = (1.0 + 2.0 / 3f64.log2()) / (2.0 + 1.0 / 3f64.log2());
        assert!((n.score(&outcome(&[(2, 2), (1, 1)])).unwrap() as f64 - want).abs() < 1e-6);
        assert_eq!(Ndcg { k: 2 }.score(&outcome(&[(3, 1)])), Some(0.0));
        assert_eq!(n.score(&outcome(&[])), None);
    }
}
