//! burn's wgpu backend — the generic ops every GPU user runs, compiled to WGSL and run through a
//! real Vulkan driver (Mesa's lavapipe in CI: `apt install mesa-vulkan-drivers`) — against the
//! CPU backend, in one process:
//! - logits of HF fixtures (and each within 1e-4 of transformers);
//! - rollouts: prefill, cached decode and seeded sampling, their log-probs against a full
//!   forward, then one GRPO loss with non-zero advantages and its gradient norm;
//! - a training forward + backward (every parameter's gradient);
//! - 2-step stage 1 / 2 / 3 runs of the tiny preset on the shipped data.
//!
//! Build and run: `cargo test --features wgpu --test wgpu` (kernels compile at first use, so the
//! shapes are small). Without the feature, or without a Vulkan adapter, the tests say why they
//! skipped; with `T1_REQUIRE_WGPU=1` (as `.ci/run` sets) a skip is a failure.
//!
//! Tolerances: wgpu sums in other orders (tiled matmuls, tree reductions) and lavapipe's
//! `exp`/`log` are not correctly rounded, so values agree to f32 rounding of the sums: logits
//! and log-probs within 1e-4, losses within 1e-4 (absolute), gradients within 1e-3 of the largest
//! gradient of their parameter, logged stage losses within 1e-4 relative.

mod support;

/// The reason wgpu tests cannot run here, or `None` when they can; fails under
/// `T1_REQUIRE_WGPU=1`.
fn skip_reason(reason: Option<String>) -> Option<String> {
    let reason = reason?;
    if std::env::var("T1_REQUIRE_WGPU").as_deref() == Ok("1") {
        panic!("T1_REQUIRE_WGPU=1, but the wgpu tests cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
    Some(reason)
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_backend_matches_cpu() {
    skip_reason(Some(
        "built without the `wgpu` feature (run `cargo test --features wgpu --test wgpu`, with a \
         Vulkan driver such as Debian's mesa-vulkan-drivers)"
            .into(),
    ));
}

#[cfg(feature = "wgpu")]
mod on_wgpu {
    use std::sync::OnceLock;

    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::{Autodiff, Flex, Wgpu};
    use burn::tensor::Tensor;
    use t1_train::config::Config;
    use t1_train::model::{
        Decoder, GenerateOptions, Sampler, generate, load_hf, sampling_bytes_read,
    };

    use super::skip_reason;
    use super::support::check::{
        assert_grads_agree, assert_grpo_agree, int2, rollouts_and_grpo_step, to_vec, training_step,
    };
    use super::support::{config, expected, max_abs_diff, root, scalar};

    type G = Wgpu;
    type GA = Autodiff<Wgpu>;
    type C = Flex;
    type CA = Autodiff<Flex>;

    /// Whether the default wgpu device answers (one upload and read-back), once per process;
    /// `false` after printing why (or failing, under `T1_REQUIRE_WGPU=1`).
    fn available() -> bool {
        static OK: OnceLock<Option<String>> = OnceLock::new();
        let reason = OK.get_or_init(|| {
            let probe = std::panic::catch_unwind(|| {
                let t = Tensor::<G, 1>::from_floats([1.0, 2.0, 3.0], &WgpuDevice::default());
                (t * 2.0).sum().into_scalar()
            });
            match probe {
                Ok(v) if v == 12.0 => None,
                Ok(v) => Some(format!("the wgpu device computed 2·(1+2+3) = {v}")),
                Err(e) => Some(format!(
                    "no usable wgpu adapter (install a Vulkan driver, e.g. Debian's \
                     mesa-vulkan-drivers): {}",
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            }
        });
        skip_reason(reason.clone()).is_none()
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        root().join("tests/fixtures/backbone").join(name)
    }

    /// Logits of three backbone variants (Qwen3 with head norms and a tied head, Llama with
    /// biases, Llama-3 RoPE scaling): wgpu within 1e-4 of transformers and of the CPU backend.
    #[test]
    fn logits_match_transformers_and_cpu() {
        if !available() {
            return;
        }
        for name in ["qwen3_tied", "llama_untied_bias", "llama_tied_rope_llama3"] {
            let dir = fixture(name);
            let e = expected(&dir);
            let (ids, mask, want, [b, s, v]) = (e.ids, e.mask, e.logits, e.shape);
            let real = |l: &[f32]| -> Vec<f32> {
                (0..b * s)
                    .filter(|&i| mask[i] == 1)
                    .flat_map(|i| l[i * v..(i + 1) * v].to_vec())
                    .collect()
            };
            let want = real(&want);
            let gpu: Decoder<G> = load_hf(&dir, &Default::default()).unwrap();
            let cpu: Decoder<C> = load_hf(&dir, &Default::default()).unwrap();
            let lg = real(&to_vec(
                gpu.forward(int2(&ids, b, s), Some(int2(&mask, b, s))).0,
            ));
            let lc = real(&to_vec(
                cpu.forward(int2(&ids, b, s), Some(int2(&mask, b, s))).0,
            ));
            let (dh, dc) = (max_abs_diff(&lg, &want), max_abs_diff(&lg, &lc));
            eprintln!("{name}: wgpu {dh:.1e} from HF, {dc:.1e} from CPU");
            assert!(dh <= 1e-4, "{name}: wgpu logits {dh} from transformers");
            assert!(dc <= 1e-4, "{name}: wgpu logits {dc} from the CPU backend");
        }
    }

    /// Greedy decoding with the KV cache: the same tokens as on the CPU, log-probs within 1e-4, and
    /// only `[n, 3]` values read back per step (sampling on the device).
    #[test]
    fn greedy_decode_matches_cpu() {
        if !available() {
            return;
        }
        let dir = fixture("qwen3_untied");
        let gpu: Decoder<G> = load_hf(&dir, &Default::default()).unwrap();
        let cpu: Decoder<C> = load_hf(&dir, &Default::default()).unwrap();
        let prompts = vec![vec![5u32, 9, 2], vec![7, 1], vec![3, 3, 8, 4]];
        let opts = GenerateOptions {
            sampler: Sampler::Greedy,
            max_new_tokens: 6,
            stop: vec![],
            embed: None,
            pad: 0,
            seed: 0,
            first_stream: 0,
            repetition_penalty: 1.0,
        };
        let read = sampling_bytes_read();
        let rg = generate(&gpu, &prompts, &opts, |_| {}).unwrap();
        let bytes = sampling_bytes_read() - read;
        let (n, v) = (prompts.len() as u64, gpu.config().vocab_size as u64);
        eprintln!(
            "host bytes per decode step: {} (the [n, V] logits would be {})",
            bytes / 6,
            4 * n * v
        );
        assert_eq!(
            bytes,
            6 * 12 * n,
            "token, log-prob and entropy per row and step, no logits"
        );
        let rc = generate(&cpu, &prompts, &opts, |_| {}).unwrap();
        for (a, b) in rg.iter().zip(&rc) {
            assert_eq!(a.tokens, b.tokens, "greedy tokens");
            assert_eq!(a.tokens.len(), 6);
            let d = max_abs_diff(&a.logprobs, &b.logprobs);
            assert!(d <= 1e-4, "greedy log-probs differ by {d}");
            let d = max_abs_diff(&a.entropies, &b.entropies);
            assert!(d <= 1e-4, "entropies differ by {d}");
        }
    }

    /// Seeded rollouts, their log-probs against a full forward on each backend, and one GRPO
    /// loss with non-zero advantages and its gradient (`support::check`).
    #[test]
    fn rollouts_and_a_grpo_step_match_cpu() {
        if !available() {
            return;
        }
        let dir = fixture("qwen2_untied");
        let g = rollouts_and_grpo_step::<GA>(
            &load_hf(&dir, &Default::default()).unwrap(),
            &load_hf(&dir, &Default::default()).unwrap(),
        );
        let c = rollouts_and_grpo_step::<CA>(
            &load_hf(&dir, &Default::default()).unwrap(),
            &load_hf(&dir, &Default::default()).unwrap(),
        );
        assert_grpo_agree("wgpu vs cpu", &g, &c, 1e-4, 1e-3);
    }

    /// A training forward + backward (right-padded rows, LM-head log-probs in chunks of 4, 4
    /// and 1 — a last chunk of width 1 met burn-std 0.21's reshape bug, see `ops::token_logprobs`)
    /// on three backbone variants: the objective within 1e-5 relative, every gradient within 1e-3
    /// of its parameter's largest.
    #[test]
    fn training_gradients_match_cpu() {
        if !available() {
            return;
        }
        for name in ["qwen3_untied", "qwen2_untied", "llama_tied_rope_llama3"] {
            let dir = fixture(name);
            let (vg, gg) = training_step::<GA>(&load_hf(&dir, &Default::default()).unwrap());
            let (vc, gc) = training_step::<CA>(&load_hf(&dir, &Default::default()).unwrap());
            assert!(
                (vg - vc).abs() <= 1e-5 * vc.abs(),
                "{name}: objective {vg} vs {vc}"
            );
            let n = assert_grads_agree(name, &gg, &gc, 1e-3);
            eprintln!("{name}: objective {vg:.6} vs {vc:.6}; {n} gradients agree");
        }
    }

    /// A LoRA model (rank-2 adapters on all seven projections, fixed non-zero factors) on `B`.
    fn adapted<B: burn::prelude::Backend>(dir: &std::path::Path, dev: &B::Device) -> Decoder<B> {
        use burn::tensor::TensorData;
        use t1_train::model::{Lora, LoraSpec, Target};
        let spec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
            tokens: vec![],
        };
        let mut m = load_hf::<B>(dir, dev).unwrap().with_lora(&spec, 1).unwrap();
        let mut k = 0usize;
        let mut det = |r: usize, c: usize| -> Tensor<B, 2> {
            k += 1;
            let v: Vec<f32> = (0..r * c)
                .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * 0.05)
                .collect();
            Tensor::from_data(TensorData::new(v, [r, c]), dev)
        };
        for layer in &mut m.model.layers {
            let (a, p) = (&mut layer.self_attn, &mut layer.mlp);
            for (lin, lora) in [
                (&a.q_proj, &mut a.q_lora),
                (&a.k_proj, &mut a.k_lora),
                (&a.v_proj, &mut a.v_lora),
                (&a.o_proj, &mut a.o_lora),
                (&p.gate_proj, &mut p.gate_lora),
                (&p.up_proj, &mut p.up_lora),
                (&p.down_proj, &mut p.down_lora),
            ] {
                let [i, o] = lin.weight.val().dims();
                *lora = Some(Lora::from_factors(det(i, 2), det(2, o), 2.0));
            }
        }
        m
    }

    /// `lora.base_dtype` on wgpu: which half dtypes the device offers (printed: lavapipe's
    /// answer goes in the README), the dtype `half_dtype` picks for bf16 (f16 in its place
    /// where bf16 is missing), and where there is one, a LoRA objective and its adapter
    /// gradients with the frozen projections held in it near the f32 CPU model's.
    #[test]
    fn a_half_precision_frozen_base_on_wgpu() {
        use burn::prelude::Backend;
        use burn::tensor::{DType, FloatDType};
        if !available() {
            return;
        }
        let dev = WgpuDevice::default();
        let (bf16, f16) = (
            G::supports_dtype(&dev, DType::BF16),
            G::supports_dtype(&dev, DType::F16),
        );
        eprintln!("wgpu device supports bf16: {bf16}, f16: {f16}");
        let picked = t1_train::model::lora::half_dtype::<GA>(FloatDType::BF16, &dev);
        let dtype = match (bf16, f16) {
            (true, _) => FloatDType::BF16,
            (false, true) => FloatDType::F16,
            (false, false) => {
                let err = picked.expect_err("neither half dtype, yet one was picked");
                eprintln!("no half dtype here: {err}");
                return;
            }
        };
        assert_eq!(picked, Ok(dtype));
        let tol = if dtype == FloatDType::BF16 {
            5e-2
        } else {
            1e-2
        };
        for name in ["qwen3_untied", "llama_tied_rope_llama3"] {
            let dir = fixture(name);
            let gpu = adapted::<GA>(&dir, &dev).with_base_dtype(dtype).unwrap();
            let q = &gpu.model.layers[0].self_attn.q_proj.weight;
            assert_eq!(q.val().dtype(), DType::from(dtype), "{name}");
            let (vg, gg) = training_step::<GA>(&gpu);
            let (vc, gc) = training_step::<CA>(&adapted::<CA>(&dir, &Default::default()));
            let rel = (vg - vc).abs() / vc.abs();
            eprintln!(
                "{name}, base in {dtype:?}: objective {vg:.6} vs f32 CPU {vc:.6} ({rel:.1e})"
            );
            assert!(rel <= tol, "{name}: objective {vg} vs {vc}");
            let n = assert_grads_agree(name, &gg, &gc, tol);
            assert_eq!(
                n,
                2 * 7 * gpu.config().num_hidden_layers,
                "{name}: adapters only"
            );
        }
    }

    /// 2-step stage 1 / 2 / 3 runs of the tiny preset on the shipped data, in this process on
    /// each backend: every logged loss within 1e-4 relative, stage 3's rollouts identical.
    #[test]
    fn two_step_stage_runs_match_cpu() {
        if !available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let stages: [(&str, &str); 3] = [
            ("stage1", ""),
            (
                "stage2",
                "[stage2]\ntemperature = 0.05\ngroup_size = 3\nsft_weight = 0.1\n",
            ),
            (
                "stage3",
                "[stage3]\ngroup_size = 4\nbeta = 0.04\nmask_truncated = false\n\n\
                 [[stage3.rewards]]\nname = \"reciprocal_rank\"\n",
            ),
        ];
        let sets: Vec<String> = [
            "train.batch_size=2",
            "model.max_reasoning_tokens=8",
            "model.max_doc_tokens=24",
            "train.warmup_steps=1",
        ]
        .map(String::from)
        .to_vec();
        for (stage, extra) in stages {
            let run_on = |backend: &str| {
                let out = dir.path().join(backend);
                let path = config(
                    &dir.path().join(format!("{backend}-cfg")),
                    &out,
                    stage,
                    2,
                    extra,
                );
                let cfg = Config::load(&path, &sets).unwrap();
                let s = match (stage, backend) {
                    ("stage1", "wgpu") => {
                        t1_train::train::stage1::run::<GA>(&cfg, false, &Default::default())
                    }
                    ("stage2", "wgpu") => {
                        t1_train::train::stage2::run::<GA>(&cfg, false, &Default::default())
                    }
                    ("stage3", "wgpu") => {
                        t1_train::train::grpo::run::<GA>(&cfg, false, &Default::default())
                    }
                    ("stage1", _) => {
                        t1_train::train::stage1::run::<CA>(&cfg, false, &Default::default())
                    }
                    ("stage2", _) => {
                        t1_train::train::stage2::run::<CA>(&cfg, false, &Default::default())
                    }
                    _ => t1_train::train::grpo::run::<CA>(&cfg, false, &Default::default()),
                };
                let s = s.unwrap_or_else(|e| panic!("{stage} on {backend}: {e}"));
                assert_eq!(s.steps, 2, "{stage} on {backend}");
                let run = out.join(stage);
                let rollouts = std::fs::read_to_string(run.join("rollouts.jsonl")).ok();
                (scalar(&run, &format!("{stage}/loss")), rollouts)
            };
            let ((lg, rg), (lc, rc)) = (run_on("wgpu"), run_on("cpu"));
            if stage == "stage3" {
                let tokens = |r: &Option<String>| -> Vec<serde_json::Value> {
                    r.as_deref()
                        .expect("stage 3 writes rollouts.jsonl")
                        .lines()
                        .map(|l| {
                            serde_json::from_str::<serde_json::Value>(l).unwrap()["reasoning"]
                                .clone()
                        })
                        .collect()
                };
                let (tg, tc) = (tokens(&rg), tokens(&rc));
                assert_eq!(tg.len(), tc.len(), "stage 3 rollouts");
                for (i, (a, b)) in tg.iter().zip(&tc).enumerate() {
                    assert_eq!(a, b, "stage 3 rollout {i}: wgpu vs cpu");
                }
            }
            assert_eq!(lg.len(), 2, "{stage}: {lg:?}");
            assert_eq!(lg.len(), lc.len());
            for ((step, a), (_, b)) in lg.iter().zip(&lc) {
                assert!(
                    a.is_finite() && (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                    "{stage} step {step}: wgpu {a} vs cpu {b}"
                );
            }
            eprintln!("{stage}: wgpu {lg:?} vs cpu {lc:?}");
        }
    }
}
