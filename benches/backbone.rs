//! t1-train on CPU, side by side with the PyTorch stack on the same work in the same run
//! (ratios; absolute times drift on shared machines).
//!
//!     cargo bench --bench backbone                 # tiny preset + SmolLM2 (when fetched)
//!     cargo bench --bench backbone -- --quick      # fewer repetitions
//!
//! For each model, each line is one measurement in its own process (this binary re-run with
//! `--child`, the peer `scripts/bench_peer.py`), so each side's peak memory (VmHWM / ru_maxrss)
//! is that work's alone:
//! - `fwd+bwd`: teacher-forced next-token cross-entropy, forward + backward (no optimizer step),
//!   tokens/s;
//! - `decode`: greedy decode with the KV cache, B·G rows of distinct prompts, exactly N new tokens
//!   each (`generate` with `min_new_tokens`), tokens/s;
//! - `grpo`: one GRPO optimizer step on B prompts × G rollouts — sampling at temperature 1 forced
//!   to N tokens, policy log-probs, reference log-probs and k3 KL (β = 0.04), the `dapo` loss,
//!   backward, clipping at 1.0, AdamW — against TRL's `GRPOTrainer` with the same knobs
//!   (gradient checkpointing off on both sides; TRL turns it on by default); seconds per step, the
//!   ratio is TRL's time over t1-train's (> 1: t1-train is faster). t1-train runs stage 3's own
//!   code (`rollout::completions`/`logprobs`, `loss::grpo_loss`, `advantage`, `clip_global_norm`);
//!   what it leaves out, for both sides, is the reward (random numbers here).
//! - `grpo-lora`, `grpo-lora-ck`: the `grpo` step with LoRA r16 (α 32, all seven projections) on
//!   the frozen base, the reference being the base under the adapters (no second model), without
//!   and with per-layer activation checkpointing, against TRL with the same peft `LoraConfig`
//!   (its reference: the adapter disabled) and `gradient_checkpointing` off / on;
//! - `index`: document encoding (last-token state of the base model, no gradient), documents/s,
//!   against a transformers base-model forward of the same batches;
//! - `rollouts`: t1-train alone — the `decode` work with each prompt shared by G rows (one
//!   prefill per query, as stage 3 samples) over the same rows with distinct prompts.
//!
//! Without torch (or trl) the peer column says why and t1-train's figures still print.
//!
//! `-- --curve` prints how a stage-3 step's cost grows with the work instead (tiny preset):
//! the `grpo` step against TRL's for G = 2, 4, 8, 16 (B = 2, 64 new tokens) and for 32, 64, 128
//! new tokens (B = 2, G = 4), and t1-train's index refresh and ranking (`refresh`: encode N
//! synthetic documents of 64 tokens, score B·G = 16 query vectors against them, sort each row)
//! for N = 1k, 10k, 100k (TRL has no index), each with its peak memory.
//!
//! `-- --device-check` (a build with `--features cuda` or `wgpu`; `scripts/device-check.sh`)
//! compares the GPU backend with the CPU one and times it against PyTorch on the same GPU:
//! `device/check.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use t1_train::advantage::{ScaleRewards, group_advantages};
use t1_train::index::embed_last;
use t1_train::loss::{GrpoParams, KlEstimator, LossType, grpo_loss};
use t1_train::model::{
    Decoder, DecoderConfig, GenerateOptions, Sampler, generate, load_hf, save_hf,
};
use t1_train::rollout::{completions, logprobs};
use t1_train::train::optim::{adamw, clip_global_norm};

/// The backend-generic checks the test suites share (`tests/support/check.rs`).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[path = "../tests/support/check.rs"]
#[allow(dead_code)]
mod check;
/// `--device-check`: a GPU backend against the CPU one and the PyTorch stack on the GPU
/// (`scripts/device-check.sh`).
#[path = "device/check.rs"]
mod device_check;

type B = Flex;
type AD<BK> = Autodiff<BK>;

/// β of the `grpo` line (TRL's former default; > 0 so the reference forward is part of the step).
const BETA: f64 = 0.04;
/// `loss_type` of the `grpo` line (TRL's default), as `scripts/bench_peer.py` numbers it.
const LOSS: (LossType, u32) = (LossType::Dapo, 2);

struct Shapes {
    train: [usize; 2],
    /// B prompts × G rollouts, prompt tokens, new tokens (decode, rollouts and grpo lines).
    b: usize,
    g: usize,
    prompt: usize,
    new: usize,
    /// Documents, tokens per document, batch.
    index: [usize; 3],
}

fn random_ids(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
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

fn train<BK: Backend>(dir: &Path, reps: usize, batch: usize, seq: usize) -> f64 {
    let device = Default::default();
    let model: Decoder<Autodiff<BK>> = load_hf(dir, &device).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x: Vec<i64> = random_ids(&mut rng, batch * (seq + 1), model.config().vocab_size)
        .into_iter()
        .map(i64::from)
        .collect();
    let rows = |lo: usize| -> Vec<i64> {
        (0..batch)
            .flat_map(|r| x[r * (seq + 1) + lo..r * (seq + 1) + lo + seq].to_vec())
            .collect()
    };
    let (inputs, targets) = (rows(0), rows(1));
    let secs = time(reps, || {
        let i = Tensor::<Autodiff<BK>, 2, Int>::from_data(
            TensorData::new(inputs.clone(), [batch, seq]),
            &device,
        );
        let t = Tensor::<Autodiff<BK>, 2, Int>::from_data(
            TensorData::new(targets.clone(), [batch, seq]),
            &device,
        );
        let hidden = model.hidden(i, None);
        let loss = model.token_logprobs(hidden, t, seq).mean().neg();
        std::hint::black_box(loss.backward());
        sync::<BK>(&device);
    });
    (batch * seq) as f64 / secs
}

/// `rows` prompts of which every `group` consecutive ones are the same.
fn prompts(vocab: usize, rows: usize, group: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows / group)
        .flat_map(|_| std::iter::repeat_n(random_ids(&mut rng, len, vocab), group))
        .collect()
}

/// Decode tokens/s of `sh.b · sh.g` rows, prompts shared by `group` rows (greedy, or sampled at
/// temperature 1 when `sampled`).
fn decode<BK: Backend>(dir: &Path, reps: usize, sh: &Shapes, group: usize, sampled: bool) -> f64 {
    let model: Decoder<BK> = load_hf(dir, &Default::default()).unwrap();
    let rows = sh.b * sh.g;
    let p = prompts(model.config().vocab_size, rows, group, sh.prompt, 1);
    let opts = GenerateOptions {
        sampler: if sampled {
            Sampler::Random {
                temperature: 1.0,
                top_k: None,
                top_p: 1.0,
            }
        } else {
            Sampler::Greedy
        },
        max_new_tokens: sh.new,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 0,
        first_stream: 0,
        repetition_penalty: 1.0,
    };
    let secs = time(reps, || {
        let r = generate(&model, &p, &opts, |_| {}).unwrap();
        assert!(r.iter().all(|r| r.tokens.len() == sh.new));
    });
    (rows * sh.new) as f64 / secs
}

/// LoRA rank of the `grpo-lora` line (α = 2r, all seven projections, no trainable token rows:
/// the bench's vocabulary has no added tokens), as `scripts/bench_peer.py` gets it.
const LORA_RANK: usize = 16;

/// Median seconds of one GRPO step (after a first, warm-up step). With `lora_rank` > 0 the
/// policy is the base with LoRA adapters of that rank and the reference is the base under them
/// (no second model), as stage 3 runs with `[lora]`.
/// With `recompute`, per-layer activation checkpointing (`train.gradient_checkpointing`).
fn grpo<BK: Backend>(
    dir: &Path,
    reps: usize,
    sh: &Shapes,
    lora_rank: usize,
    recompute: bool,
) -> f64 {
    let device = Default::default();
    let mut model: Decoder<AD<BK>> = load_hf::<AD<BK>>(dir, &device)
        .unwrap()
        .with_recompute(recompute);
    let copy = (lora_rank == 0).then(|| load_hf::<BK>(dir, &device).unwrap());
    if lora_rank > 0 {
        let spec = t1_train::model::LoraSpec {
            rank: lora_rank,
            alpha: 2.0 * lora_rank as f64,
            use_rslora: false,
            targets: t1_train::model::Target::ALL.to_vec(),
            tokens: Vec::new(),
        };
        model = model.with_lora(&spec, 0).unwrap();
    }
    let mut optim = adamw((0.9, 0.999), 1e-8, 0.0).init::<AD<BK>, Decoder<AD<BK>>>();
    let (g, n) = (sh.g, sh.b * sh.g);
    let vocab = model.config().vocab_size;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let params = |num_items: f64| GrpoParams {
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: BETA,
        kl: KlEstimator::K3,
        loss_type: LOSS.0,
        max_completion_length: sh.new,
        num_items,
    };
    let mut times = Vec::new();
    for step in 0..=reps {
        let p = prompts(vocab, n, g, sh.prompt, 100 + step as u64);
        let started = Instant::now();
        // 1. sample (the policy's inner model, as stage 3)
        let opts = GenerateOptions {
            sampler: Sampler::Random {
                temperature: 1.0,
                top_k: None,
                top_p: 1.0,
            },
            max_new_tokens: sh.new,
            stop: vec![],
            embed: None,
            pad: 0,
            seed: step as u64,
            first_stream: 0,
            repetition_penalty: 1.0,
        };
        let rollouts = generate(&model.valid(), &p, &opts, |_| {}).unwrap();
        assert!(rollouts.iter().all(|r| r.tokens.len() == sh.new));
        // 2.–4. rewards (random, as the peer's) and group advantages
        let rewards: Vec<Option<f32>> = (0..n).map(|_| Some(rng.random::<f32>())).collect();
        let adv = group_advantages(&rewards, g, ScaleRewards::Group);
        // 5. log-probs of policy and reference, loss; 6. backward, clip, AdamW
        let rows: Vec<usize> = (0..n).collect();
        let c = completions::<AD<BK>>(&p, &rollouts, &rows, 0, false, &device);
        let reference = match &copy {
            Some(r) => r.clone(),
            None => model.valid().base_view(),
        };
        let reference_lp = Tensor::from_inner(logprobs(&reference, &c.inner(), 1.0).0);
        let (lp, _) = logprobs(&model, &c, 1.0);
        let a = Tensor::<AD<BK>, 1>::from_data(TensorData::new(adv.values, [n]), &device);
        let out = grpo_loss(
            lp.clone(),
            lp.detach(),
            Some(reference_lp),
            a,
            c.mask.clone(),
            &params(c.tokens),
        );
        let grads = model.backward(out.loss);
        let (grads, _) = clip_global_norm(&model, grads, Some(1.0));
        model = optim.step(1e-6, model, grads);
        sync::<BK>(&device);
        times.push(started.elapsed().as_secs_f64());
    }
    let mut t = times[1..].to_vec();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn index<BK: Backend>(dir: &Path, reps: usize, docs: usize, len: usize, batch: usize) -> f64 {
    let device = Default::default();
    let model: Decoder<BK> = load_hf(dir, &device).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let seqs = random_docs(&mut rng, docs, len, model.config().vocab_size);
    let secs = time(reps, || {
        let v = embed_last(&model, &seqs, batch, 0, |_| {});
        std::hint::black_box(v.clone().div(v.powi_scalar(2).sum_dim(1).sqrt()));
        sync::<BK>(&device);
    });
    docs as f64 / secs
}

/// `docs` synthetic documents of `len` random token ids.
fn random_docs(rng: &mut ChaCha8Rng, docs: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..docs).map(|_| random_ids(rng, len, vocab)).collect()
}

/// Seconds of an index refresh and the ranking of `queries` vectors against it: `docs`
/// synthetic documents of `len` tokens encoded in batches of `batch` and normalised, the
/// queries' cosine scores read back, each row sorted (what stage 3 does per rollout).
fn refresh<BK: Backend>(
    dir: &Path,
    reps: usize,
    docs: usize,
    len: usize,
    batch: usize,
    queries: usize,
) -> f64 {
    let device = Default::default();
    let model: Decoder<BK> = load_hf(dir, &device).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let seqs = random_docs(&mut rng, docs, len, model.config().vocab_size);
    let d = model.config().hidden_size;
    let q: Vec<f32> = (0..queries * d)
        .map(|_| rng.random::<f32>() - 0.5)
        .collect();
    time(reps, || {
        let index = t1_train::index::DocIndex {
            vectors: t1_train::index::l2_normalize(embed_last(&model, &seqs, batch, 0, |_| {})),
            truncated: 0,
        };
        let qv = Tensor::<BK, 2>::from_data(TensorData::new(q.clone(), [queries, d]), &device);
        for row in index.scores(qv).unwrap() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            std::hint::black_box(order);
        }
    })
}

/// `-- --curve`: the stage-3 step's cost against G, reasoning length and corpus size (see the
/// module docs).
fn curve(dir: &Path, reps: usize, threads: usize, versions: &mut Option<serde_json::Value>) {
    let mut notes = Vec::new();
    let s = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let name = "tiny (Qwen3)";
    let grpo_line = |b: usize,
                     g: usize,
                     new: usize,
                     notes: &mut Vec<String>,
                     versions: &mut Option<serde_json::Value>| {
        let bgpn = [b, g, 32, new];
        let mut peer_args = s(&bgpn);
        peer_args.push(((BETA * 1e6).round() as u64).to_string());
        peer_args.push(LOSS.1.to_string());
        eprintln!("[curve] grpo {b}x{g}x{new} …");
        line(
            name,
            "grpo",
            &format!("{b}x{g}x{new}"),
            "s/step",
            ours("grpo", dir, reps, &bgpn),
            peer("grpo", dir, reps, threads, &peer_args, versions),
            true,
            notes,
        );
    };
    for g in [2, 4, 8, 16] {
        grpo_line(2, g, 64, &mut notes, versions);
    }
    for new in [32, 128] {
        grpo_line(2, 4, new, &mut notes, versions);
    }
    for docs in [1_000, 10_000, 100_000] {
        eprintln!("[curve] refresh {docs} …");
        line(
            name,
            "refresh",
            &format!("{docs}x64 q16"),
            "s",
            ours(
                "refresh",
                dir,
                if docs > 10_000 { 1 } else { reps },
                &[docs, 64, 64, 16],
            ),
            Err("TRL has no document index".into()),
            true,
            &mut notes,
        );
    }
    notes.dedup();
    for n in notes {
        println!("note: {n}");
    }
}

/// Peak resident memory of this process so far, MiB (Linux `VmHWM`; NaN elsewhere).
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Waits for the device's queued work (a no-op on the CPU backend), so a timer read after it
/// covers the work, not only its launch.
fn sync<BK: Backend>(device: &BK::Device) {
    BK::sync(device).expect("device sync");
}

/// `--child WORK DIR REPS SHAPE…`: one measurement on backend `BK`, one JSON line on stdout.
fn child<BK: Backend>(args: &[String]) {
    t1_train::model::cpu::tune_allocator();
    let work = args[0].as_str();
    let dir = Path::new(&args[1]);
    let n: Vec<usize> = args[2..].iter().map(|a| a.parse().unwrap()).collect();
    let reps = n[0];
    let sh = |n: &[usize]| Shapes {
        train: [0, 0],
        b: n[0],
        g: n[1],
        prompt: n[2],
        new: n[3],
        index: [0, 0, 0],
    };
    let value = match work {
        "train" => train::<BK>(dir, reps, n[1], n[2]),
        "decode" => decode::<BK>(dir, reps, &sh(&n[1..]), 1, false),
        "rollouts" => {
            let s = sh(&n[1..]);
            decode::<BK>(dir, reps, &s, s.g, false)
        }
        // stage 3's sampling: prompts shared by G rows, temperature 1
        "sample" => {
            let s = sh(&n[1..]);
            decode::<BK>(dir, reps, &s, s.g, true)
        }
        "grpo" => grpo::<BK>(dir, reps, &sh(&n[1..]), 0, false),
        "grpo-lora" => grpo::<BK>(dir, reps, &sh(&n[1..]), LORA_RANK, false),
        "grpo-lora-ck" => grpo::<BK>(dir, reps, &sh(&n[1..]), LORA_RANK, true),
        "index" => index::<BK>(dir, reps, n[1], n[2], n[3]),
        "refresh" => refresh::<BK>(dir, reps, n[1], n[2], n[3], n[4]),
        _ => panic!("unknown work {work}"),
    };
    println!(
        "{}",
        serde_json::json!({"value": value, "peak_mb": peak_mb()})
    );
}

struct Figure {
    value: f64,
    peak_mb: f64,
}

fn parse(
    out: std::io::Result<std::process::Output>,
    who: &str,
) -> Result<(Figure, serde_json::Value), String> {
    let out = out.map_err(|e| format!("{who}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(format!("{who}: {last}"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{who}: {e}"))?;
    let f = Figure {
        value: v["value"].as_f64().unwrap_or(f64::NAN),
        peak_mb: v["peak_mb"].as_f64().unwrap_or(f64::NAN),
    };
    Ok((f, v))
}

fn ours(work: &str, dir: &Path, reps: usize, shape: &[usize]) -> Result<Figure, String> {
    ours_with("--child", work, dir, reps, shape)
}

/// [`ours`] through `mode` (`--child` on the CPU backend, `--child-gpu` on the GPU one).
fn ours_with(
    mode: &str,
    work: &str,
    dir: &Path,
    reps: usize,
    shape: &[usize],
) -> Result<Figure, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg(mode)
        .arg(work)
        .arg(dir)
        .arg(reps.to_string())
        .args(shape.iter().map(|v| v.to_string()))
        .output();
    parse(out, "t1-train").map(|(f, _)| f)
}

/// The repository: the current directory when it holds the peer script (a binary built here
/// and run on another machine, as the device check is), else where this bench was built.
fn repo_root() -> PathBuf {
    let here = PathBuf::from(".");
    if here.join("scripts/bench_peer.py").exists() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

fn peer(
    work: &str,
    dir: &Path,
    reps: usize,
    threads: usize,
    shape: &[String],
    versions: &mut Option<serde_json::Value>,
) -> Result<Figure, String> {
    peer_on("cpu", work, dir, reps, threads, shape, versions).map(|(f, _)| f)
}

/// [`peer`] on `device` (`cpu` or `cuda`), with the peer's whole JSON line.
fn peer_on(
    device: &str,
    work: &str,
    dir: &Path,
    reps: usize,
    threads: usize,
    shape: &[String],
    versions: &mut Option<serde_json::Value>,
) -> Result<(Figure, serde_json::Value), String> {
    let root = repo_root();
    let out = Command::new("python3")
        .env("T1_PEER_DEVICE", device)
        .arg(root.join("scripts/bench_peer.py"))
        .arg(work)
        .arg(dir)
        .arg(root.join("curricula/default/tokenizer.json"))
        .arg(reps.to_string())
        .arg(threads.to_string())
        .args(shape)
        .output();
    let (f, v) = parse(out, "peer")?;
    if let Some(obj) = v["versions"].as_object() {
        let all = versions.get_or_insert_with(|| serde_json::json!({}));
        for (k, x) in obj {
            all[k] = x.clone();
        }
    }
    Ok((f, v))
}

/// One table line: t1-train's figure, the peer's, the speed ratio, and both peak memories.
#[allow(clippy::too_many_arguments)]
fn line(
    model: &str,
    what: &str,
    shape: &str,
    unit: &str,
    ours: Result<Figure, String>,
    theirs: Result<Figure, String>,
    lower_is_better: bool,
    notes: &mut Vec<String>,
) {
    let fmt = |r: &Result<Figure, String>| match r {
        Ok(f) if lower_is_better => format!("{:>10.3}", f.value),
        Ok(f) => format!("{:>10.1}", f.value),
        Err(_) => format!("{:>10}", "n/a"),
    };
    let mem = |r: &Result<Figure, String>| match r {
        Ok(f) => format!("{:>7.0}", f.peak_mb),
        Err(_) => format!("{:>7}", "n/a"),
    };
    let ratio = match (&ours, &theirs) {
        (Ok(a), Ok(b)) if lower_is_better => format!("{:>6.2}x", b.value / a.value),
        (Ok(a), Ok(b)) => format!("{:>6.2}x", a.value / b.value),
        _ => format!("{:>7}", "-"),
    };
    println!(
        "{model:<22} {what:<12} {shape:<14} {unit:<9} {} {}  {ratio}  {} {}",
        fmt(&ours),
        fmt(&theirs),
        mem(&ours),
        mem(&theirs)
    );
    for e in [ours.err(), theirs.err()].into_iter().flatten() {
        notes.push(format!("{model} {what}: {e}"));
    }
}

fn report(
    name: &str,
    dir: &Path,
    sh: &Shapes,
    reps: usize,
    threads: usize,
    versions: &mut Option<serde_json::Value>,
    notes: &mut Vec<String>,
) {
    let s = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let bgpn = [sh.b, sh.g, sh.prompt, sh.new];
    eprintln!("[{name}] fwd+bwd …");
    line(
        name,
        "fwd+bwd",
        &format!("{}x{}", sh.train[0], sh.train[1]),
        "tok/s",
        ours("train", dir, reps, &sh.train),
        peer("train", dir, reps, threads, &s(&sh.train), versions),
        false,
        notes,
    );
    eprintln!("[{name}] decode …");
    let rows = sh.b * sh.g;
    line(
        name,
        "decode",
        &format!("{rows}x{}", sh.new),
        "tok/s",
        ours("decode", dir, reps, &bgpn),
        peer(
            "decode",
            dir,
            reps,
            threads,
            &s(&[rows, sh.prompt, sh.new]),
            versions,
        ),
        false,
        notes,
    );
    // the GRPO step: full f32, LoRA, LoRA + checkpointing (the peer's trailing LORA_R, CKPT)
    let mut peer_grpo = s(&bgpn);
    peer_grpo.push(((BETA * 1e6).round() as u64).to_string());
    peer_grpo.push(LOSS.1.to_string());
    let lora = format!(" r{LORA_RANK}");
    for (work, suffix, extra, about) in [
        ("grpo", "", vec![], String::new()),
        (
            "grpo-lora",
            lora.as_str(),
            vec![LORA_RANK],
            format!(" with LoRA r{LORA_RANK}"),
        ),
        (
            "grpo-lora-ck",
            lora.as_str(),
            vec![LORA_RANK, 1],
            format!(" with LoRA r{LORA_RANK} and gradient checkpointing"),
        ),
    ] {
        eprintln!("[{name}] grpo step{about} …");
        let mut peer_args = peer_grpo.clone();
        peer_args.extend(s(&extra));
        line(
            name,
            work,
            &format!("{}x{}x{}{suffix}", sh.b, sh.g, sh.new),
            "s/step",
            ours(work, dir, reps, &bgpn),
            peer("grpo", dir, reps, threads, &peer_args, versions),
            true,
            notes,
        );
    }
    eprintln!("[{name}] index …");
    line(
        name,
        "index",
        &format!("{}x{}", sh.index[0], sh.index[1]),
        "docs/s",
        ours("index", dir, reps, &sh.index),
        peer("index", dir, reps, threads, &s(&sh.index), versions),
        false,
        notes,
    );
    eprintln!("[{name}] shared-prefill rollouts …");
    line(
        name,
        "rollouts",
        &format!("{}x{}x{}", sh.b, sh.g, sh.new),
        "tok/s",
        ours("rollouts", dir, reps, &bgpn),
        ours("decode", dir, reps, &bgpn).map_err(|e| e.replace("t1-train", "t1-train distinct")),
        false,
        notes,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child::<B>(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--child-gpu") {
        return device_check::child(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--device-check") {
        return device_check::main(&args[i + 1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let reps = if quick { 2 } else { 5 };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "t1-train vs the PyTorch stack, CPU (burn flex), {threads} threads, median of {reps}; \
         ratio > 1: t1-train is faster (grpo: peer s/step ÷ t1-train s/step); peak MiB per process"
    );
    println!(
        "{:<22} {:<12} {:<14} {:<9} {:>10} {:>10}  {:>7}  {:>7} {:>7}",
        "model", "what", "shape", "unit", "t1-train", "peer", "ratio", "MiB t1", "MiB peer"
    );
    let mut versions = None;
    let mut notes = Vec::new();

    let tmp = tempfile::tempdir().unwrap();
    let tiny_dir = tmp.path().join("tiny");
    let tiny: Decoder<B> = DecoderConfig::tiny(1024).init(&Default::default());
    save_hf(&tiny, &tiny_dir).unwrap();
    if args.iter().any(|a| a == "--curve") {
        curve(&tiny_dir, reps, threads, &mut versions);
        if let Some(v) = versions {
            println!("peer versions: {v}");
        }
        return;
    }
    let tiny_shapes = Shapes {
        train: [8, 128],
        b: 4,
        g: 4,
        prompt: 32,
        new: 64,
        index: [256, 64, 32],
    };
    let name = format!("tiny (Qwen3, {:.2}M)", tiny.num_params() as f64 / 1e6);
    report(
        &name,
        &tiny_dir,
        &tiny_shapes,
        reps,
        threads,
        &mut versions,
        &mut notes,
    );

    let smol: PathBuf = std::env::var_os("T1_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2-135m-instruct")
        });
    if smol.join("model.safetensors").exists() {
        let shapes = Shapes {
            train: [2, 128],
            b: 2,
            g: 4,
            prompt: 32,
            new: 32,
            index: [64, 128, 16],
        };
        report(
            "SmolLM2-135M (Llama)",
            &smol,
            &shapes,
            reps.min(3),
            threads,
            &mut versions,
            &mut notes,
        );
    } else {
        println!("SmolLM2-135M: skipped, run `python3 scripts/fetch_smollm2.py` first");
    }
    match versions {
        Some(v) => println!("peer versions: {v}"),
        None => println!("peer: not available"),
    }
    for n in notes {
        println!("  {n}");
    }
}
