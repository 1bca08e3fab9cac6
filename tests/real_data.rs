//! Real-data tooling (issue 27). The Metamath converter (scripts/make_metamath_premises.py) on a
//! miniature of set.mm's layout: which proofs' references become gold, what the query and
//! document texts keep, and that t1-train loads what it writes. The `mixed` query view.

use std::process::Command;

use t1_train::data::Dataset;

mod support;

fn convert(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("python3")
        .arg(support::root().join("scripts/make_metamath_premises.py"))
        .arg("--mm")
        .arg(support::fixture_path("metamath/mini.mm"))
        .arg("--out")
        .arg(out.path())
        .args(args)
        .output()
        .expect("python3 runs");
    (o, out)
}

#[test]
fn metamath_proof_references_become_the_gold_and_the_folder_loads() {
    let (o, out) = convert(&["--start", "a1i", "--count", "10"]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let ds = Dataset::load(out.path()).expect("the converter's folder loads");

    // the corpus: the window (a1i, a1d, same) and what its proofs use (ax-1, ax-mp), in file
    // order; syntax (wi), hypotheses and the OLD duplicate are not documents
    assert_eq!(ds.corpus.ids, ["ax-1", "ax-mp", "a1i", "a1d", "same"]);
    let doc =
        |id: &str| ds.corpus.texts[ds.corpus.ids.iter().position(|d| d == id).unwrap()].clone();
    assert_eq!(
        doc("ax-mp"),
        "ph & ( ph -> ps ) => ps Rule of Modus Ponens. p. 40."
    );
    assert_eq!(
        doc("a1i"),
        "ph => ( ps -> ph ) Inference introducing an antecedent, by ax-1."
    );

    // both proving queries land in one neighbourhood (one section, < 25 queries): test
    let test = ds.split("test").unwrap();
    let gold = |q: &str| test[q].keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        test.len(),
        2,
        "`same` uses only its own hypothesis: no query"
    );
    // compressed proof: the parenthesised labels, less the syntax constructor wi
    assert_eq!(gold("q:a1i"), ["ax-1", "ax-mp"]);
    // normal proof: every label, less $f/$e hypotheses, each once
    assert_eq!(gold("q:a1d"), ["a1i", "ax-1", "ax-mp"]);

    let q = ds.queries.iter().find(|q| q.id == "q:a1i").unwrap();
    // the query loses the `~ ax-1` cross-reference (it names its own gold) and the credits
    assert_eq!(
        q.text,
        "ph => ( ps -> ph ) Inference introducing an antecedent, by."
    );
    assert_eq!(q.excluded_ids, ["a1i"]);
    let r = q.reasoning.as_deref().unwrap();
    assert!(
        r.starts_with("It follows from ax-1 (Axiom _Simp_.); ax-mp (Rule of Modus Ponens."),
        "{r}"
    );
}

#[test]
fn metamath_converter_refuses_an_unknown_start_label() {
    let (o, _out) = convert(&["--start", "nosuch"]);
    assert!(!o.status.success());
    let err = support::stderr(&o);
    assert!(
        err.contains("no |- assertion labelled 'nosuch' (--start)"),
        "{err}"
    );
}

/// `model.repetition_penalty` reaches the evaluation's greedy reasoning: the untrained tiny
/// model's reasoning (which repeats itself) changes, repeats fewer of its own tokens with the
/// penalty, and the bare view is untouched.
#[test]
fn the_repetition_penalty_reaches_the_greedy_reasoning_of_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(
        dir.path(),
        dir.path(),
        "rp",
        4,
        "[eval]\nretriever = \"dense\"\n",
    );
    let run = |name: &str, penalty: &str| {
        let o = support::t1(&[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("run.name=\"{name}\""),
            "--set",
            &format!("model.repetition_penalty={penalty}"),
            "--views",
            "bare,generated",
            "--latency-queries",
            "0",
        ]);
        assert!(o.status.success(), "{}", support::stderr(&o));
        let eval = dir.path().join(name).join("eval");
        let text = std::fs::read_to_string(eval.join("test-generated.reasoning.jsonl")).unwrap();
        let reasoning: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["reasoning"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let bare = std::fs::read_to_string(eval.join("test-bare.run")).unwrap();
        (reasoning, bare)
    };
    let (plain, bare_plain) = run("plain", "1.0");
    let (pen, bare_pen) = run("penalised", "3.0");
    assert_eq!(plain.len(), pen.len());
    assert_ne!(plain, pen, "the penalty changed no reasoning");
    assert_eq!(bare_plain, bare_pen, "the bare view does not generate");
    // the share of words a reasoning says more than once
    let repeats = |xs: &[String]| {
        let (mut rep, mut all) = (0usize, 0usize);
        for x in xs {
            let w: Vec<&str> = x.split_whitespace().collect();
            let distinct: std::collections::HashSet<&str> = w.iter().copied().collect();
            rep += w.len() - distinct.len();
            all += w.len();
        }
        rep as f64 / all.max(1) as f64
    };
    let (a, b) = (repeats(&plain), repeats(&pen));
    println!("repeated words: {a:.3} without the penalty, {b:.3} with it");
    assert!(b < a, "{a} → {b}");
}

/// `mixed` = unit bare vector + unit own-reasoning vector, so each document's cosine under it is
/// the sum of its two cosines divided by one per-query constant |b̂ + ĝ|: checked on the three
/// views' TREC runs (the whole 378-document corpus ranked, an untrained tiny model).
#[test]
fn mixed_view_scores_are_the_sum_of_the_bare_and_own_reasoning_scores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(
        dir.path(),
        dir.path(),
        "mixed",
        4,
        "[eval]\nretriever = \"dense\"\ndepth = 400\n",
    );
    let views = |latency: &str| {
        let o = support::t1(&[
            "eval",
            "--config",
            cfg.to_str().unwrap(),
            "--views",
            "bare,generated,mixed",
            "--latency-queries",
            latency,
        ]);
        assert!(o.status.success(), "{}", support::stderr(&o));
    };
    views("1");
    let read = |view: &str| {
        let mut run: std::collections::HashMap<(String, String), f64> = Default::default();
        let text = std::fs::read_to_string(dir.path().join(format!("mixed/eval/test-{view}.run")))
            .unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            run.insert((f[0].to_string(), f[2].to_string()), f[4].parse().unwrap());
        }
        run
    };
    let (bare, own, mixed) = (read("bare"), read("generated"), read("mixed"));
    assert!(mixed.len() > 1000, "{} (query, doc) pairs", mixed.len());
    let mut ratio: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    for ((q, d), m) in &mixed {
        let k = (q.clone(), d.clone());
        ratio.entry(q).or_default().push((bare[&k] + own[&k]) / m);
    }
    for (q, r) in ratio {
        let (lo, hi) = r
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        // |b̂ + ĝ| is at most 2; run scores are printed with limited precision
        assert!(hi <= 2.0 + 1e-3 && lo > 0.0, "{q}: {lo} .. {hi}");
        assert!(
            (hi - lo) / hi < 1e-3,
            "{q}: (bare + own) / mixed ranges {lo} .. {hi}"
        );
    }

    // untimed (`--latency-queries 0`): one pass per view, `mixed` from the bare and generated
    // vectors already computed — the same per-query results as the timed run's fresh encoding
    let report = |view: &str| -> serde_json::Value {
        let p = dir.path().join(format!("mixed/eval/test-{view}.json"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let timed = report("mixed");
    views("0");
    assert_eq!(report("mixed")["per_query"], timed["per_query"]);
    let views: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("mixed/eval/views.json")).unwrap(),
    )
    .unwrap();
    let md = std::fs::read_to_string(dir.path().join("mixed/eval/views.md")).unwrap();
    assert!(md.contains("Latency not measured"), "{md}");
    for r in views["rows"].as_array().unwrap() {
        assert!(r["ms_per_query_batch1"].is_null(), "untimed: {r}");
    }
    let reasoning =
        std::fs::read_to_string(dir.path().join("mixed/eval/test-generated.reasoning.jsonl"))
            .unwrap();
    assert_eq!(
        reasoning.lines().count(),
        timed["num_queries"].as_u64().unwrap() as usize
    );

    // a mixed view needs a model: BM25 refuses it, naming the key
    let o = support::t1(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "eval.retriever=\"bm25\"",
        "--set",
        "eval.query_view=\"mixed\"",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
    assert!(
        support::stderr(&o).contains("eval.query_view"),
        "{}",
        support::stderr(&o)
    );
}
