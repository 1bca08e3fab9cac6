//! Stage 1 on the tiny preset: the loss is finite and falls, every parameter moves, and a run
//! interrupted with Ctrl-C then resumed ends exactly where an uninterrupted run ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn_store::ModuleSnapshot;
use t1_train::model::{Decoder, load_hf};

type B = Flex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stage-1 config on the shipped data and tokenizer, writing under `out`.
fn config(dir: &Path, out: &Path, steps: u64, extra: &str) -> PathBuf {
    let r = root();
    let text = format!(
        r#"
[run]
name = "s1"
output_dir = "{out}"
seed = 7

[data]
dataset = "{data}"

[model]
preset = "tiny"
tokenizer = "{tok}"
max_query_tokens = 32
max_reasoning_tokens = 48
max_doc_tokens = 48

[train]
steps = {steps}
batch_size = 8
lr = 3e-3
warmup_steps = 3
eval_every = 0
save_every = 4
keep_checkpoints = 50

[logging]
progress = "never"
tensorboard = false
{extra}
"#,
        out = out.display(),
        data = r.join("curricula/default/data").display(),
        tok = r.join("curricula/default/tokenizer.json").display(),
    );
    let p = dir.join("stage1.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn t1(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_t1-train")).args(args).output().unwrap()
}

/// `stage1/loss` per step from metrics.jsonl.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["values"]["stage1/loss"].as_f64()?)))
        .collect()
}

fn params(m: &Decoder<B>) -> Vec<(String, Vec<f32>)> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            let data = s.to_data().unwrap().convert::<f32>().to_vec::<f32>().unwrap();
            (s.full_path(), data)
        })
        .collect()
}

#[test]
fn stage1_learns_and_moves_every_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), 24, "");
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap(), "--set", "train.eval_every=12"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/s1");
    let l = losses(&run);
    assert_eq!(l.len(), 24, "one loss per step");
    assert!(l.iter().all(|(_, v)| v.is_finite()));
    let head: f64 = l[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let tail: f64 = l[20..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(tail < 0.7 * head, "loss did not fall: {head} → {tail}");
    // the dev eval ran and the best model is an HF folder
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("best dev loss"), "{stdout}");
    assert!(run.join("best/config.json").exists() && run.join("best/tokenizer.json").exists());

    // every parameter changed from the seeded initialisation
    let initial = {
        let c = t1_train::config::Config::load(&cfg, &[]).unwrap();
        t1_train::train::common::load_backbone::<B>(&c, &Default::default()).unwrap().0
    };
    let trained = load_hf::<B>(&run.join("checkpoints/step-000024"), &Default::default()).unwrap();
    let (a, b) = (params(&initial), params(&trained));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let moved = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-6, "parameter {name} did not change");
    }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    // uninterrupted
    let a_out = dir.path().join("a");
    let cfg_a = config(&dir.path().join("."), &a_out, steps, "");
    let o = t1(&["stage1", "--config", cfg_a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // interrupted with Ctrl-C once the first checkpoint exists, then resumed
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let b_out = dir.path().join("b-runs");
    let cfg_b = config(&b_dir, &b_out, steps, "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args(["stage1", "--config", cfg_b.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = b_out.join("s1/checkpoints/step-000004/state.json");
    let t0 = Instant::now();
    while !first.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected an interrupted run: {err}");
    assert!(err.contains("interrupted") && err.contains("--resume"), "{err}");
    let stopped_at = losses(&b_out.join("s1")).len();
    assert!(stopped_at < steps as usize, "the run finished before the signal");

    // a fresh start on a run with checkpoints is refused; --resume continues
    let o = t1(&["stage1", "--config", cfg_b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let o = t1(&["stage1", "--config", cfg_b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // same losses step for step after the resume point, same final weights
    let la = losses(&a_out.join("s1"));
    let mut lb = losses(&b_out.join("s1"));
    lb.sort_by_key(|x| x.0);
    lb.dedup_by_key(|x| x.0);
    assert_eq!(la.len(), lb.len());
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {s}: {x} vs {y}");
    }
    let last = format!("s1/checkpoints/step-{steps:06}");
    let wa = params(&load_hf::<B>(&a_out.join(&last), &Default::default()).unwrap());
    let wb = params(&load_hf::<B>(&b_out.join(&last), &Default::default()).unwrap());
    let worst = wa
        .iter()
        .zip(&wb)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}
