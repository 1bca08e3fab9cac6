//! Backbone throughput on CPU, side by side with PyTorch/transformers on the same model and shapes
//! in the same run (ratios; absolute times drift on shared machines).
//!
//!     cargo bench --bench backbone                 # tiny preset + SmolLM2 (when fetched)
//!     cargo bench --bench backbone -- --quick      # fewer repetitions
//!
//! For each model: forward+backward tokens/s (teacher-forced next-token cross-entropy, batch × seq
//! tokens per step) and greedy decode tokens/s with the KV cache (batch rows × new tokens). The
//! peer is `scripts/bench_backbone.py` (torch + transformers), run on the very same HF folder
//! (the tiny preset is saved to a temp folder first) with the same thread count. Without torch
//! the peer column says so and only t1-train's figures print.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use t1_train::model::{
    Decoder, DecoderConfig, GenerateOptions, Sampler, generate, load_hf, save_hf,
};

type B = Flex;
type AD = Autodiff<Flex>;

/// G of the rollout line: rows sharing one prompt.
const GROUP: usize = 4;

struct Shapes {
    train_batch: usize,
    train_seq: usize,
    decode_batch: usize,
    prompt: usize,
    new_tokens: usize,
}

fn ids(rng: &mut ChaCha8Rng, b: usize, s: usize, vocab: usize) -> Vec<i64> {
    (0..b * s)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect()
}

/// Median seconds of `reps` runs after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn train_tokens_per_s(dir: &Path, sh: &Shapes, reps: usize) -> f64 {
    let device = Default::default();
    let model: Decoder<AD> = load_hf(dir, &device).unwrap();
    let vocab = model.config().vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (b, s) = (sh.train_batch, sh.train_seq);
    let x = ids(&mut rng, b, s + 1, vocab);
    let inputs: Vec<i64> = (0..b)
        .flat_map(|r| x[r * (s + 1)..r * (s + 1) + s].to_vec())
        .collect();
    let targets: Vec<i64> = (0..b)
        .flat_map(|r| x[r * (s + 1) + 1..(r + 1) * (s + 1)].to_vec())
        .collect();
    let secs = time(reps, || {
        let i = Tensor::<AD, 2, Int>::from_data(TensorData::new(inputs.clone(), [b, s]), &device);
        let t = Tensor::<AD, 2, Int>::from_data(TensorData::new(targets.clone(), [b, s]), &device);
        let hidden = model.hidden(i, None);
        let loss = model.token_logprobs(hidden, t, s).mean().neg();
        let grads = loss.backward();
        std::hint::black_box(grads);
    });
    (b * s) as f64 / secs
}

/// Decode tokens/s for `decode_batch` rows of which every `group` consecutive rows share one
/// prompt (`group = 1`: all distinct; `group = G`: a GRPO step's B × G rollouts, one prefill per
/// query). Greedy, as the peer's decode: the work per row is the same whatever it draws.
fn decode_tokens_per_s(dir: &Path, sh: &Shapes, reps: usize, group: usize) -> f64 {
    let model: Decoder<B> = load_hf(dir, &Default::default()).unwrap();
    let vocab = model.config().vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let prompts: Vec<Vec<u32>> = (0..sh.decode_batch / group)
        .flat_map(|_| {
            let p: Vec<u32> = (0..sh.prompt)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            std::iter::repeat_n(p, group)
        })
        .collect();
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: sh.new_tokens,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 0,
    };
    let secs = time(reps, || {
        let r = generate(&model, &prompts, &opts, |_| {}).unwrap();
        assert!(r.iter().all(|r| r.tokens.len() == sh.new_tokens));
    });
    (sh.decode_batch * sh.new_tokens) as f64 / secs
}

/// The peer's figures: `{"train": tok/s, "decode": tok/s}` or the reason it could not run.
fn peer(dir: &Path, sh: &Shapes, reps: usize, threads: usize) -> Result<(f64, f64), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_backbone.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir)
        .args(
            [
                sh.train_batch,
                sh.train_seq,
                sh.decode_batch,
                sh.prompt,
                sh.new_tokens,
                reps,
                threads,
            ]
            .map(|v| v.to_string()),
        )
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((
        v["train"].as_f64().unwrap_or(f64::NAN),
        v["decode"].as_f64().unwrap_or(f64::NAN),
    ))
}

fn report(name: &str, dir: &Path, sh: &Shapes, reps: usize, threads: usize) {
    eprintln!("[{name}] measuring t1-train …");
    let train = train_tokens_per_s(dir, sh, reps);
    let decode = decode_tokens_per_s(dir, sh, reps, 1);
    let grouped = decode_tokens_per_s(dir, sh, reps, GROUP);
    eprintln!("[{name}] measuring torch/transformers …");
    let peer = peer(dir, sh, reps, threads);
    let (pt, pd) = match &peer {
        Ok((t, d)) => (format!("{t:>10.0}"), format!("{d:>10.0}")),
        Err(_) => (format!("{:>10}", "n/a"), format!("{:>10}", "n/a")),
    };
    let ratio = |ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => format!("{:>6.2}x", ours / t),
        None => format!("{:>7}", "-"),
    };
    println!(
        "{name:<22} fwd+bwd {:>3}x{:<4} {train:>10.0} {pt}  {}",
        sh.train_batch,
        sh.train_seq,
        ratio(train, peer.as_ref().ok().map(|p| p.0))
    );
    println!(
        "{name:<22} decode  {:>3}x{:<4} {decode:>10.0} {pd}  {}",
        sh.decode_batch,
        sh.new_tokens,
        ratio(decode, peer.as_ref().ok().map(|p| p.1))
    );
    println!(
        "{name:<22} rollouts {:>2}x{:<4} {grouped:>10.0} {decode:>10.0}  {:>6.2}x   (t1-train, one prefill per {GROUP} rows vs {:} distinct prompts)",
        sh.decode_batch / GROUP,
        GROUP,
        grouped / decode,
        sh.decode_batch
    );
    if let Err(e) = peer {
        println!("  (peer unavailable: {e})");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 2 } else { 5 };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "t1-train backbone benchmark, CPU (flex), {threads} threads; tokens/s, median of {reps}"
    );
    println!(
        "{:<22} {:<7} {:<8} {:>10} {:>10}  {:>7}",
        "model", "what", "shape", "t1-train", "torch", "ratio"
    );

    let tmp = tempfile::tempdir().unwrap();
    let tiny_dir = tmp.path().join("tiny");
    let tiny: Decoder<B> = DecoderConfig::tiny(1024).init(&Default::default());
    save_hf(&tiny, &tiny_dir).unwrap();
    let tiny_shapes = Shapes {
        train_batch: 8,
        train_seq: 128,
        decode_batch: 16,
        prompt: 32,
        new_tokens: 64,
    };
    let name = format!("tiny (Qwen3, {:.2}M)", tiny.num_params() as f64 / 1e6);
    report(&name, &tiny_dir, &tiny_shapes, reps, threads);

    let smol: PathBuf = std::env::var_os("T1_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2-135m-instruct")
        });
    if smol.join("model.safetensors").exists() {
        let shapes = Shapes {
            train_batch: 2,
            train_seq: 128,
            decode_batch: 8,
            prompt: 32,
            new_tokens: 32,
        };
        report("SmolLM2-135M (Llama)", &smol, &shapes, reps.min(3), threads);
    } else {
        println!("SmolLM2-135M: skipped, run `python3 scripts/fetch_smollm2.py` first");
    }
}
