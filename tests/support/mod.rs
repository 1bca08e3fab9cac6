//! Helpers shared by the stage tests: configs on the shipped data, running the binary,
//! reading metrics.jsonl, comparing parameters, interrupting a run with Ctrl-C.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn_store::ModuleSnapshot;
use t1_train::model::Decoder;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<rel>`.
pub fn fixture_path(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// The JSON fixture `tests/fixtures/<rel>`.
pub fn json_fixture(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path(rel)).unwrap()).unwrap()
}

/// A JSON array of numbers, as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

// a tensor's values as f32, and the largest |a − b| of two slices: the backend checks' own
#[allow(unused_imports)] // each test crate uses its own few
pub use check::{max_abs_diff as max_abs, to_vec};

/// A finished command's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A stage config on the shipped data: the tiny preset, small views, `[train]` from `steps`,
/// checkpoints every 4 steps, then `extra` TOML (more sections) appended.
pub fn config(dir: &Path, out: &Path, name: &str, steps: u64, extra: &str) -> PathBuf {
    let r = root();
    let text = format!(
        r#"
[run]
name = "{name}"
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
eval_batch_size = 64

[logging]
progress = "never"
tensorboard = false
{extra}
"#,
        out = out.display(),
        data = r.join("curricula/default/data").display(),
        tok = r.join("curricula/default/tokenizer.json").display(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the binary in the repository root.
pub fn t1(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// `(step, value)` of scalar `tag` in a run's metrics.jsonl, in file order.
pub fn scalar(run: &Path, tag: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["values"][tag].as_f64()?)))
        .collect()
}

pub fn params(m: &Decoder<Flex>) -> Vec<(String, Vec<f32>)> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| {
            let data = s
                .to_data()
                .unwrap()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap();
            (s.full_path(), data)
        })
        .collect()
}

/// Largest absolute difference between two parameter lists (same module tree).
pub fn max_param_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max)
}

/// Starts `args`, sends Ctrl-C once `wait_for` exists, returns the child's stderr after it exits
/// with code 1 (interrupted, state saved).
pub fn interrupt_when(args: &[&str], wait_for: &Path) -> String {
    let (code, err) = signal_when(args, wait_for, "-INT");
    assert_eq!(code, Some(1), "expected an interrupted run: {err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    err
}

/// Starts `args`, sends `signal` (`-INT`, `-KILL`) once `wait_for` exists; returns the exit code
/// (None when killed by the signal) and stderr.
pub fn signal_when(args: &[&str], wait_for: &Path, signal: &str) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !wait_for.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{} never appeared",
            wait_for.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Asserts every parameter of the checkpoint at `trained` differs (by more than `tol`) from the
/// model the config `cfg` starts from (the seeded preset).
pub fn assert_every_parameter_moved(cfg: &Path, trained: &Path, tol: f32) {
    let c = t1_train::config::Config::load(cfg, &[]).unwrap();
    let initial = t1_train::model::load::load_backbone::<Flex>(&c, &Default::default())
        .unwrap()
        .0;
    let trained = t1_train::model::load_hf::<Flex>(trained, &Default::default()).unwrap();
    let (a, b) = (params(&initial), params(&trained));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let moved = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > tol, "parameter {name} did not change");
    }
}

/// A backbone fixture's inputs and HF logits (`scripts/golden_backbone.py`).
pub struct Expected {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub positions: Vec<i64>,
    pub logits: Vec<f32>,
    pub shape: [usize; 3],
}

pub fn expected(dir: &Path) -> Expected {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |k: &str| -> Vec<i64> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let l = st.tensor("logits").unwrap();
    let shape = [l.shape()[0], l.shape()[1], l.shape()[2]];
    Expected {
        ids: ints("input_ids"),
        mask: ints("attention_mask"),
        positions: ints("position_ids"),
        logits: l
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        shape,
    }
}

pub mod check;
#[allow(unused_imports)]
pub use check::max_abs_diff;

/// Runs `a` and `b` logged scalar `tag` at the same `steps` steps, each pair within
/// `rel · max(|a|, floor)` (a step logged twice, as around a resume, counts once).
pub fn assert_same_scalars(a: &Path, b: &Path, tag: &str, steps: usize, rel: f64, floor: f64) {
    let read = |run: &Path| {
        let mut v = scalar(run, tag);
        v.sort_by_key(|x| x.0);
        v.dedup_by_key(|x| x.0);
        v
    };
    let (x, y) = (read(a), read(b));
    assert_eq!(x.len(), steps, "{tag} in {}", a.display());
    assert_eq!(y.len(), steps, "{tag} in {}", b.display());
    for ((s, p), (t, q)) in x.iter().zip(&y) {
        assert_eq!(s, t, "{tag}: steps");
        assert!(
            (p - q).abs() <= rel * p.abs().max(floor),
            "step {s}: {tag} {p} vs {q}"
        );
    }
}

/// The SmolLM2-135M folder (`T1_SMOLLM2_DIR`, or assets/ as `scripts/fetch_smollm2.py` writes it);
/// `None` (the test skips) when absent, a failure under `T1_REQUIRE_SMOLLM2=1` (CI).
pub fn smollm2_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("T1_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("assets/smollm2-135m-instruct"));
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    let why = format!(
        "SmolLM2 folder {} is absent: run `python3 scripts/fetch_smollm2.py`",
        dir.display()
    );
    if std::env::var_os("T1_REQUIRE_SMOLLM2").is_some_and(|v| v == "1") {
        panic!("{why} (T1_REQUIRE_SMOLLM2=1)");
    }
    eprintln!("skipped: {why}");
    None
}
