//! `reciprocal_rank`: 1 / rank of the best-ranked gold document (1 when it is first).
//! Abstains for a query without gold documents.

use crate::types::{Reward, RolloutOutcome};

pub struct ReciprocalRank;

impl Reward for ReciprocalRank {
    fn name(&self) -> &str {
        "reciprocal_rank"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        o.best_gold_rank().map(|r| 1.0 / r as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn best_gold_rank_counts() {
        assert_eq!(ReciprocalRank.score(&outcome(&[(4, 1), (2, 1)])), Some(0.5));
        assert_eq!(ReciprocalRank.score(&outcome(&[(1, 1)])), Some(1.0));
        assert_eq!(ReciprocalRank.score(&outcome(&[])), None);
    }
}
