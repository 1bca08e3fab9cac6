//! The defects found by trying to break t1-train (issue 24), one test each: a run folder in use is
//! refused; every file of a checkpoint or model folder must be listed in its SHA256SUMS; metrics
//! are durable every logged step and a resume logs each step once; an update that makes the
//! weights non-finite is never saved; a NaN reward stops the run naming it; resume does not
//! depend on how the config path is spelled or where the run folder moved; a refused run leaves
//! the folder alone; sizes that cannot fit are exit-2 errors, not aborts; CR-only, empty and BOM
//! data files; index ids covered by the checksum; signals outside training stop at once; FIFOs
//! are refused; the TREC run file is the one the metrics were computed on; stage 3's loss scale
//! does not depend on how the rollouts are split. Plus a sweep of every numeric config key at
//! NaN, ±inf, 0, −1 and huge values.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{config, scalar, t1};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 and `needles` in stderr.
fn assert_exit2(o: &Output, needles: &[&str]) {
    let e = err(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    for n in needles {
        assert!(e.contains(n), "missing {n:?} in: {e}");
    }
}

fn t1_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

/// A stage-1 run of `steps` steps (checkpoints every 4), returning (config, run folder).
fn stage1_run(dir: &Path, name: &str, steps: u64, sets: &[&str]) -> (PathBuf, PathBuf) {
    let cfg = config(&dir.join("cfg"), &dir.join("runs"), name, steps, "");
    let mut args = vec!["stage1", "--config", cfg.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let o = t1(&args);
    assert!(o.status.success(), "{}", err(&o));
    (cfg, dir.join("runs").join(name))
}

// 1 ─────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn a_run_folder_in_use_is_refused_naming_the_holder_and_a_stale_lock_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "dual",
        4,
        "",
    );
    let c = t1_train::config::Config::load(&cfg, &[]).unwrap();
    let run = dir.path().join("runs/dual");
    {
        // this test process holds the folder, as a running stage would
        let _held = t1_train::run::RunDir::lock(&c).unwrap();
        let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
        assert_exit2(
            &o,
            &[
                "in use by another t1-train process",
                &format!("pid {}", std::process::id()),
            ],
        );
        // refused before anything was written
        assert!(!run.join("metrics.jsonl").exists());
        assert!(!run.join("config.resolved.toml").exists());
        assert!(!run.join("checkpoints").exists());
    }
    // the lock file left behind (as by a killed process) holds no lock: the run goes ahead
    assert!(run.join(".lock").exists());
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    // …and so does a resume after a kill -9
    let (code, _) = support::signal_when(
        &[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--resume",
            "--set",
            "train.steps=400",
        ],
        &run.join("checkpoints/step-000008"),
        "-KILL",
    );
    assert_eq!(code, None, "killed by the signal");
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "--set",
        "train.steps=12",
    ]);
    assert!(o.status.success(), "{}", err(&o));
}

// 2 ─────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn an_emptied_or_partial_sha256sums_does_not_let_altered_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run) = stage1_run(dir.path(), "sums", 4, &["train.eval_every=4"]);
    let ck = run.join("checkpoints/step-000004");
    let resume = || {
        t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--resume",
            "--set",
            "train.steps=8",
            "--set",
            "train.eval_every=4",
        ])
    };
    let sums = std::fs::read_to_string(ck.join("SHA256SUMS")).unwrap();
    let weights = std::fs::read(ck.join("model.safetensors")).unwrap();
    // NaN bytes into the weights' data and an emptied SHA256SUMS
    std::fs::write(ck.join("model.safetensors"), with_nan(&weights)).unwrap();
    std::fs::write(ck.join("SHA256SUMS"), "").unwrap();
    let o = resume();
    assert!(!o.status.success());
    assert!(err(&o).contains("is not listed in"), "{}", err(&o));
    // the line of one file deleted (each file a checkpoint needs)
    std::fs::write(ck.join("model.safetensors"), &weights).unwrap();
    for file in [
        "model.safetensors",
        "optimizer.mpk",
        "state.json",
        "config.json",
    ] {
        let partial: String = sums
            .lines()
            .filter(|l| !l.ends_with(&format!("  {file}")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(partial, sums, "{file} is listed");
        std::fs::write(ck.join("SHA256SUMS"), partial).unwrap();
        let o = resume();
        assert!(!o.status.success(), "{file}");
        let e = err(&o);
        assert!(e.contains(&format!("{file} is not listed")), "{file}: {e}");
    }
    std::fs::write(ck.join("SHA256SUMS"), &sums).unwrap();
    // best/ with an emptied SHA256SUMS and NaN weights: generate refuses it
    let best = run.join("best");
    let best_sums = std::fs::read_to_string(best.join("SHA256SUMS")).unwrap();
    std::fs::write(best.join("SHA256SUMS"), "").unwrap();
    let generate = || {
        t1(&[
            "generate",
            "--model",
            best.to_str().unwrap(),
            "--prompt",
            "x",
        ])
    };
    let o = generate();
    assert!(
        !o.status.success() && err(&o).contains("not listed"),
        "{}",
        err(&o)
    );
    // without any SHA256SUMS (a folder from elsewhere), NaN weights are still refused
    std::fs::remove_file(best.join("SHA256SUMS")).unwrap();
    let w = std::fs::read(best.join("model.safetensors")).unwrap();
    std::fs::write(best.join("model.safetensors"), with_nan(&w)).unwrap();
    assert_exit2(&generate(), &["NaN or infinite", "model.safetensors"]);
    std::fs::write(best.join("model.safetensors"), &w).unwrap();
    std::fs::write(best.join("SHA256SUMS"), &best_sums).unwrap();
    assert!(generate().status.success());
    let o = resume();
    assert!(o.status.success(), "{}", err(&o));
}

/// A safetensors file's bytes with NaNs written over the start of `model.norm.weight`.
fn with_nan(bytes: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header["model.norm.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let mut out = bytes.to_vec();
    for b in &mut out[8 + n + start..8 + n + start + 16] {
        *b = 0xff;
    }
    out
}

// 3 ─────────────────────────────────────────────────────────────────────────────────────────────

/// `(step, tag)` of every scalar in a run's TensorBoard event files (read raw: TensorBoard's own
/// reader would hide a duplicate behind its purge of out-of-order steps).
fn event_scalars(logdir: &Path) -> Vec<(i64, String)> {
    use protobuf::Message;
    let mut out = Vec::new();
    for e in std::fs::read_dir(logdir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            if at + 16 + len > bytes.len() {
                panic!("torn record in {}", logdir.display());
            }
            let ev =
                tensorboard_proto::event::Event::parse_from_bytes(&bytes[at + 12..at + 12 + len])
                    .unwrap();
            for v in ev.get_summary().get_value() {
                out.push((ev.get_step(), v.get_tag().to_string()));
            }
            at += 16 + len;
        }
    }
    out
}

#[test]
fn metrics_are_flushed_each_logged_step_and_a_resume_logs_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "m",
        400,
        "",
    );
    let run = dir.path().join("runs/m");
    // killed at step ≥ 6, long before the first checkpoint at 400: the steps are on disk
    let jsonl = run.join("metrics.jsonl");
    let args = [
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.save_every=400",
        "--set",
        "logging.tensorboard=true",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while scalar_or_empty(&run, "stage1/loss").len() < 6 {
        assert!(t0.elapsed() < Duration::from_secs(300), "no steps logged");
        std::thread::sleep(Duration::from_millis(2));
    }
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), None);
    assert!(!run.join("checkpoints").exists(), "killed before step 400");
    assert!(scalar_or_empty(&run, "stage1/loss").len() >= 6);

    // now with checkpoints at 4 and 8; then the latest is deleted (as for a corrupt one) and
    // a torn line left at the end, and the run resumed from step 4
    std::fs::remove_dir_all(&run).unwrap();
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.steps=8",
        "--set",
        "logging.tensorboard=true",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    std::fs::remove_dir_all(run.join("checkpoints/step-000008")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&jsonl)
        .unwrap();
    use std::io::Write;
    f.write_all(br#"{"step": 9, "kind": "scal"#).unwrap();
    drop(f);
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "--set",
        "train.steps=10",
        "--set",
        "logging.tensorboard=true",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "a torn line survived"
    );
    let steps: Vec<u64> = scalar(&run, "stage1/loss").iter().map(|x| x.0).collect();
    assert_eq!(
        steps,
        (1..=10).collect::<Vec<_>>(),
        "each step once, in order"
    );
    let mut tb: Vec<i64> = event_scalars(&run.join("tensorboard"))
        .into_iter()
        .filter(|(_, t)| t == "stage1/loss")
        .map(|(s, _)| s)
        .collect();
    tb.sort();
    assert_eq!(
        tb,
        (1..=10).collect::<Vec<_>>(),
        "TensorBoard: each step once"
    );
}

fn scalar_or_empty(run: &Path, tag: &str) -> Vec<(u64, f64)> {
    if run.join("metrics.jsonl").exists() {
        scalar(run, tag)
    } else {
        Vec::new()
    }
}

// 5 ─────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn an_update_that_makes_the_weights_non_finite_is_never_saved_or_kept_as_best() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "nan",
        8,
        "",
    );
    let run = dir.path().join("runs/nan");
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.lr=1e300",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.eval_every=2",
    ]);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("step 1: the optimizer update") && e.contains("NaN or infinite"),
        "{e}"
    );
    assert!(!run.join("best").exists(), "no best/ from such weights");
    assert!(!run.join("checkpoints").exists(), "no checkpoint of them");
    // weight_decay = nan is refused at load
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.weight_decay=nan",
    ]);
    assert_exit2(&o, &["train.weight_decay"]);
}

#[test]
fn a_non_finite_dev_metric_never_becomes_best() {
    use burn::backend::{Autodiff, Flex};
    use t1_train::train::common::{Goal, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &dir.path().join("runs"), "b", 4, "");
    let cfg = t1_train::config::Config::load(&path, &[]).unwrap();
    let mut tr = Trainer::<Autodiff<Flex>>::start(
        &cfg,
        "stage1",
        false,
        Goal::Minimize,
        "loss",
        &Default::default(),
    )
    .unwrap();
    tr.record_eval(&[("loss", f64::NAN)]).unwrap();
    assert!(tr.state.best.is_none() && !tr.best_dir().exists());
    tr.record_eval(&[("loss", f64::INFINITY)]).unwrap();
    assert!(tr.state.best.is_none());
    tr.record_eval(&[("loss", 3.0)]).unwrap();
    assert_eq!(tr.state.best.as_ref().map(|b| b.value), Some(3.0));
    tr.record_eval(&[("loss", f64::NAN)]).unwrap();
    assert_eq!(tr.state.best.as_ref().map(|b| b.value), Some(3.0));
}

// 6, 14 (stage 3) ───────────────────────────────────────────────────────────────────────────────

fn stage3_cfg(dir: &Path, name: &str, reward: &str) -> PathBuf {
    let extra = format!(
        "[stage3]\ngroup_size = 2\nmask_truncated = false\n\n[[stage3.rewards]]\n{reward}\n"
    );
    config(&dir.join("cfg"), &dir.join("runs"), name, 2, &extra)
}

fn stage3(cfg: &Path, sets: &[&str]) -> Output {
    let mut args = vec![
        "stage3",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=8",
        "--set",
        "train.warmup_steps=0",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    t1(&args)
}

#[test]
fn a_nan_or_infinite_reward_stops_stage3_naming_the_script_and_rollout() {
    let dir = tempfile::tempdir().unwrap();
    for (body, shown) in [
        ("0.0 / 0.0", "NaN"),
        ("1.0 / 0.0", "inf"),
        ("1e300", "inf"), // beyond f32
    ] {
        let script = dir.path().join("bad.rhai");
        std::fs::write(&script, format!("fn reward(o) {{ {body} }}\n")).unwrap();
        let cfg = stage3_cfg(
            dir.path(),
            "nanr",
            &format!("name = \"script\"\npath = \"{}\"\n", script.display()),
        );
        let o = stage3(&cfg, &[]);
        assert_exit2(
            &o,
            &[
                "stage3.rewards[0]",
                "bad.rhai",
                &format!("returned {shown}"),
                "rollout ",
                "of query 'q-",
            ],
        );
        std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
    }
}

#[test]
fn stage3_without_a_relevant_training_document_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_default_data(dir.path());
    // every training judgment at grade 0
    let train = data.join("qrels/train.tsv");
    let text = std::fs::read_to_string(&train).unwrap();
    let zeroed: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                let (a, _) = l.rsplit_once('\t').unwrap();
                format!("{a}\t0\n")
            }
        })
        .collect();
    std::fs::write(&train, zeroed).unwrap();
    let cfg = stage3_cfg(dir.path(), "norel", "name = \"reciprocal_rank\"");
    let o = stage3(&cfg, &[&format!("data.dataset=\"{}\"", data.display())]);
    assert_exit2(
        &o,
        &["train.tsv", "no training query has a relevant document"],
    );
}

// 7, 8 ──────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn resume_does_not_depend_on_the_config_path_spelling_or_a_moved_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(&root.join("configs"), &root.join("runs"), "sp", 4, "");
    // the config's own paths relative, as the shipped configs have them
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        &format!("output_dir = \"{}\"", root.join("runs").display()),
        "output_dir = \"../runs\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let o = t1_in(root, &["stage1", "--config", "configs/sp.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let resume = |cwd: &Path, path: &str, steps: u64, extra: &[&str]| {
        let steps = format!("train.steps={steps}");
        let mut args = vec!["stage1", "--config", path, "--resume", "--set", &steps];
        for e in extra {
            args.extend(["--set", e]);
        }
        t1_in(cwd, &args)
    };
    // by an absolute path
    let o = resume(root, cfg.to_str().unwrap(), 8, &[]);
    assert!(o.status.success(), "absolute path: {}", err(&o));
    // from inside configs/, and through a `..` detour
    let o = resume(&root.join("configs"), "sp.toml", 12, &[]);
    assert!(o.status.success(), "from configs/: {}", err(&o));
    let o = resume(root, "configs/../configs/./sp.toml", 16, &[]);
    assert!(o.status.success(), "with ..: {}", err(&o));
    // the run folder moved elsewhere
    std::fs::create_dir_all(root.join("moved")).unwrap();
    std::fs::rename(root.join("runs/sp"), root.join("moved/sp")).unwrap();
    let out = format!("run.output_dir=\"{}\"", root.join("moved").display());
    let o = resume(root, "configs/sp.toml", 20, &[&out]);
    assert!(o.status.success(), "moved run folder: {}", err(&o));
    // a change of meaning is still refused, and the refusal leaves config.resolved.toml alone
    let resolved = root.join("moved/sp/config.resolved.toml");
    let before = std::fs::read(&resolved).unwrap();
    let o = resume(root, "configs/sp.toml", 24, &[&out, "train.lr=0.5"]);
    assert_exit2(&o, &["differs from the one"]);
    assert_eq!(
        std::fs::read(&resolved).unwrap(),
        before,
        "refused run rewrote it"
    );
    // a fresh run over existing checkpoints: exit 2, folder untouched
    let o = t1_in(
        root,
        &["stage1", "--config", "configs/sp.toml", "--set", &out],
    );
    assert_exit2(&o, &["already has checkpoints", "--resume"]);
    assert_eq!(std::fs::read(&resolved).unwrap(), before);
}

// 9 ─────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn sizes_that_cannot_fit_are_exit_2_errors_not_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run) = stage1_run(dir.path(), "sz", 4, &[]);
    let ck = run.join("checkpoints/step-000004");
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(ck.join(f), model.join(f)).unwrap();
    }
    let generate = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
        ];
        a.extend(extra);
        t1(&a)
    };
    assert!(generate(&[]).status.success(), "{}", err(&generate(&[])));
    assert_exit2(
        &generate(&["--max-new-tokens", "1000000000"]),
        &["--max-new-tokens", "max_position_embeddings"],
    );
    assert_exit2(&generate(&["-n", "0"]), &["--num-samples"]);
    assert_exit2(
        &generate(&["-n", "100000000"]),
        &["--num-samples", "memory"],
    );
    assert_exit2(&generate(&["--temperature=-1"]), &["--temperature"]);
    assert_exit2(&generate(&["--temperature=nan"]), &["--temperature"]);
    // config.json values burn would panic or abort on
    let original = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    for (field, value) in [
        ("rms_norm_eps", serde_json::json!(0.0)),
        ("num_hidden_layers", serde_json::json!(100_000_000u64)),
        ("hidden_size", serde_json::json!(0)),
        ("rope_theta", serde_json::json!(-1.0)),
    ] {
        let keep = v[field].clone();
        v[field] = value;
        std::fs::write(model.join("config.json"), v.to_string()).unwrap();
        assert_exit2(&generate(&[]), &["config.json", field]);
        v[field] = keep;
    }
    std::fs::write(model.join("config.json"), &original).unwrap();
    // training sizes
    let s1 = |set: &str| {
        t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "run.name=\"sz2\"",
            "--set",
            set,
        ])
    };
    assert_exit2(
        &s1("train.batch_size=1000000"),
        &["train.batch_size", "memory"],
    );
    assert_exit2(
        &s1("train.eval_batch_size=100000000"),
        &["train.eval_batch_size"],
    );
    assert_exit2(
        &s1("model.max_reasoning_tokens=1000000000"),
        &["model.max_reasoning_tokens", "max_position_embeddings"],
    );
    let cfg3 = stage3_cfg(dir.path(), "sz3", "name = \"reciprocal_rank\"");
    assert_exit2(
        &stage3(&cfg3, &["model.max_reasoning_tokens=1000000000"]),
        &["model.max_reasoning_tokens"],
    );
    assert_exit2(
        &stage3(&cfg3, &["stage3.group_size=100000000"]),
        &["stage3.group_size", "memory"],
    );
}

// 10 ────────────────────────────────────────────────────────────────────────────────────────────

fn copy_default_data(dir: &Path) -> PathBuf {
    let src = support::root().join("curricula/default/data");
    let dst = dir.join("data");
    std::fs::create_dir_all(dst.join("qrels")).unwrap();
    for f in ["corpus.jsonl", "queries.jsonl", "hard_negatives.jsonl"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    for f in ["train.tsv", "dev.tsv", "test.tsv"] {
        std::fs::copy(src.join("qrels").join(f), dst.join("qrels").join(f)).unwrap();
    }
    dst
}

#[test]
fn cr_only_and_empty_qrels_are_errors_and_a_bom_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_default_data(dir.path());
    let dev = data.join("qrels/dev.tsv");
    let original = std::fs::read_to_string(&dev).unwrap();
    let data_cmd = || t1(&["data", data.to_str().unwrap()]);
    assert!(data_cmd().status.success());
    std::fs::write(&dev, original.replace('\n', "\r")).unwrap();
    assert_exit2(&data_cmd(), &["dev.tsv:1", "CR-only line ends"]);
    std::fs::write(&dev, "").unwrap();
    assert_exit2(&data_cmd(), &["dev.tsv", "the file is empty"]);
    std::fs::write(&dev, "query-id\tcorpus-id\tscore\n").unwrap();
    assert_exit2(&data_cmd(), &["dev.tsv", "no judgments"]);
    // CRLF line ends and a BOM (as Windows tools write) read exactly as the plain files
    let plain =
        t1_train::data::Dataset::load(&support::root().join("curricula/default/data")).unwrap();
    std::fs::write(&dev, format!("\u{feff}{}", original.replace('\n', "\r\n"))).unwrap();
    let q = data.join("queries.jsonl");
    let qs = std::fs::read_to_string(&q).unwrap();
    std::fs::write(&q, format!("\u{feff}{qs}")).unwrap();
    let bom = t1_train::data::Dataset::load(&data).unwrap();
    assert_eq!(bom.split("dev").unwrap(), plain.split("dev").unwrap());
    assert_eq!(bom.queries.len(), plain.queries.len());
    assert_eq!(bom.queries[0].id, plain.queries[0].id);
    assert!(data_cmd().status.success());
    // a CR-only JSONL names the CR too
    std::fs::write(&q, qs.replace('\n', "\r")).unwrap();
    assert_exit2(&data_cmd(), &["queries.jsonl:1", "CR-only"]);
}

// 11, 12, 14 (index) ────────────────────────────────────────────────────────────────────────────

/// Rewrites the JSON header of a safetensors file with `edit` (same length required: the data
/// offsets stay valid).
fn edit_header(path: &Path, edit: impl Fn(&str) -> String) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let new = edit(header);
    assert_eq!(new.len(), header.len());
    assert_ne!(new, header);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn index_ids_corpus_changes_binary_input_and_corrupt_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_default_data(dir.path());
    let (cfg, run) = stage1_run(
        dir.path(),
        "ix",
        4,
        &[&format!("data.dataset=\"{}\"", data.display())],
    );
    let model = run.join("checkpoints/step-000004");
    let index = dir.path().join("index.safetensors");
    // the index of the trained model (model.path instead of the preset)
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .replace(
            "preset = \"tiny\"",
            &format!("path = \"{}\"", model.display()),
        )
        .lines()
        .filter(|l| !l.starts_with("tokenizer ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg2 = dir.path().join("cfg/ix-model.toml");
    std::fs::write(&cfg2, text).unwrap();
    let o = t1(&[
        "index",
        "--config",
        cfg2.to_str().unwrap(),
        "--set",
        &format!("data.dataset=\"{}\"", data.display()),
        "--out",
        index.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let search = |stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
            .args([
                "search",
                "--model",
                model.to_str().unwrap(),
                "--index",
                index.to_str().unwrap(),
                "-k",
                "2",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = search(b"Where is Bryndramoor?\nWho made the loom?\n");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("query: ")
            .count(),
        2
    );
    // a binary line on standard input is an error naming it, not the end of the input
    let o = search(b"Where is Bryndramoor?\n\xff\xfe\x00\nWho made the loom?\n");
    assert_exit2(&o, &["<standard input>:2"]);
    // two document ids swapped in the header: the checksum covers them
    let saved = std::fs::read(&index).unwrap();
    let corpus = t1_train::data::load_corpus(&data.join("corpus.jsonl")).unwrap();
    // two ids of the same length keep the header's size (the data offsets stay valid)
    let (a, b) = corpus
        .ids
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            corpus.ids[i + 1..]
                .iter()
                .find(|b| b.len() == a.len())
                .map(|b| (a, b))
        })
        .unwrap();
    edit_header(&index, |h| {
        h.replacen(&format!("\\\"{a}\\\""), "\u{1}", 1)
            .replacen(&format!("\\\"{b}\\\""), &format!("\\\"{a}\\\""), 1)
            .replacen('\u{1}', &format!("\\\"{b}\\\""), 1)
    });
    assert_exit2(&search(b"x\n"), &["index.safetensors", "checksum"]);
    // stage 3 refuses it too
    let cfg3 = stage3_cfg(dir.path(), "ix3", "name = \"reciprocal_rank\"");
    let o = stage3(&cfg3, &[&format!("stage3.index=\"{}\"", index.display())]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    // a truncated index file: exit 2
    std::fs::write(&index, &saved[..saved.len() / 2]).unwrap();
    assert_exit2(
        &search(b"x\n"),
        &["index.safetensors", "not a valid t1-train index"],
    );
    std::fs::write(&index, &saved).unwrap();
    assert!(search(b"x\n").status.success());
    // the corpus edited while a qrels line broke alongside: refused, not silently used
    let c = std::fs::read_to_string(data.join("corpus.jsonl")).unwrap();
    let first = c.lines().next().unwrap();
    let edited = first.replacen("\"text\":\"", "\"text\":\"Edited. ", 1);
    assert_ne!(edited, first);
    std::fs::write(data.join("corpus.jsonl"), c.replacen(first, &edited, 1)).unwrap();
    let dev = data.join("qrels/dev.tsv");
    let d = std::fs::read_to_string(&dev).unwrap();
    std::fs::write(&dev, format!("{d}no-such-query\tno-such-doc\t1\n")).unwrap();
    assert_exit2(&search(b"x\n"), &["built from another corpus"]);
}

/// Whether process `pid` has a handler installed for signal `sig` (`SigCgt` in /proc).
fn catches(pid: u32, sig: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

#[test]
fn sigterm_stops_index_at_once_and_fifos_are_refused() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("SKIPPED: needs /proc to see when the handler is installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // a corpus big enough that encoding it takes seconds
    let data = dir.path().join("big");
    std::fs::create_dir_all(data.join("qrels")).unwrap();
    let mut corpus = String::new();
    for i in 0..20_000 {
        corpus.push_str(&format!(
            "{{\"_id\":\"d{i}\",\"title\":\"Hall {i}\",\"text\":\"The guild of number {i} keeps its hall in the town of Bryndramoor, by the river.\"}}\n"
        ));
    }
    std::fs::write(data.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(
        data.join("queries.jsonl"),
        "{\"_id\":\"q1\",\"text\":\"hall\"}\n",
    )
    .unwrap();
    std::fs::write(
        data.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    )
    .unwrap();
    let cfg = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "sig",
        4,
        "",
    );
    let out = dir.path().join("index.safetensors");
    let child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args([
            "index",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("data.dataset=\"{}\"", data.display()),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !catches(child.id(), 15) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no handler installed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let signalled = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", err(&o));
    assert!(err(&o).contains("stopped"), "{}", err(&o));
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(!out.exists(), "nothing written");

    // a model folder whose weights are a FIFO: refused at once instead of blocking
    let (_, run) = stage1_run(dir.path(), "fifo", 4, &[]);
    let model = dir.path().join("fifo-model");
    std::fs::create_dir_all(&model).unwrap();
    let ck = run.join("checkpoints/step-000004");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(ck.join(f), model.join(f)).unwrap();
    }
    let made = Command::new("mkfifo")
        .arg(model.join("model.safetensors"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("generate blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut e = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    assert_eq!(status.code(), Some(2), "{e}");
    assert!(e.contains("not a regular file"), "{e}");
}

// 13: a sweep of every numeric config key ───────────────────────────────────────────────────────

/// Every numeric leaf of a TOML table as `(dotted key, is_float)`.
fn numeric_keys(t: &toml::Table, prefix: &str, out: &mut Vec<(String, bool)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Integer(_) => out.push((key, false)),
            toml::Value::Float(_) => out.push((key, true)),
            toml::Value::Table(t) => numeric_keys(t, &key, out),
            _ => {}
        }
    }
}

#[test]
fn every_numeric_config_key_at_nan_inf_zero_negative_and_huge_is_handled() {
    use burn::backend::{Autodiff, Flex};
    use t1_train::train::common::{Goal, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let extra = "[stage3]\ngroup_size = 2\naux_infonce_temperature = 0.05\nepsilon_high = 0.28\n\n[[stage3.rewards]]\nname = \"reciprocal_rank\"\n";
    let path = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "sw",
        4,
        extra,
    );
    let base = t1_train::config::Config::load(&path, &[]).unwrap();
    let table: toml::Table = toml::from_str(&base.to_toml().unwrap()).unwrap();
    let mut keys = Vec::new();
    numeric_keys(&table, "", &mut keys);
    assert!(keys.len() > 30, "only {} numeric keys found", keys.len());
    let mut accepted_nonfinite = Vec::new();
    let mut checked = 0;
    for (key, is_float) in &keys {
        let values: &[&str] = if *is_float {
            &["nan", "inf", "-inf", "0.0", "-1.0", "1e300"]
        } else {
            &["nan", "0", "-1", "4611686018427387904"]
        };
        for v in values {
            let set = format!("{key}={v}");
            // never a panic: load, and for what loads, start the stage that reads the key
            let r = std::panic::catch_unwind(|| {
                let cfg = match t1_train::config::Config::load(&path, std::slice::from_ref(&set)) {
                    Ok(c) => c,
                    Err(e) => return Err(e.to_string()),
                };
                let stage = match key.split('.').next() {
                    Some("stage2") => "stage2",
                    Some("stage3") => "stage3",
                    Some("latent") => "latent",
                    _ => "stage1",
                };
                let dir = tempfile::tempdir().unwrap();
                let mut cfg = cfg;
                cfg.run_dir = dir.path().join("r");
                Trainer::<Autodiff<Flex>>::start(
                    &cfg,
                    stage,
                    false,
                    Goal::Minimize,
                    "loss",
                    &Default::default(),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            });
            let r = r.unwrap_or_else(|_| panic!("--set {set} panicked"));
            checked += 1;
            match (&r, *v) {
                (Ok(()), "nan" | "inf" | "-inf") => accepted_nonfinite.push(set.clone()),
                (Err(e), _) => assert!(
                    e.contains(key.as_str()) || e.contains(&set),
                    "--set {set}: the error does not name the key: {e}"
                ),
                _ => {}
            }
        }
    }
    assert!(
        accepted_nonfinite.is_empty(),
        "non-finite values accepted: {accepted_nonfinite:?}"
    );
    eprintln!("{checked} values over {} keys", keys.len());
}

// 14 ────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_exit2(
        &t1(&["stage1", "--config", missing.to_str().unwrap()]),
        &["nope.toml", "cannot read the config file"],
    );
    assert_exit2(
        &t1(&["eval", "--config", dir.path().to_str().unwrap()]),
        &["cannot read the config file"],
    );
    let cfg = config(
        &dir.path().join("cfg"),
        &dir.path().join("runs"),
        "u",
        4,
        "",
    );
    let long = format!("run.name=\"{}\"", "x".repeat(300));
    assert_exit2(
        &t1(&["stage1", "--config", cfg.to_str().unwrap(), "--set", &long]),
        &["run.name", "1–200 characters"],
    );
    assert_exit2(
        &t1(&["stage1", "--config", cfg.to_str().unwrap(), "--resume"]),
        &["--resume: no checkpoint"],
    );
}

// 15 ────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn the_trec_run_file_is_the_run_the_metrics_were_computed_on() {
    use t1_train::eval::{evaluate, read_trec_run};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ex");
    std::fs::create_dir_all(data.join("qrels")).unwrap();
    // d1 matches q1 best but is excluded for it (its own hint, as in BRIGHT); d2 is relevant
    std::fs::write(
        data.join("corpus.jsonl"),
        "{\"_id\":\"d1\",\"text\":\"apple banana cherry\"}\n{\"_id\":\"d2\",\"text\":\"apple\"}\n{\"_id\":\"d3\",\"text\":\"date\"}\n",
    )
    .unwrap();
    std::fs::write(
        data.join("queries.jsonl"),
        "{\"_id\":\"q1\",\"text\":\"apple banana cherry\",\"excluded_ids\":[\"d1\"]}\n{\"_id\":\"q2\",\"text\":\"date\"}\n",
    )
    .unwrap();
    std::fs::write(
        data.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td3\t1\n",
    )
    .unwrap();
    let cfg = dir.path().join("bm25.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"ex\"\noutput_dir = \"{}\"\n\n[data]\ndataset = \"{}\"\n\n[eval]\nretriever = \"bm25\"\nquery_view = \"bare\"\n\n[logging]\nprogress = \"never\"\ntensorboard = false\n",
            dir.path().join("runs").display(),
            data.display()
        ),
    )
    .unwrap();
    let o = t1(&["eval", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    let out = dir.path().join("runs/ex/eval");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("test.json")).unwrap()).unwrap();
    // scored as any evaluator scores the file: no exclusions of its own
    let ds = t1_train::data::Dataset::load(&data).unwrap();
    let file = read_trec_run(&out.join("test.run")).unwrap();
    let from_file = evaluate(ds.split("test").unwrap(), &file, &Default::default());
    let reported = report["mean"]["ndcg_at_10"].as_f64().unwrap();
    assert_eq!(reported, 1.0, "d2 is first once d1 is excluded");
    assert_eq!(from_file.mean.ndcg_at_10, reported);
    assert!(
        !file["q1"].iter().any(|(d, _)| d == "d1"),
        "the excluded document is not in the run file"
    );
}

// 16 ────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn stage3_gradient_does_not_depend_on_how_the_rollouts_are_split() {
    // 3 queries × G 2 = 6 rollouts per step, as one micro-batch (batch_size 3) or three of one
    // query each (batch_size 1 × grad_accum 3: the same queries, sampled at once): the gradient
    // and the logged loss must be the unsplit batch's
    let dir = tempfile::tempdir().unwrap();
    for loss in ["grpo", "bnpo", "dr_grpo", "dapo"] {
        let mut norms = Vec::new();
        for (batch, accum) in [("3", "1"), ("1", "3")] {
            let extra = format!(
                "[stage3]\ngroup_size = 2\nmask_truncated = false\nloss_type = \"{loss}\"\naux_infonce_weight = 0.1\n\n[[stage3.rewards]]\nname = \"reciprocal_rank\"\n"
            );
            let name = format!("ga-{loss}-{accum}");
            let cfg = config(
                &dir.path().join("cfg"),
                &dir.path().join("runs"),
                &name,
                1,
                &extra,
            );
            let o = t1(&[
                "stage3",
                "--config",
                cfg.to_str().unwrap(),
                "--set",
                &format!("train.batch_size={batch}"),
                "--set",
                &format!("train.grad_accum={accum}"),
                "--set",
                "train.max_grad_norm=0.0",
                "--set",
                "train.warmup_steps=0",
                "--set",
                "model.max_reasoning_tokens=8",
            ]);
            assert!(o.status.success(), "{}", err(&o));
            let run = dir.path().join("runs").join(&name);
            let g = scalar(&run, "stage3/grad_norm")[0].1;
            let l = scalar(&run, "stage3/loss")[0].1;
            norms.push((accum, g, l));
        }
        let (_, g1, l1) = norms[0];
        assert!(g1 > 0.0, "{loss}: no gradient to compare");
        for &(accum, g, l) in &norms[1..] {
            assert!(
                (g - g1).abs() <= 1e-4 * g1,
                "{loss}: grad_accum {accum} gives |g| {g}, unsplit {g1}"
            );
            assert!(
                (l - l1).abs() <= 1e-5 * l1.abs().max(1e-3),
                "{loss}: grad_accum {accum} gives loss {l}, unsplit {l1}"
            );
        }
    }
}
