//! What `t1-train data DIR` prints: counts per split and length percentiles (whitespace words).

use std::fmt;

use super::Dataset;

/// Nearest-rank percentiles of a length distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthStats {
    pub count: usize,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

impl LengthStats {
    pub fn of(mut lens: Vec<usize>) -> Self {
        lens.sort_unstable();
        let pick = |p: f64| -> usize {
            if lens.is_empty() {
                return 0;
            }
            // nearest-rank: the smallest value with at least p% of values ≤ it
            let rank = ((p / 100.0) * lens.len() as f64).ceil().max(1.0) as usize;
            lens[rank.min(lens.len()) - 1]
        };
        LengthStats {
            count: lens.len(),
            p50: pick(50.0),
            p90: pick(90.0),
            p99: pick(99.0),
            max: lens.last().copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for LengthStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={:<6} p50={:<5} p90={:<5} p99={:<5} max={}",
            self.count, self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Counts and lengths of a dataset.
#[derive(Debug, Clone)]
pub struct Summary {
    pub documents: usize,
    pub queries: usize,
    pub queries_with_reasoning: usize,
    pub queries_with_exclusions: usize,
    /// (split, judged queries, judgments, relevant judgments)
    pub splits: Vec<(String, usize, usize, usize)>,
    /// Queries that no split judges (kept, but unused by evaluation).
    pub unjudged_queries: usize,
    pub doc_words: LengthStats,
    pub query_words: LengthStats,
    pub reasoning_words: LengthStats,
    pub hard_negative_queries: Option<usize>,
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

impl Summary {
    pub fn of(ds: &Dataset) -> Self {
        let splits = ds
            .qrels
            .iter()
            .map(|(name, q)| {
                let judgments: usize = q.values().map(|m| m.len()).sum();
                let relevant: usize = q
                    .values()
                    .map(|m| m.values().filter(|&&r| r > 0).count())
                    .sum();
                (name.clone(), q.len(), judgments, relevant)
            })
            .collect();
        let unjudged_queries = ds
            .queries
            .iter()
            .filter(|q| !ds.qrels.values().any(|s| s.contains_key(&q.id)))
            .count();
        Summary {
            documents: ds.corpus.len(),
            queries: ds.queries.len(),
            queries_with_reasoning: ds.queries.iter().filter(|q| q.reasoning.is_some()).count(),
            queries_with_exclusions: ds
                .queries
                .iter()
                .filter(|q| !q.excluded_ids.is_empty())
                .count(),
            splits,
            unjudged_queries,
            doc_words: LengthStats::of(
                (0..ds.corpus.len())
                    .map(|i| words(&ds.corpus.full_text(i)))
                    .collect(),
            ),
            query_words: LengthStats::of(ds.queries.iter().map(|q| words(&q.text)).collect()),
            reasoning_words: LengthStats::of(
                ds.queries
                    .iter()
                    .filter_map(|q| q.reasoning.as_deref().map(words))
                    .collect(),
            ),
            hard_negative_queries: ds.hard_negatives.as_ref().map(|h| h.len()),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "documents: {}", self.documents)?;
        writeln!(
            f,
            "queries:   {} ({} with gold reasoning, {} with excluded_ids, {} judged in no split)",
            self.queries,
            self.queries_with_reasoning,
            self.queries_with_exclusions,
            self.unjudged_queries
        )?;
        writeln!(f, "splits:")?;
        for (name, q, j, r) in &self.splits {
            writeln!(
                f,
                "  {name:<8} {q:>6} queries {j:>7} judgments ({r} relevant, {:.2} relevant/query)",
                *r as f64 / (*q).max(1) as f64
            )?;
        }
        match self.hard_negative_queries {
            Some(n) => writeln!(f, "hard negatives: {n} queries")?,
            None => writeln!(f, "hard negatives: none (no hard_negatives.jsonl)")?,
        }
        writeln!(f, "lengths (whitespace words):")?;
        writeln!(f, "  documents  {}", self.doc_words)?;
        writeln!(f, "  queries    {}", self.query_words)?;
        write!(f, "  reasoning  {}", self.reasoning_words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = LengthStats::of((1..=10).collect());
        assert_eq!((s.p50, s.p90, s.p99, s.max), (5, 9, 10, 10));
        let e = LengthStats::of(vec![]);
        assert_eq!((e.count, e.max), (0, 0));
    }
}
