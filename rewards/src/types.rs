//! The data a reward sees and the trait every reward implements.

use serde::{Deserialize, Serialize};

/// A document in a rollout's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredDoc {
    pub id: String,
    /// Cosine similarity to the rollout's query vector.
    pub score: f32,
    /// 1-based rank in the whole (filtered) corpus.
    pub rank: usize,
}

/// Everything a reward may look at for one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutOutcome {
    /// The query's gold documents with their graded relevance (> 0), rank and score.
    pub gold: Vec<(ScoredDoc, i32)>,
    /// The top-k documents of the ranking, best first (excluded ids already removed).
    pub top_k: Vec<ScoredDoc>,
    /// Number of documents ranked (corpus size minus excluded ids).
    pub num_docs: usize,
    /// The generated reasoning text.
    pub text: String,
    /// Generated tokens (before the forced `</think><emb_token>`).
    pub num_tokens: usize,
    /// The rollout hit `max_new_tokens` without closing `</think>`.
    pub truncated: bool,
    /// The rollout followed the expected format (closed `</think>` itself, nothing after it).
    pub format_ok: bool,
    /// The same gold documents as ranked by the same model's *bare* query vector at this step
    /// (the query followed directly by `</think><emb_token>`, no reasoning), against the same
    /// index: what the rollout's reasoning is measured against (`beats_bare`). `None` where the
    /// trainer did not compute it (outside stage 3).
    #[serde(default)]
    pub bare_gold: Option<Vec<(ScoredDoc, i32)>>,
}

impl RolloutOutcome {
    /// Rank of the best-ranked gold document, if any gold document exists.
    pub fn best_gold_rank(&self) -> Option<usize> {
        self.gold.iter().map(|(d, _)| d.rank).min()
    }

    /// The outcome as the bare query vector saw it (its gold ranks in place of the rollout's;
    /// the rest unchanged), when the trainer computed them.
    pub fn bare(&self) -> Option<RolloutOutcome> {
        let gold = self.bare_gold.clone()?;
        Some(RolloutOutcome {
            gold,
            top_k: Vec::new(),
            bare_gold: None,
            ..self.clone()
        })
    }
}

/// A reward that could not be computed or configured (the message names what and where).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardError(pub String);

impl std::fmt::Display for RewardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RewardError {}

/// A reward function: pure, deterministic, cheap.
pub trait Reward: Send + Sync {
    /// Name used in logs (`stage3/reward/<name>_mean`).
    fn name(&self) -> &str;
    /// The reward of one rollout, or `None` to abstain.
    fn score(&self, outcome: &RolloutOutcome) -> Option<f32>;
    /// As [`Reward::score`], for rewards that can fail at run time (scripts): the trainer calls
    /// this and stops with the error.
    fn try_score(&self, outcome: &RolloutOutcome) -> Result<Option<f32>, RewardError> {
        Ok(self.score(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_gold_rank_is_the_minimum() {
        let d = |rank| ScoredDoc {
            id: format!("d{rank}"),
            score: 0.0,
            rank,
        };
        let o = RolloutOutcome {
            gold: vec![(d(7), 1), (d(3), 2)],
            top_k: vec![],
            num_docs: 10,
            text: String::new(),
            num_tokens: 0,
            truncated: false,
            format_ok: true,
            bare_gold: None,
        };
        assert_eq!(o.best_gold_rank(), Some(3));
        assert_eq!(RolloutOutcome { gold: vec![], ..o }.best_gold_rank(), None);
    }
}
