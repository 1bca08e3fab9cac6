//! Retrieval metrics with trec_eval / pytrec_eval semantics, and TREC run files.
//!
//! Exactly as `trec_eval -c -m ndcg_cut.10 -m recall.10,100 -m recip_rank` computes them:
//! - the run is re-sorted by score descending, ties broken by document id descending (byte order,
//!   trec_eval's `strcmp`); the rank column of a run file is ignored;
//! - BRIGHT-style `excluded_ids` are removed from a query's ranking before anything else;
//! - nDCG@k: gain = the judged relevance level (linear, as trec_eval), discount `log2(rank + 1)`,
//!   ideal = the query's judgments sorted by level; a query without relevant judgments scores 0;
//! - Recall@k: relevant (level ≥ 1) retrieved in the top k ÷ all relevant judged;
//! - MRR@10: trec_eval's `recip_rank` on the ranking cut at 10 (BEIR's MRR@10);
//! - every query judged in the split counts (`-c`): a query missing from the run scores 0.
//!
//! Pure functions over plain data; `tests/eval_golden.rs` checks them against pytrec_eval.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::data::Qrels;
use crate::error::{Error, Result};
pub use crate::index::trec_order;

pub mod dense;
pub mod paired;

/// Retrieved documents per query: (doc id, score), in any order.
pub type Run = BTreeMap<String, Vec<(String, f64)>>;

/// The headline metrics of one query (or their mean over queries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
}

impl Metrics {
    /// `(name, value)` pairs, in report order.
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("ndcg@10", self.ndcg_at_10),
            ("recall@10", self.recall_at_10),
            ("recall@100", self.recall_at_100),
            ("mrr@10", self.mrr_at_10),
        ]
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .named()
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// Per-query metrics and their mean over every judged query.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub num_queries: usize,
    pub mean: Metrics,
    pub per_query: BTreeMap<String, Metrics>,
}

/// Evaluates `run` against `qrels`; `excluded` maps a query id to documents removed from its ranking.
pub fn evaluate(qrels: &Qrels, run: &Run, excluded: &HashMap<String, Vec<String>>) -> Report {
    let mut per_query = BTreeMap::new();
    for (qid, judged) in qrels {
        let mut ranking: Vec<(String, f64)> = run.get(qid).cloned().unwrap_or_default();
        if let Some(ex) = excluded.get(qid) {
            ranking.retain(|(d, _)| !ex.contains(d));
        }
        trec_order(&mut ranking);
        per_query.insert(qid.clone(), query_metrics(judged, &ranking));
    }
    let n = per_query.len();
    let mut mean = Metrics::default();
    for m in per_query.values() {
        mean.ndcg_at_10 += m.ndcg_at_10;
        mean.recall_at_10 += m.recall_at_10;
        mean.recall_at_100 += m.recall_at_100;
        mean.mrr_at_10 += m.mrr_at_10;
    }
    if n > 0 {
        let d = n as f64;
        mean.ndcg_at_10 /= d;
        mean.recall_at_10 /= d;
        mean.recall_at_100 /= d;
        mean.mrr_at_10 /= d;
    }
    Report {
        num_queries: n,
        mean,
        per_query,
    }
}

/// Metrics of one query; `ranking` is already in trec order.
fn query_metrics(judged: &BTreeMap<String, i32>, ranking: &[(String, f64)]) -> Metrics {
    let rel = |d: &str| judged.get(d).copied().unwrap_or(0);
    let num_rel = judged.values().filter(|&&r| r >= 1).count();
    Metrics {
        ndcg_at_10: ndcg_at(judged, ranking, 10),
        recall_at_10: recall_at(ranking, &rel, num_rel, 10),
        recall_at_100: recall_at(ranking, &rel, num_rel, 100),
        mrr_at_10: ranking
            .iter()
            .take(10)
            .position(|(d, _)| rel(d) >= 1)
            .map(|i| 1.0 / (i + 1) as f64)
            .unwrap_or(0.0),
    }
}

fn ndcg_at(judged: &BTreeMap<String, i32>, ranking: &[(String, f64)], k: usize) -> f64 {
    let discount = |i: usize| (i as f64 + 2.0).log2();
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, (d, _))| judged.get(d).copied().unwrap_or(0).max(0) as f64 / discount(i))
        .sum();
    let mut gains: Vec<i32> = judged.values().copied().filter(|&r| r > 0).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    let ideal: f64 = gains
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / discount(i))
        .sum();
    if ideal > 0.0 { dcg / ideal } else { 0.0 }
}

fn recall_at(
    ranking: &[(String, f64)],
    rel: &impl Fn(&str) -> i32,
    num_rel: usize,
    k: usize,
) -> f64 {
    if num_rel == 0 {
        return 0.0;
    }
    let hits = ranking.iter().take(k).filter(|(d, _)| rel(d) >= 1).count();
    hits as f64 / num_rel as f64
}

/// Writes a TREC run file (`qid Q0 docid rank score tag`), each query's list in trec order and cut
/// at `depth`. Written atomically.
pub fn write_trec_run(path: &Path, run: &Run, tag: &str, depth: usize) -> Result<()> {
    let mut buf = BufWriter::new(Vec::new());
    for (qid, list) in run {
        let mut list = list.clone();
        trec_order(&mut list);
        for (rank, (doc, score)) in list.iter().take(depth).enumerate() {
            // 17 significant digits: trec_eval re-reads exactly the ties we ranked by.
            writeln!(buf, "{qid} Q0 {doc} {} {score:.17e} {tag}", rank + 1)
                .map_err(|e| Error::io(path, e))?;
        }
    }
    let bytes = buf
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    crate::fsio::write_atomic(path, &bytes)
}

/// Reads a TREC run file (6 whitespace-separated columns); the rank column is ignored, as trec_eval does.
pub fn read_trec_run(path: &Path) -> Result<Run> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut run: Run = BTreeMap::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line =
            line.map_err(|e| Error::data(path, n, None, format!("cannot read line: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() != 6 {
            return Err(Error::data(
                path,
                n,
                None,
                format!(
                    "expected 6 columns (qid Q0 docid rank score tag), found {}",
                    cols.len()
                ),
            ));
        }
        let score: f64 = cols[4].parse().map_err(|_| {
            Error::data(
                path,
                n,
                Some("score"),
                format!("not a number: '{}'", cols[4]),
            )
        })?;
        if let Some(prev) = seen.insert((cols[0].to_string(), cols[2].to_string()), n) {
            return Err(Error::data(
                path,
                n,
                Some("docid"),
                format!(
                    "document '{}' listed twice for query '{}' (first on line {prev})",
                    cols[2], cols[0]
                ),
            ));
        }
        run.entry(cols[0].to_string())
            .or_default()
            .push((cols[2].to_string(), score));
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(rows: &[(&str, &str, i32)]) -> Qrels {
        let mut q: Qrels = BTreeMap::new();
        for (a, b, r) in rows {
            q.entry(a.to_string())
                .or_default()
                .insert(b.to_string(), *r);
        }
        q
    }

    #[test]
    fn ties_break_by_doc_id_descending() {
        let mut l = vec![
            ("a".to_string(), 1.0),
            ("c".to_string(), 1.0),
            ("b".to_string(), 2.0),
        ];
        trec_order(&mut l);
        let ids: Vec<&str> = l.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
    }

    #[test]
    fn perfect_and_missing_queries() {
        let q = qrels(&[("q1", "d1", 1), ("q2", "d2", 2)]);
        let mut run = Run::new();
        run.insert("q1".into(), vec![("d1".into(), 3.0), ("d9".into(), 1.0)]);
        let r = evaluate(&q, &run, &HashMap::new());
        assert_eq!(r.num_queries, 2);
        assert_eq!(r.per_query["q1"].ndcg_at_10, 1.0);
        assert_eq!(r.per_query["q2"], Metrics::default());
        assert_eq!(r.mean.mrr_at_10, 0.5);
    }

    #[test]
    fn excluded_ids_are_removed_before_ranking() {
        let q = qrels(&[("q1", "d2", 1)]);
        let mut run = Run::new();
        run.insert("q1".into(), vec![("d1".into(), 3.0), ("d2".into(), 1.0)]);
        let mut ex = HashMap::new();
        assert_eq!(evaluate(&q, &run, &ex).mean.mrr_at_10, 0.5);
        ex.insert("q1".to_string(), vec!["d1".to_string()]);
        assert_eq!(evaluate(&q, &run, &ex).mean.mrr_at_10, 1.0);
    }
}
