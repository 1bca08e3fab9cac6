//! `recall` (k): fraction of the gold documents ranked within the top k. Abstains without gold.

use crate::types::{Reward, RolloutOutcome};

pub struct Recall {
    pub k: usize,
}

impl Reward for Recall {
    fn name(&self) -> &str {
        "recall"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        if o.gold.is_empty() {
            return None;
        }
        let hits = o.gold.iter().filter(|(d, _)| d.rank <= self.k).count();
        Some(hits as f32 / o.gold.len() as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn counts_gold_within_k() {
        let r = Recall { k: 5 };
        assert_eq!(r.score(&outcome(&[(1, 1), (9, 1)])), Some(0.5));
        assert_eq!(r.score(&outcome(&[(5, 1)])), Some(1.0));
        assert_eq!(r.score(&outcome(&[])), None);
    }
}
