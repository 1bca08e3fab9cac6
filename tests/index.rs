//! `t1-train index` and `t1-train search`: the saved index ranks exactly as the in-memory one,
//! knows the model and corpus it came from, refuses another model's weights, and a corrupted or
//! truncated file is an error, never loaded.

mod support;

use std::path::Path;

use burn::backend::Flex;
use support::{config, t1};
use t1_train::index::DocIndex;

/// A tiny preset model (seeded) saved as an HF folder.
fn save_model(dir: &Path, seed: u64) {
    let cfg_path = config(dir, &dir.join("runs"), "m", 4, "");
    let cfg = t1_train::config::Config::load(&cfg_path, &[format!("run.seed={seed}")]).unwrap();
    let (model, tok) =
        t1_train::model::load::load_backbone::<Flex>(&cfg, &Default::default()).unwrap();
    let out = dir.join("model");
    t1_train::model::save_hf(&model, &out).unwrap();
    tok.save(&out.join("tokenizer.json")).unwrap();
}

#[test]
fn index_search_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    save_model(&a, 1);
    save_model(&b, 2);
    let cfg = config(dir.path(), &dir.path().join("runs"), "idx", 4, "");
    // the config names model a
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            "preset = \"tiny\"\n",
            &format!("path = \"{}\"\n", a.join("model").display()),
        )
        .lines()
        .filter(|l| !l.starts_with("tokenizer = "))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text).unwrap();
    let o = t1(&["index", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = dir.path().join("runs/idx/index/index.safetensors");
    assert!(file.is_file());

    // the saved vectors equal a fresh in-memory build, and the header knows its sources
    let device = Default::default();
    let (loaded, meta, ids) = DocIndex::<Flex>::load(&file, &device).unwrap();
    let c = t1_train::config::Config::load(&cfg, &[]).unwrap();
    let ds = t1_train::data::Dataset::load(&c.raw.data.dataset).unwrap();
    let (model, tok) = t1_train::model::load::load_backbone::<Flex>(&c, &device).unwrap();
    let fresh = DocIndex::build(&model, &tok, &ds.corpus, 48, 64, |_| {}).unwrap();
    let diff = (loaded.vectors.clone() - fresh.vectors)
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0);
    assert_eq!(ids, ds.corpus.ids);
    assert_eq!(meta.num_docs, ds.corpus.len());
    assert_eq!(meta.corpus_sha256, t1_train::index::corpus_hash(&ds.corpus));
    assert_eq!(
        meta.model_sha256,
        t1_train::index::model_hash(&a.join("model")).unwrap()
    );

    // search with the model it was built from: k ranked hits, scores descending
    let q = &ds.queries[0].text;
    let o = t1(&[
        "search",
        "--model",
        a.join("model").to_str().unwrap(),
        "--index",
        file.to_str().unwrap(),
        "--query",
        q,
        "-k",
        "3",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ranked: Vec<f32> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ranked.len(), 3, "{out}");
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{out}");

    // another model's weights: refused, naming the file and what to do
    let o = t1(&[
        "search",
        "--model",
        b.join("model").to_str().unwrap(),
        "--index",
        file.to_str().unwrap(),
        "--query",
        q,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("index.safetensors")
            && err.contains("another model")
            && err.contains("t1-train index"),
        "{err}"
    );

    // one flipped byte in the vectors: the checksum catches it
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes).unwrap();
    let e = DocIndex::<Flex>::load(&bad, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("checksum"),
        "{e}"
    );
    // truncated
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&bad, &whole[..whole.len() / 2]).unwrap();
    let e = DocIndex::<Flex>::load(&bad, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("not a valid t1-train index"),
        "{e}"
    );

    // stage 3 from a saved index of another model is refused at start
    let s3 = dir.path().join("s3.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &a.join("model").display().to_string(),
            &b.join("model").display().to_string(),
        )
        .replace("name = \"idx\"", "name = \"s3\"");
    std::fs::write(
        &s3,
        format!("{text}\n[stage3]\nindex = \"{}\"\n", file.display()),
    )
    .unwrap();
    let o = t1(&["stage3", "--config", s3.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("another model"), "{err}");
}
