//! A profiling target for one hot path at a time, for `perf record` and before/after timings
//! of a change (the README's "what each change bought" figures come from here):
//!
//!     cargo build --release --example profile
//!     target/release/examples/profile train   # SmolLM2-135M: forward, then forward+backward, 2 × 128 tokens
//!     target/release/examples/profile decode  # SmolLM2-135M: greedy decode, 8 rows × 32 tokens after 32
//!     target/release/examples/profile index   # tiny preset: encode 256 documents × 64 tokens, batch 32
//!     RAYON_NUM_THREADS=1 perf record --call-graph dwarf target/release/examples/profile index
//!
//! (single-threaded, the GEMM work stays on the caller's stack and `perf report --children`
//! attributes it to the op that asked for it). Each mode prints the wall time of a few runs.

use std::path::Path;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::index::embed_last;
use t1_train::model::{Decoder, DecoderConfig, GenerateOptions, Sampler, generate, load_hf};

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
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = generate(&model, &prompts, &opts, |_| {}).unwrap();
        assert_eq!(r[0].tokens.len(), 32);
        eprintln!("decode {:?}", t0.elapsed());
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

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("train") => train(),
        Some("decode") => decode(),
        Some("index") => index(),
        _ => eprintln!("usage: profile train|decode|index"),
    }
}
