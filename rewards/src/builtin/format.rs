//! `format`: 1 when the rollout closed `</think>` itself (not truncated, nothing after it),
//! else 0. Never abstains.

use crate::types::{Reward, RolloutOutcome};

pub struct Format;

impl Reward for Format {
    fn name(&self) -> &str {
        "format"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        Some(if o.format_ok && !o.truncated {
            1.0
        } else {
            0.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;

    #[test]
    fn closed_and_not_truncated() {
        let mut o = outcome(&[]);
        assert_eq!(Format.score(&o), Some(1.0));
        o.truncated = true;
        assert_eq!(Format.score(&o), Some(0.0));
        o.truncated = false;
        o.format_ok = false;
        assert_eq!(Format.score(&o), Some(0.0));
    }
}
