//! The built-in rewards, one per file. Each is a pure function of a [`RolloutOutcome`].
//!
//! [`RolloutOutcome`]: crate::RolloutOutcome

pub mod beats_bare;
pub mod format;
pub mod hit;
pub mod length_penalty;
pub mod ndcg;
pub mod rank_margin;
pub mod recall;
pub mod reciprocal_rank;

#[cfg(test)]
/// An outcome whose gold documents sit at the given (rank, grade); gold `gN` scores `1 - N/10`.
pub(crate) fn test_outcome(gold: &[(usize, i32)]) -> crate::RolloutOutcome {
    crate::RolloutOutcome {
        gold: gold
            .iter()
            .map(|&(rank, g)| {
                (
                    crate::ScoredDoc {
                        id: format!("g{rank}"),
                        score: 1.0 - rank as f32 / 10.0,
                        rank,
                    },
                    g,
                )
            })
            .collect(),
        top_k: vec![],
        num_docs: 100,
        text: "reasoning".into(),
        num_tokens: 12,
        truncated: false,
        format_ok: true,
        bare_gold: None,
    }
}
