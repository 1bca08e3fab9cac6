//! `beats_bare` (metric, k, margin): 1 when the rollout's reasoning ranks the gold documents
//! better than the same model's bare query does at this step — `metric(rollout) >
//! metric(bare) + margin` — else 0. Abstains where the metric does (no gold documents).
//!
//! The point of T1's reasoning is to retrieve better than the bare query; the plain rank rewards
//! pay a rollout for a good rank even where the bare query already had it. The *difference*
//! `metric(rollout) − metric(bare)` would not change that: it shifts every rollout of a query by
//! the same amount, which the group-relative advantage (rewards minus the group's mean)
//! removes. This reward is the threshold form, which the baseline does not cancel: within a
//! group, the rollouts that beat the bare query gain over those that do not, and a query whose
//! bare vector is already at rank 1 pays nothing for matching it. Combine it with a rank reward
//! (e.g. `ndcg` weight 1 + `beats_bare` weight 0.5) so that queries where no rollout beats the
//! bare one still learn.

use crate::types::{Reward, RewardError, RolloutOutcome};

pub struct BeatsBare {
    /// The metric both rankings are judged by (a built-in rank reward).
    pub metric: Box<dyn Reward>,
    pub margin: f32,
}

impl Reward for BeatsBare {
    fn name(&self) -> &str {
        "beats_bare"
    }

    /// Infallible view: without the bare ranks it abstains; the trainer calls [`Self::try_score`].
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        self.try_score(o).ok().flatten()
    }

    fn try_score(&self, o: &RolloutOutcome) -> Result<Option<f32>, RewardError> {
        let bare = o.bare().ok_or_else(|| {
            RewardError(
                "beats_bare needs the bare query's gold ranks (RolloutOutcome::bare_gold), \
                 which the caller did not compute"
                    .into(),
            )
        })?;
        let (Some(own), Some(base)) = (self.metric.score(o), self.metric.score(&bare)) else {
            return Ok(None);
        };
        Ok(Some(if own > base + self.margin { 1.0 } else { 0.0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{ndcg::Ndcg, reciprocal_rank::ReciprocalRank, test_outcome as outcome};

    fn with_bare(own: &[(usize, i32)], bare: &[(usize, i32)]) -> RolloutOutcome {
        let b = outcome(bare).gold;
        RolloutOutcome {
            bare_gold: Some(b),
            ..outcome(own)
        }
    }

    #[test]
    fn pays_only_for_beating_the_bare_query() {
        let r = BeatsBare {
            metric: Box::new(ReciprocalRank),
            margin: 0.0,
        };
        assert_eq!(r.score(&with_bare(&[(2, 1)], &[(5, 1)])), Some(1.0));
        assert_eq!(r.score(&with_bare(&[(5, 1)], &[(5, 1)])), Some(0.0)); // a tie is not a win
        assert_eq!(r.score(&with_bare(&[(6, 1)], &[(5, 1)])), Some(0.0));
        // rank 1 for both: nothing to gain
        assert_eq!(r.score(&with_bare(&[(1, 1)], &[(1, 1)])), Some(0.0));
        assert_eq!(r.score(&with_bare(&[], &[])), None);
    }

    #[test]
    fn margin_and_metric_cutoff() {
        // nDCG@10: rank 2 (0.631) vs rank 3 (0.5) is a gain of 0.131
        let ndcg = |margin| BeatsBare {
            metric: Box::new(Ndcg { k: 10 }),
            margin,
        };
        assert_eq!(ndcg(0.1).score(&with_bare(&[(2, 1)], &[(3, 1)])), Some(1.0));
        assert_eq!(ndcg(0.2).score(&with_bare(&[(2, 1)], &[(3, 1)])), Some(0.0));
        // both beyond the cut-off: 0 = 0, no win however much the rank improved
        assert_eq!(
            ndcg(0.0).score(&with_bare(&[(11, 1)], &[(90, 1)])),
            Some(0.0)
        );
    }

    #[test]
    fn without_the_bare_ranks_it_is_an_error() {
        let r = BeatsBare {
            metric: Box::new(ReciprocalRank),
            margin: 0.0,
        };
        let e = r.try_score(&outcome(&[(1, 1)])).unwrap_err();
        assert!(e.0.contains("bare_gold"), "{e}");
    }
}
