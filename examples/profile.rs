//! A profiling target for one hot path at a time, for `perf record` and before/after timings
//! of a change (the README's "what each change bought" figures come from here):
//!
//!     cargo build --release --example profile
//!     target/release/examples/profile train   # SmolLM2-135M: forward, then forward+backward, 2 × 128 tokens
//!     target/release/examples/profile decode  # SmolLM2-135M: greedy decode, 8 rows × 32 tokens after 32
//!     target/release/examples/profile steps   # SmolLM2-135M: decode steps alone (8 rows, 1-token prompts)
//!     target/release/examples/profile index   # tiny preset: encode 256 documents × 64 tokens, batch 32
//!     target/release/examples/profile grpo    # SmolLM2-135M: the bench's GRPO step (2 × 4 × 32), per phase
//!     target/release/examples/profile gemm    # SmolLM2-135M's projection shapes: GFLOP/s of the CPU linear, split vs gemm's threading
//!     target/release/examples/profile bandwidth   # the machine's memory bandwidth next to what a decode step streams
//!     RAYON_NUM_THREADS=1 perf record --call-graph dwarf target/release/examples/profile index
//!
//! (single-threaded, the GEMM work stays on the caller's stack and `perf report --children`
//! attributes it to the op that asked for it). Each mode prints the wall time of a few runs.

use std::path::Path;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::index::embed_last;
use t1_train::loss::{GrpoParams, KlEstimator, LossType, grpo_loss};
use t1_train::model::{Decoder, DecoderConfig, GenerateOptions, Sampler, generate, load_hf};
use t1_train::rollout::{completions, logprobs};
use t1_train::train::optim::{adamw, clip_global_norm};

type AD = Autodiff<Flex>;

fn smollm2() -> &'static Path {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/smollm2-135m-instruct"
    ));
    assert!(
        dir.join("model.safetensors").exists(),
        "run `python3 scripts/fetch_smollm2.py` first"
    );
    dir
}

fn train() {
    let device = Default::default();
    let model: Decoder<AD> = load_hf(smollm2(), &device).unwrap();
    let (b, s) = (2usize, 128usize);
    let v = model.config().vocab_size as i64;
    let inputs: Vec<i64> = (0..b * s).map(|i| (i as i64 * 7919) % v).collect();
    let targets: Vec<i64> = (0..b * s).map(|i| (i as i64 * 104729) % v).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        let i = Tensor::<AD, 2, Int>::from_data(TensorData::new(inputs.clone(), [b, s]), &device);
        let t = Tensor::<AD, 2, Int>::from_data(TensorData::new(targets.clone(), [b, s]), &device);
        let hidden = model.hidden(i, None);
        let loss = model.token_logprobs(hidden, t, s).mean().neg();
        let _ = loss.clone().into_scalar();
        let forward = t0.elapsed();
        std::hint::black_box(loss.backward());
        eprintln!("forward {forward:?}, forward+backward {:?}", t0.elapsed());
    }
}

fn decode() {
    let model: Decoder<Flex> = load_hf(smollm2(), &Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = (0..8)
        .map(|r| {
            (0..32)
                .map(|i| ((r * 977 + i * 7919) % 49152) as u32)
                .collect()
        })
        .collect();
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: 32,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 0,
        first_stream: 0,
        repetition_penalty: 1.0,
    };
    let prefill = GenerateOptions {
        max_new_tokens: 1,
        ..opts.clone()
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = generate(&model, &prompts, &prefill, |_| {}).unwrap();
        assert_eq!(r[0].tokens.len(), 1);
        let p = t0.elapsed();
        let t0 = Instant::now();
        let r = generate(&model, &prompts, &opts, |_| {}).unwrap();
        assert_eq!(r[0].tokens.len(), 32);
        eprintln!(
            "prefill + 1 token {p:?}, prefill + 32 tokens {:?}",
            t0.elapsed()
        );
    }
}

/// Decode steps alone: 8 rows of a 1-token prompt, 64 new tokens.
fn steps() {
    let model: Decoder<Flex> = load_hf(smollm2(), &Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = (0..8).map(|r| vec![(r * 977 % 49152) as u32]).collect();
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: 64,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 0,
        first_stream: 0,
        repetition_penalty: 1.0,
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = generate(&model, &prompts, &opts, |_| {}).unwrap();
        assert_eq!(r[0].tokens.len(), 64);
        eprintln!(
            "64 steps of 8 rows: {:.1} ms/step",
            t0.elapsed().as_secs_f64() * 1e3 / 64.0
        );
    }
}

fn index() {
    let model: Decoder<Flex> = DecoderConfig::tiny(1024).init(&Default::default());
    let seqs: Vec<Vec<u32>> = (0..256)
        .map(|r| {
            (0..64)
                .map(|i| ((r * 977 + i * 7919) % 1000) as u32)
                .collect()
        })
        .collect();
    for _ in 0..5 {
        let t0 = Instant::now();
        std::hint::black_box(embed_last(&model, &seqs, 32, 0, |_| {}));
        eprintln!("index {:?}", t0.elapsed());
    }
}

/// The bench's SmolLM2 GRPO step, timed per phase: sampling, reference log-probs, policy
/// log-probs + loss, backward, clipping + AdamW.
fn grpo() {
    let device = Default::default();
    let mut model: Decoder<AD> = load_hf(smollm2(), &device).unwrap();
    let reference: Decoder<Flex> = load_hf(smollm2(), &device).unwrap();
    let mut optim = adamw((0.9, 0.999), 1e-8, 0.0).init::<AD, Decoder<AD>>();
    let (g, n, new) = (4usize, 8usize, 32usize);
    let params = GrpoParams {
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.04,
        kl: KlEstimator::K3,
        loss_type: LossType::Dapo,
        max_completion_length: new,
        num_items: 0.0,
    };
    for step in 0..4u64 {
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                let q = (r / g) as u64 + 10 * step;
                (0..32u64)
                    .map(|i| ((q * 977 + i * 7919) % 49152) as u32)
                    .collect()
            })
            .collect();
        let mut t = Instant::now();
        let lap = |what: &str, t: &mut Instant| {
            eprint!("{what} {:.2}s  ", t.elapsed().as_secs_f64());
            *t = Instant::now();
        };
        let opts = GenerateOptions {
            sampler: Sampler::Random {
                temperature: 1.0,
                top_k: None,
                top_p: 1.0,
            },
            max_new_tokens: new,
            stop: vec![],
            embed: None,
            pad: 0,
            seed: step,
            first_stream: 0,
            repetition_penalty: 1.0,
        };
        let rollouts = generate(&model.valid(), &prompts, &opts, |_| {}).unwrap();
        lap("sample", &mut t);
        let rows: Vec<usize> = (0..n).collect();
        let c = completions::<AD>(&prompts, &rollouts, &rows, 0, false, &device);
        let reference_lp = Tensor::from_inner(logprobs(&reference, &c.inner(), 1.0).0);
        let _ = reference_lp.clone().sum().into_scalar();
        lap("reference", &mut t);
        let (lp, _) = logprobs(&model, &c, 1.0);
        let adv: Vec<f32> = (0..n).map(|i| (i % 3) as f32 - 1.0).collect();
        let a = Tensor::<AD, 1>::from_data(TensorData::new(adv, [n]), &device);
        let p = GrpoParams {
            num_items: c.tokens,
            ..params.clone()
        };
        let out = grpo_loss(
            lp.clone(),
            lp.detach(),
            Some(reference_lp),
            a,
            c.mask.clone(),
            &p,
        );
        let _ = out.loss.clone().into_scalar();
        lap("policy-fwd", &mut t);
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        lap("backward", &mut t);
        let (grads, _) = clip_global_norm(&model, grads, Some(1.0));
        model = optim.step(1e-6, model, grads);
        lap("clip+adamw", &mut t);
        eprintln!();
    }
}

fn main() {
    if std::env::var_os("T1_PLAIN_MALLOC").is_none() {
        t1_train::model::cpu::tune_allocator();
    }
    match std::env::args().nth(1).as_deref() {
        Some("train") => train(),
        Some("decode") => decode(),
        Some("index") => index(),
        Some("grpo") => grpo(),
        Some("steps") => steps(),
        Some("gemm") => gemm_shapes(),
        Some("bandwidth") => bandwidth(),
        _ => eprintln!("usage: profile train|decode|steps|index|grpo|gemm|bandwidth"),
    }
}

/// GFLOP/s of the CPU linear layer at SmolLM2-135M's shapes (d 576, MLP 1536, k/v 192): a
/// training micro-batch's projections (2 × 128 tokens), a weight gradient (`xᵀ · dy`) and an index
/// batch (64 documents × 128 tokens), one gemm per core (`T1_GEMM_SPLIT`, the default) against
/// gemm's own threading, alternating: the median of 15 runs of ~0.1 s each.
fn gemm_shapes() {
    use burn::tensor::Distribution;
    use t1_train::model::cpu::set_gemm_split;
    let dev = Default::default();
    println!(
        "{} threads; GFLOP/s, median of 15",
        rayon::current_num_threads()
    );
    println!(
        "{:<24} {:<24} {:>9} {:>9} {:>6}",
        "product", "shape", "split", "gemm's", "ratio"
    );
    let shapes: [(&str, usize, usize, usize); 6] = [
        ("q/o proj 256 tok", 256, 576, 576),
        ("k/v proj 256 tok", 256, 576, 192),
        ("gate/up 256 tok", 256, 576, 1536),
        ("down 256 tok", 256, 1536, 576),
        ("dW gate/up", 576, 256, 1536),
        ("index gate/up 8192 tok", 8192, 576, 1536),
    ];
    for (what, m, k, n) in shapes {
        let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((1e8 / flops) as usize).max(1);
        let run = |split: bool| {
            set_gemm_split(split);
            let t = Instant::now();
            for _ in 0..reps {
                let y =
                    t1_train::model::cpu::linear_matmul(&x, &w).expect("the CPU linear applies");
                std::hint::black_box(y);
            }
            flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            on.push(run(true));
            off.push(run(false));
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (median(on), median(off));
        println!(
            "{what:<24} {:<24} {a:>9.1} {b:>9.1} {:>5.2}x",
            format!("[{m},{k}]x[{k},{n}]"),
            a / b
        );
    }
    set_gemm_split(true);
}

/// The machine's memory bandwidth (a 1 GiB f32 buffer summed by every rayon thread, best of 5)
/// next to what SmolLM2-135M's decode step streams: every weight once per step (8 rows, greedy),
/// weight bytes over the step's time. A decode step far below the machine's figure is bound by
/// something else than streaming its weights.
fn bandwidth() {
    use rayon::prelude::*;
    let n = 1usize << 28; // 1 GiB of f32
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        let s: f32 = buf.par_chunks(1 << 16).map(|c| c.iter().sum::<f32>()).sum();
        std::hint::black_box(s);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let read = (n * 4) as f64 / best / 1e9;
    println!(
        "memory read bandwidth, {} threads: {read:.1} GB/s",
        rayon::current_num_threads()
    );
    drop(buf);
    let model: Decoder<Flex> = load_hf(smollm2(), &Default::default()).unwrap();
    let bytes = model.num_params() as f64 * 4.0;
    let prompts: Vec<Vec<u32>> = (0..8).map(|r| vec![(r * 977 % 49152) as u32]).collect();
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: 64,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 0,
        first_stream: 0,
        repetition_penalty: 1.0,
    };
    let mut step = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        generate(&model, &prompts, &opts, |_| {}).unwrap();
        step = step.min(t0.elapsed().as_secs_f64() / 64.0);
    }
    println!(
        "SmolLM2 decode, 8 rows: {:.1} ms/step, {:.0} MB of weights a step: {:.1} GB/s ({:.0} % of the read bandwidth)",
        step * 1e3,
        bytes / 1e6,
        bytes / step / 1e9,
        100.0 * bytes / step / 1e9 / read
    );
}
