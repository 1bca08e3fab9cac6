//! The shipped default dataset is exactly what the committed generator produces, loads cleanly,
//! and has the properties it promises (composition held out, little query/answer overlap).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use t1_train::data::Dataset;
use t1_train::data::datagen::{DEFAULT_SEED, DEFAULT_VOCAB, WorldSize, generate, train_tokenizer};

fn shipped() -> PathBuf {
    support::root().join("curricula/default")
}

#[test]
fn committed_files_equal_the_generator_output() {
    let g = generate(DEFAULT_SEED, &WorldSize::default());
    let read = |p: &str| std::fs::read_to_string(shipped().join("data").join(p)).unwrap();
    assert!(
        read("corpus.jsonl") == g.corpus_jsonl,
        "corpus.jsonl differs: run `cargo run --bin make-default-data`"
    );
    assert!(
        read("queries.jsonl") == g.queries_jsonl,
        "queries.jsonl differs"
    );
    assert!(
        read("hard_negatives.jsonl") == g.hard_negatives_jsonl,
        "hard_negatives.jsonl differs"
    );
    for (split, tsv) in &g.qrels {
        assert!(
            &read(&format!("qrels/{split}.tsv")) == tsv,
            "qrels/{split}.tsv differs"
        );
    }
    let tok = train_tokenizer(&g.texts(), DEFAULT_VOCAB).unwrap();
    let shipped_tok = std::fs::read_to_string(shipped().join("tokenizer.json")).unwrap();
    assert!(
        tok == shipped_tok,
        "tokenizer.json differs from a fresh training run"
    );
}

#[test]
fn dev_and_test_chains_are_compositions_never_seen_whole_in_training() {
    let ds = Dataset::load(&shipped().join("data")).unwrap();
    let train: BTreeSet<&str> = ds
        .split("train")
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let reasoning = |id: &str| ds.query(id).unwrap().reasoning.clone().unwrap();
    let sentences = |r: &str| -> Vec<String> {
        r.split(". ")
            .map(|s| s.trim_end_matches('.').to_string())
            .collect()
    };
    let train_facts: BTreeSet<String> = train
        .iter()
        .flat_map(|q| sentences(&reasoning(q)))
        .collect();
    let train_texts: BTreeSet<String> = train.iter().map(|q| reasoning(q)).collect();
    for split in ["dev", "test"] {
        let qs = ds.split(split).unwrap();
        assert!(qs.len() >= 40, "{split} has {} queries", qs.len());
        for q in qs.keys() {
            assert!(!train.contains(q.as_str()));
            let r = reasoning(q);
            assert!(
                !train_texts.contains(&r),
                "{q}'s whole chain appears in training"
            );
            // every fact of the chain (all but the closing "So the answer is …") is taught in training
            let facts = sentences(&r);
            for f in &facts[..facts.len() - 1] {
                assert!(
                    train_facts.contains(f),
                    "{q}: fact '{f}' never stated in training"
                );
            }
        }
    }
}

#[test]
fn answers_share_few_words_with_queries() {
    let ds = Dataset::load(&shipped().join("data")).unwrap();
    let words = |s: &str| -> BTreeSet<String> {
        t1_train::index::bm25::terms(s)
            .filter(|w| w.len() > 3)
            .collect()
    };
    let mut overlaps: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for split in ["dev", "test"] {
        for (qid, judged) in ds.split(split).unwrap() {
            let q = words(&ds.query(qid).unwrap().text);
            for d in judged.keys() {
                let doc = words(&ds.corpus.full_text(ds.corpus.position(d).unwrap()));
                overlaps
                    .entry(split)
                    .or_default()
                    .push(q.intersection(&doc).count());
            }
        }
    }
    for (split, o) in overlaps {
        let zero = o.iter().filter(|&&n| n == 0).count();
        assert!(
            zero * 10 >= o.len() * 9,
            "{split}: only {zero}/{} answers share no content word with the query",
            o.len()
        );
    }
}
