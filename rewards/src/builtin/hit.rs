//! `hit` (k): 1 when any gold document is within the top k, else 0. Abstains without gold.

use crate::types::{Reward, RolloutOutcome};

pub struct Hit {
    pub k: usize,
}

impl Reward for Hit {
    fn name(&self) -> &str {
        "hit"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        o.best_gold_rank()
            .map(|r| if r <= self.k { 1.0 } else { 0.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn any_gold_within_k() {
        let h = Hit { k: 10 };
        assert_eq!(h.score(&outcome(&[(11, 1), (10, 1)])), Some(1.0));
        assert_eq!(h.score(&outcome(&[(11, 1)])), Some(0.0));
        assert_eq!(h.score(&outcome(&[])), None);
    }
}
