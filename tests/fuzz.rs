//! Property-based fuzzing (proptest) of every reader that takes user files: configs (and `--set`
//! overrides), the BEIR JSONL/TSV dataset files, curricula, and the safetensors readers (model
//! weights and the document index). Valid files are mutated byte by byte (flip, insert, delete,
//! truncate); the property is that the reader returns `Ok` or an `Err` — never panics.
//!
//! Bounded for CI: 256 cases per property unless `PROPTEST_CASES` says otherwise; no regression
//! files are written (a failure prints its minimal input).

mod support;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::Tensor;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};
use t1_train::config::Config;
use t1_train::data::Dataset;
use t1_train::index::{DocIndex, IndexMeta};
use t1_train::model::{Decoder, DecoderConfig, load_hf, save_hf};

type B = Flex;

fn pt_config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    PtConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..PtConfig::default()
    }
}

/// One edit at a relative position: 0 flip a bit, 1 insert a byte, 2 delete a byte, 3 truncate.
type Edit = (f64, u8, u8);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((0.0..1.0f64, 0u8..4, any::<u8>()), 1..6)
}

fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, op, byte) in edits {
        let i = ((b.len() as f64) * at) as usize;
        match op {
            0 if i < b.len() => b[i] ^= 1 << (byte % 8),
            1 => b.insert(i.min(b.len()), byte),
            2 if i < b.len() => {
                b.remove(i);
            }
            3 => b.truncate(i),
            _ => {}
        }
    }
    b
}

/// Edits concentrated in the first `head` bytes (where a safetensors header lives).
fn head_edits(head: f64) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((0.0..head, 0u8..4, any::<u8>()), 1..4)
}

// ---------------------------------------------------------------------------------- configs

fn shipped_configs() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["configs", "curricula"] {
        for e in std::fs::read_dir(support::root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(pt_config())]

    /// A mutated shipped config (written beside the original, so its relative paths still
    /// resolve) loads or fails with an error; so does a mutated curriculum.
    #[test]
    fn config_and_curriculum_readers_never_panic(which in 0usize..64, e in edits()) {
        let all = shipped_configs();
        let (orig, bytes) = &all[which % all.len()];
        let dir = tempfile::tempdir_in(orig.parent().unwrap()).unwrap();
        let p = dir.path().join("fuzzed.toml");
        std::fs::write(&p, mutate(bytes, &e)).unwrap();
        if orig.parent().unwrap().ends_with("curricula") {
            let _ = t1_train::train::curriculum::load(&p);
        } else {
            let _ = Config::load(&p, &[]);
        }
    }

    /// Arbitrary `--set key=value` overrides, with keys that exist and keys that do not.
    #[test]
    fn set_overrides_never_panic(
        key in prop::sample::select(vec![
            "train.steps", "train.lr", "train.batch_size", "stage3.rewards", "stage3.group_size",
            "stage3.temperature", "model.path", "data.dataset", "run", "stage3.rewards.0.k",
            "eval.k_values", "nope", "", ".", "train.", "a.b.c.d",
        ]),
        value in "\\PC{0,24}",
    ) {
        let p = support::root().join("configs/tiny-stage3.toml");
        let _ = Config::load(&p, &[format!("{key}={value}")]);
        let _ = Config::load(&p, &[value.clone()]);
    }
}

// ---------------------------------------------------------------------------------- datasets

const FILES: [&str; 5] = [
    "corpus.jsonl",
    "queries.jsonl",
    "qrels/train.tsv",
    "qrels/test.tsv",
    "hard_negatives.jsonl",
];

/// The shipped dataset cut to 30 queries (its first 27 and 3 test queries, so both splits keep
/// judgments), with the judgments and hard negatives of those queries only, so that every
/// reference stays valid.
fn small_dataset() -> Vec<(&'static str, Vec<u8>)> {
    let src = support::root().join("curricula/default/data");
    let read = |f: &str| std::fs::read_to_string(src.join(f)).unwrap();
    let test_ids: Vec<String> = read("qrels/test.tsv")
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next().map(str::to_owned))
        .collect();
    let all: Vec<String> = read("queries.jsonl").lines().map(str::to_owned).collect();
    let is_test = |l: &String| {
        test_ids
            .iter()
            .any(|t| l.contains(&format!("\"_id\":\"{t}\"")))
    };
    let mut queries: Vec<String> = all.iter().take(27).cloned().collect();
    queries.extend(all.iter().skip(27).filter(|l| is_test(l)).take(3).cloned());
    assert_eq!(queries.len(), 30);
    let ids: Vec<String> = queries
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let keep = |f: &str, field: usize| -> String {
        read(f)
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                (f.ends_with(".tsv") && *i == 0)
                    || if f.ends_with(".tsv") {
                        ids.iter()
                            .any(|q| l.split('\t').nth(field) == Some(q.as_str()))
                    } else {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        ids.iter()
                            .any(|q| v["query_id"].as_str() == Some(q.as_str()))
                    }
            })
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    };
    FILES
        .iter()
        .map(|&f| {
            let text = match f {
                "corpus.jsonl" => read(f),
                "queries.jsonl" => queries.iter().map(|l| format!("{l}\n")).collect(),
                _ => keep(f, 0),
            };
            (f, text.into_bytes())
        })
        .collect()
}

fn write_dataset(dir: &Path, files: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
}

#[test]
fn the_unmutated_small_dataset_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), &small_dataset());
    let ds = Dataset::load(dir.path()).unwrap();
    assert!(ds.corpus.len() > 100 && ds.queries.len() == 30);
    assert!(!ds.split("train").unwrap().is_empty() && ds.hard_negatives.is_some());
}

proptest! {
    #![proptest_config(pt_config())]

    /// One file of a valid dataset mutated: loads or fails naming the problem.
    #[test]
    fn dataset_readers_never_panic(which in 0usize..5, e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = small_dataset();
        files[which].1 = mutate(&files[which].1, &e);
        write_dataset(dir.path(), &files);
        if let Ok(ds) = Dataset::load(dir.path()) {
            // whatever loaded is usable
            let _ = ds.split("test").and_then(|_| ds.split_queries("test"));
        }
    }

    /// Arbitrary lines (JSON-ish or not) appended to a file.
    #[test]
    fn dataset_readers_never_panic_on_arbitrary_lines(
        which in 0usize..5,
        lines in prop::collection::vec(
            prop_oneof![
                "\\PC{0,40}",
                "\\{\"_id\": \"[a-z0-9]{0,3}\", \"(text|title|reasoning|excluded_ids)\": (\"\\PC{0,8}\"|[0-9]{1,3}|null|\\[\\]|\\{\\})\\}",
                "[a-z0-9]{0,3}\t[a-z0-9]{0,3}\t-?[0-9]{0,3}(\t[0-9])?",
            ],
            1..4,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = small_dataset();
        for l in lines {
            files[which].1.extend_from_slice(l.as_bytes());
            files[which].1.push(b'\n');
        }
        write_dataset(dir.path(), &files);
        let _ = Dataset::load(dir.path());
    }
}

// ------------------------------------------------------------------------------- safetensors

fn tiny_model_files() -> (Vec<u8>, Vec<u8>) {
    static FILES: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    FILES.get_or_init(make_tiny_model_files).clone()
}

fn make_tiny_model_files() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let model: Decoder<B> = DecoderConfig::tiny(300).init(&Default::default());
    save_hf(&model, dir.path()).unwrap();
    (
        std::fs::read(dir.path().join("config.json")).unwrap(),
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
    )
}

fn index_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let vectors =
        Tensor::<B, 2>::from_floats([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], &Default::default());
    let meta: IndexMeta = serde_json::from_value(serde_json::json!({
        "format": 1, "model": "m", "model_sha256": "x", "model_step": 3, "dataset": "d",
        "corpus_sha256": "y", "max_doc_tokens": 8, "max_query_tokens": 8,
        "max_reasoning_tokens": 8, "num_docs": 0, "dim": 0, "vectors_sha256": "",
        "written_by": "fuzz",
    }))
    .unwrap();
    let p = dir.path().join("i.safetensors");
    let ids = vec!["a".to_string(), "b".into(), "c".into()];
    DocIndex {
        vectors,
        truncated: 0,
    }
    .save(&p, &ids, meta)
    .unwrap();
    std::fs::read(&p).unwrap()
}

#[test]
fn the_unmutated_model_and_index_load() {
    let (config, weights) = tiny_model_files();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    load_hf::<B>(dir.path(), &Default::default()).unwrap();
    let p = dir.path().join("i.safetensors");
    std::fs::write(&p, index_file()).unwrap();
    let (_, meta, ids) = DocIndex::<B>::load(&p, &Default::default()).unwrap();
    assert_eq!((meta.num_docs, ids.len()), (3, 3));
}

proptest! {
    #![proptest_config(pt_config())]

    /// Model weights mutated anywhere, or in the header, or `config.json` mutated.
    #[test]
    fn model_readers_never_panic(
        target in 0u8..3,
        anywhere in edits(),
        header in head_edits(0.002),
    ) {
        let (config, weights) = tiny_model_files();
        let (config, weights) = match target {
            0 => (config, mutate(&weights, &anywhere)),
            1 => (config, mutate(&weights, &header)),
            _ => (mutate(&config, &anywhere), weights),
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
        let _ = load_hf::<B>(dir.path(), &Default::default());
    }

    /// A document index mutated anywhere (the file is small, so the header gets hit often).
    #[test]
    fn index_reader_never_panics(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.safetensors");
        std::fs::write(&p, mutate(&index_file(), &e)).unwrap();
        let _ = DocIndex::<B>::load(&p, &Default::default());
    }
}
