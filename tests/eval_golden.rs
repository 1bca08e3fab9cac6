//! trec_eval exactness: our metrics equal pytrec_eval's on a committed run with ties, graded
//! relevance, excluded ids and judged queries missing from the run.
//! Fixture and expected values: `python3 scripts/golden_eval.py` (pytrec-eval-terrier 0.5.11).

mod support;

use std::collections::HashMap;

use t1_train::data::{Corpus, load_qrels};
use t1_train::eval::{Run, evaluate, read_trec_run, write_trec_run};

fn fixture() -> (
    t1_train::data::Qrels,
    Run,
    HashMap<String, Vec<String>>,
    serde_json::Value,
) {
    let dir = support::fixture_path("eval");
    let ids: Vec<String> = (0..160).map(|i| format!("d{i:03}")).collect();
    let rows: Vec<(&str, &str, &str)> = ids.iter().map(|d| (d.as_str(), "", "x")).collect();
    let corpus = Corpus::from_rows(&rows);
    let queries: HashMap<String, usize> = (0..40).map(|i| (format!("q{i:02}"), i)).collect();
    let qrels = load_qrels(&dir.join("qrels.tsv"), &corpus, &queries).unwrap();
    let run = read_trec_run(&dir.join("run.trec")).unwrap();
    let excluded: HashMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("excluded.json")).unwrap()).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (qrels, run, excluded, expected)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

#[test]
fn metrics_equal_pytrec_eval_per_query_and_mean() {
    let (qrels, run, excluded, expected) = fixture();
    let report = evaluate(&qrels, &run, &excluded);
    assert_eq!(
        report.num_queries as u64,
        expected["num_queries"].as_u64().unwrap()
    );
    for (qid, m) in &report.per_query {
        let e = &expected["per_query"][qid];
        for (key, got) in [
            ("ndcg_at_10", m.ndcg_at_10),
            ("recall_at_10", m.recall_at_10),
            ("recall_at_100", m.recall_at_100),
            ("mrr_at_10", m.mrr_at_10),
        ] {
            let want = e[key].as_f64().unwrap();
            assert!(
                close(got, want),
                "{qid} {key}: ours {got}, pytrec_eval {want}"
            );
        }
    }
    let mean = &expected["mean"];
    assert!(close(
        report.mean.ndcg_at_10,
        mean["ndcg_at_10"].as_f64().unwrap()
    ));
    assert!(close(
        report.mean.recall_at_100,
        mean["recall_at_100"].as_f64().unwrap()
    ));
    assert!(close(
        report.mean.mrr_at_10,
        mean["mrr_at_10"].as_f64().unwrap()
    ));
}

#[test]
fn fixture_really_exercises_ties_and_exclusions() {
    // If ties or exclusions did not matter, the test above could pass with wrong semantics.
    let (qrels, run, excluded, expected) = fixture();
    let no_exclusions = evaluate(&qrels, &run, &HashMap::new());
    assert_ne!(
        no_exclusions.mean.ndcg_at_10,
        expected["mean"]["ndcg_at_10"].as_f64().unwrap()
    );
    // Break ties by ascending doc id instead: nudge scores so "a" < "b" ranks "a" first.
    let mut wrong = Run::new();
    for (q, list) in &run {
        let mut l = list.clone();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        let n = l.len() as f64;
        wrong.insert(
            q.clone(),
            l.into_iter()
                .enumerate()
                .map(|(i, (d, s))| (d, s + (n - i as f64) * 1e-9))
                .collect(),
        );
    }
    let r = evaluate(&qrels, &wrong, &excluded);
    assert_ne!(
        r.mean.ndcg_at_10,
        expected["mean"]["ndcg_at_10"].as_f64().unwrap()
    );
}

#[test]
fn run_file_round_trips_and_keeps_trec_order() {
    let (qrels, run, excluded, _) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.run");
    write_trec_run(&p, &run, "t", 1000).unwrap();
    let back = read_trec_run(&p).unwrap();
    assert_eq!(
        evaluate(&qrels, &back, &excluded).mean,
        evaluate(&qrels, &run, &excluded).mean
    );
    // ranks written are 1..n in score-desc / docid-desc order
    let text = std::fs::read_to_string(&p).unwrap();
    let q00: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|c| c[0] == "q00")
        .collect();
    for w in q00.windows(2) {
        let (s0, s1): (f64, f64) = (w[0][4].parse().unwrap(), w[1][4].parse().unwrap());
        assert!(s0 > s1 || (s0 == s1 && w[0][2] > w[1][2]), "{w:?}");
        assert_eq!(
            w[1][3].parse::<usize>().unwrap(),
            w[0][3].parse::<usize>().unwrap() + 1
        );
    }
}
