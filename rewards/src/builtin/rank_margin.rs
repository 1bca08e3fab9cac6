//! `rank_margin`: best gold score minus the best non-gold score in the top k (cosine units, in
//! [-2, 2]); positive when a gold document leads. A dense signal even when ranks tie. Abstains
//! without gold documents, or when the top k holds no non-gold document to compare with.

use crate::types::{Reward, RolloutOutcome};

pub struct RankMargin;

impl Reward for RankMargin {
    fn name(&self) -> &str {
        "rank_margin"
    }
    fn score(&self, o: &RolloutOutcome) -> Option<f32> {
        let best_gold = o.gold.iter().map(|(d, _)| d.score).reduce(f32::max)?;
        let gold_ids: Vec<&str> = o.gold.iter().map(|(d, _)| d.id.as_str()).collect();
        let best_other = o
            .top_k
            .iter()
            .filter(|d| !gold_ids.contains(&d.id.as_str()))
            .map(|d| d.score)
            .reduce(f32::max)?;
        Some(best_gold - best_other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_outcome as outcome;
    use crate::types::ScoredDoc;

    #[test]
    fn gold_minus_best_other() {
        let mut o = outcome(&[(2, 1)]); // gold "g2" scored 0.8 (= 1 - rank/10)
        o.top_k = vec![
            ScoredDoc {
                id: "x".into(),
                score: 0.9,
                rank: 1,
            },
            ScoredDoc {
                id: "g2".into(),
                score: 0.8,
                rank: 2,
            },
        ];
        assert!((RankMargin.score(&o).unwrap() + 0.1).abs() < 1e-6);
        o.top_k.remove(0);
        assert_eq!(RankMargin.score(&o), None);
        assert_eq!(RankMargin.score(&outcome(&[])), None);
    }
}
