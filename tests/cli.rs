//! The `t1-train` binary: help, exit codes, config and data errors, and the eval run folder.

use std::path::{Path, PathBuf};

mod support;

use support::{root, stderr, t1};

#[test]
fn help_explains_every_subcommand() {
    let top = t1(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    let subs = [
        "stage1",
        "stage2",
        "stage3",
        "curriculum",
        "eval",
        "index",
        "search",
        "generate",
        "data",
        "config-reference",
    ];
    for s in subs {
        assert!(text.contains(s), "top-level help lacks {s}");
        let o = t1(&[s, "--help"]);
        assert!(o.status.success(), "{s} --help failed");
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(h.lines().count() >= 6, "{s} --help is too thin:\n{h}");
        assert!(h.contains("Usage: t1-train"), "{h}");
    }
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(t1(&["stage1"]).status.code(), Some(2)); // missing --config
    assert_eq!(t1(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn config_reference_prints_every_key_and_writes_between_markers() {
    let o = t1(&["config-reference"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    for key in [
        "`run.name`",
        "`train.grad_accum`",
        "`stage3.loss_type`",
        "`lora.base_dtype`",
    ] {
        assert!(table.contains(key), "no {key} in\n{table}");
    }
    let dir = tempfile::tempdir().unwrap();
    // a file without the markers is refused (exit 2, naming it) and left as it was
    let plain = dir.path().join("plain.md");
    std::fs::write(&plain, "# no markers\n").unwrap();
    let o = t1(&["config-reference", "--write", plain.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("plain.md"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "# no markers\n");
    // docs/configuration.md's markers: the text around them is kept, the table replaced
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let begin = doc
        .lines()
        .find(|l| l.starts_with("<!-- config-reference:begin"))
        .unwrap();
    let stale = dir.path().join("stale.md");
    std::fs::write(
        &stale,
        format!("intro\n{begin}\n| stale |\n<!-- config-reference:end -->\noutro\n"),
    )
    .unwrap();
    let o = t1(&["config-reference", "--write", stale.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = std::fs::read_to_string(&stale).unwrap();
    assert_eq!(
        new,
        format!("intro\n{begin}\n{table}<!-- config-reference:end -->\noutro\n")
    );
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let data = root().join("curricula/default/data");
    let p = dir.join("x.toml");
    std::fs::write(
        &p,
        format!(
            "[run]\nname = \"t\"\noutput_dir = \"runs\"\n\n[data]\ndataset = \"{}\"\n{body}",
            data.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn misspelled_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "\n[eval]\nquery_view = \"bare\"\nbm25_kl = 1.2\n",
    );
    let o = t1(&["eval", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:10:", cfg.display())), "{err}");
    assert!(err.contains("unknown field 'bm25_kl'"), "{err}");
    assert!(err.contains("expected one of"), "{err}");
    assert!(err.contains("[eval]"), "{err}");
}

#[test]
fn wrong_type_and_bad_values_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "\n[eval]\nbm25_b = \"high\"\n");
    let o = t1(&["eval", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains(":9:") && err.contains("bm25_b"), "{err}");
    let cfg = write_config(dir.path(), "\n[eval]\nbm25_b = 1.5\n");
    let o = t1(&["eval", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("eval.bm25_b"), "{}", stderr(&o));
    let o = t1(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "eval.bm25_b=0.5",
        "--set",
        "eval.nope=1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--set") && stderr(&o).contains("nope"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn corrupted_corpus_line_fails_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("curricula/default/data");
    let dst = dir.path().join("data");
    std::fs::create_dir_all(dst.join("qrels")).unwrap();
    for f in [
        "queries.jsonl",
        "hard_negatives.jsonl",
        "qrels/train.tsv",
        "qrels/dev.tsv",
        "qrels/test.tsv",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let corpus = std::fs::read_to_string(src.join("corpus.jsonl")).unwrap();
    let mut lines: Vec<String> = corpus.lines().map(String::from).collect();
    let half = lines[16].len() / 2;
    lines[16].truncate(half);
    std::fs::write(dst.join("corpus.jsonl"), lines.join("\n")).unwrap();
    let o = t1(&["data", dst.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("corpus.jsonl:17:"), "{err}");
}

#[test]
fn data_summary_of_the_default() {
    let o = t1(&["data", "curricula/default/data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "documents:",
        "train",
        "dev",
        "test",
        "p50=",
        "hard negatives:",
    ] {
        assert!(out.contains(want), "missing {want} in\n{out}");
    }
}

#[test]
fn eval_writes_run_folder_with_config_trec_run_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let o = t1(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "run.name=evaltest",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = dir.path().join("runs/evaltest");
    let resolved = std::fs::read_to_string(run.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("name = \"evaltest\""), "{resolved}");
    assert!(
        resolved.contains("bm25_k1 = 0.9"),
        "defaults are filled in: {resolved}"
    );
    let trec = std::fs::read_to_string(run.join("eval/test.run")).unwrap();
    assert_eq!(trec.lines().next().unwrap().split(' ').count(), 6);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/test.json")).unwrap())
            .unwrap();
    assert!(report["num_queries"].as_u64().unwrap() > 0);
    assert!(std::fs::read_dir(run.join("tensorboard")).unwrap().count() == 1);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("eval/test/ndcg@10"), "{metrics}");
}

#[test]
fn index_checks_its_config_first() {
    let dir = tempfile::tempdir().unwrap();
    // no [model] section: a config error (exit 2) naming it
    let cfg = write_config(dir.path(), "");
    let o = t1(&["index", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[model]"), "{}", stderr(&o));
    let bad = write_config(dir.path(), "\n[stage0]\n");
    assert_eq!(
        t1(&["index", "--config", bad.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn stages_without_a_usable_model_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    // no [model] section
    let cfg = write_config(dir.path(), "");
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[model]"), "{}", stderr(&o));
    // a model folder that does not exist (yet): named with the key
    let cfg = write_config(dir.path(), "\n[model]\npath = \"nowhere/best\"\n");
    let o = t1(&["stage2", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("model.path") && stderr(&o).contains("nowhere/best"),
        "{}",
        stderr(&o)
    );
    // path and preset together
    let cfg = write_config(
        dir.path(),
        "\n[model]\npath = \"x\"\npreset = \"tiny\"\ntokenizer = \"t.json\"\n",
    );
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("exactly one of"), "{}", stderr(&o));
}

#[test]
fn generate_without_a_model_folder_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-model");
    let o = t1(&[
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-model"), "{}", stderr(&o));
    let o = t1(&["generate", "--model", ".", "--prompt", "hi", "--top-p", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--top-p"), "{}", stderr(&o));
    for bad in ["0", "-1", "nan", "inf"] {
        let o = t1(&[
            "generate",
            "--model",
            ".",
            "--prompt",
            "hi",
            &format!("--repetition-penalty={bad}"),
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--repetition-penalty"),
            "{}",
            stderr(&o)
        );
    }
}

/// A config reads a dataset made by a fetch script (`dataset = "../assets/NAME"`, git-ignored)
/// that this checkout does not have.
fn fetched_data_missing(config_text: &str) -> bool {
    config_text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("dataset = \"../assets/")
            .and_then(|rest| rest.split('"').next())
            .is_some_and(|name| !root().join("assets").join(name).exists())
    })
}

#[test]
fn every_shipped_config_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            // data made by a fetch script (assets/, git-ignored) may be absent: then everything
            // else in the config is still checked, against the shipped dataset
            let text = std::fs::read_to_string(&p).unwrap();
            let fetched = fetched_data_missing(&text);
            let overrides = if fetched {
                vec![format!(
                    "data.dataset={:?}",
                    root().join("curricula/default/data").display().to_string()
                )]
            } else {
                vec![]
            };
            if let Err(e) = t1_train::config::Config::load(&p, &overrides) {
                panic!("{}: {e}", p.display());
            }
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} configs found");
}

#[test]
fn every_shipped_curriculum_resolves_every_stage() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("curricula")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let c = t1_train::train::curriculum::load(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // fetched data (assets/, git-ignored) may be absent: the shipped dataset stands in
        let fetched = c.stage.iter().any(|s| {
            fetched_data_missing(
                &std::fs::read_to_string(p.parent().unwrap().join(&s.config)).unwrap(),
            )
        });
        let extra = if fetched {
            vec![format!(
                "data.dataset={:?}",
                root().join("curricula/default/data").display().to_string()
            )]
        } else {
            vec![]
        };
        for i in 0..c.stage.len() {
            let cfg = t1_train::train::curriculum::stage_config(&c, i, None, &extra)
                .unwrap_or_else(|e| panic!("{} stage {i}: {e}", p.display()));
            // a stage's own `set` reaches its config
            for s in &c.stage[i].set {
                let (key, value) = s.split_once('=').unwrap();
                let resolved = cfg.to_toml().unwrap();
                let table: toml::Table = toml::from_str(&resolved).unwrap();
                let mut v = &toml::Value::Table(table);
                for part in key.split('.') {
                    v = &v[part];
                }
                let want: toml::Value =
                    toml::from_str::<toml::Table>(&format!("x = {value}")).unwrap()["x"].clone();
                assert_eq!(v, &want, "{} stage {i}: {key}", p.display());
            }
        }
        n += 1;
    }
    assert!(n >= 4, "only {n} curricula found");
}
