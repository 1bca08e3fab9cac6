//! `length_penalty` (max_tokens): `-(tokens / max_tokens)` clipped to [-1, 0]; a truncated
//! rollout gets -1. Pushes toward short reasoning when weighted against a retrieval reward.
//! Never abstains.

use crate::types::{Reward, RolloutOutcome};

pub struct LengthPenalty {
    pub max_tokens: usize,
}

impl Reward for LengthPenalty {
    fn name(&self) -> &str {
        "length_penalty"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        if o.truncated {
            return Some(-1.0);
        }
        Some(-(o.num_tokens as f32 / self.max_tokens.max(1) as f32).min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn linear_in_length() {
        let p = LengthPenalty { max_tokens: 100 };
        let mut o = outcome(&[]);
        o.num_tokens = 25;
        assert_eq!(p.score(&o), Some(-0.25));
        o.num_tokens = 400;
        assert_eq!(p.score(&o), Some(-1.0));
        o.truncated = true;
        o.num_tokens = 10;
        assert_eq!(p.score(&o), Some(-1.0));
    }
}
