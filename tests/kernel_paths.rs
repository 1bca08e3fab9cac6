//! The CPU backend's kernels (`model::cpu`) against burn's generic ops — the path every GPU
//! backend runs — in one process: each test does the same work under both
//! (`cpu::scoped(Kernels::Fused | Kernels::Generic, …)`, or `T1_KERNELS` for a spawned run) and
//! compares. `.ci/run` also reruns the parity, generation, loss and stage suites with
//! `T1_KERNELS=generic`, so the generic path meets the HF fixtures and goldens on its own.
//!
//! Tolerances: the kernels sum in other orders than burn's ops, so values agree to f32 rounding
//! of the sums: logits within 2e-5 (and each path within 1e-4 of transformers), gradients within
//! 1e-4 of the largest gradient of their parameter, losses within 1e-5; logged stage
//! losses within 1e-4 relative (a few optimizer steps compound the rounding).

mod support;

use burn::backend::{Autodiff, Flex};
use burn::module::{ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use support::{config, expected, max_abs_diff, root, scalar};
use t1_train::loss::grpo::{GrpoParams, KlEstimator, LossType, grpo_loss};
use t1_train::model::cpu::{Kernels, scoped};
use t1_train::model::{Decoder, GenerateOptions, Sampler, generate, load_hf};

type B = Flex;
type AD = Autodiff<Flex>;

fn fixture(name: &str) -> std::path::PathBuf {
    root().join("tests/fixtures/backbone").join(name)
}

fn both<R>(f: impl Fn(Kernels) -> R) -> (R, R) {
    (
        scoped(Kernels::Fused, || f(Kernels::Fused)),
        scoped(Kernels::Generic, || f(Kernels::Generic)),
    )
}

fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn int2<Bk: Backend>(v: &[i64], b: usize, s: usize) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, s]), &Default::default())
}

/// Logits of every backbone variant, inference and autodiff forwards: each path within 1e-4 of
/// transformers, the two within 2e-5 of each other, and not bit-identical (the switch switches).
#[test]
fn logits_agree_between_paths_and_with_transformers() {
    for name in [
        "qwen3_tied",
        "qwen3_untied",
        "qwen2_untied",
        "llama_tied_rope_llama3",
        "llama_untied_bias",
    ] {
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
        let plain: Decoder<B> = load_hf(&dir, &Default::default()).unwrap();
        let tracked: Decoder<AD> = load_hf(&dir, &Default::default()).unwrap();
        let (fused, generic) = both(|_| {
            let m = Some(int2::<B>(&mask, b, s));
            let l = real(&to_vec(plain.forward(int2(&ids, b, s), m).0));
            let m = Some(int2::<AD>(&mask, b, s));
            let lt = real(&to_vec(tracked.forward(int2(&ids, b, s), m).0));
            (l, lt)
        });
        for (what, f, g) in [
            ("inference", &fused.0, &generic.0),
            ("autodiff", &fused.1, &generic.1),
        ] {
            let (df, dg, dfg) = (
                max_abs_diff(f, &want),
                max_abs_diff(g, &want),
                max_abs_diff(f, g),
            );
            eprintln!(
                "{name} {what}: fused {df:.1e}, generic {dg:.1e} from HF; fused−generic {dfg:.1e}"
            );
            assert!(
                df <= 1e-4 && dg <= 1e-4,
                "{name} {what}: {df} / {dg} from HF"
            );
            assert!(dfg <= 2e-5, "{name} {what}: paths differ by {dfg}");
            assert!(
                f != g,
                "{name} {what}: bit-identical, so one path did not run"
            );
        }
    }
}

/// Every parameter's gradient, by module path.
fn grads(
    model: &Decoder<AD>,
    g: &<AD as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients,
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor<AD> for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AD, D>>) {
            if let Some(g) = p.val().grad(self.grads) {
                self.out.push((self.path.join("."), to_vec(g)));
            }
        }
    }
    let mut c = Collect {
        grads: g,
        path: Vec::new(),
        out: Vec::new(),
    };
    burn::module::Module::visit(model, &mut c);
    c.out
}

/// Each parameter's gradients agree within 1e-4 of the largest of them; returns the number of
/// parameters compared.
fn assert_grads_agree(what: &str, f: &[(String, Vec<f32>)], g: &[(String, Vec<f32>)]) -> usize {
    assert_eq!(f.len(), g.len(), "{what}: parameters with a gradient");
    for ((name, a), (name2, b)) in f.iter().zip(g) {
        assert_eq!(name, name2);
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(a, b);
        assert!(scale > 0.0, "{what}: {name} has a zero gradient");
        assert!(
            d <= 1e-4 * scale + 1e-7,
            "{what}: {name}: |Δgrad| {d:.2e} of {scale:.2e}"
        );
    }
    f.len()
}

/// A training forward + backward through the whole decoder (right-padded rows, the LM-head
/// log-probs in chunks): the objective and every parameter's gradient agree between the paths,
/// tied and untied heads, Qwen3's head norms and Llama-3's RoPE scaling included.
#[test]
fn training_gradients_agree_between_paths() {
    for name in ["qwen3_untied", "llama_tied_rope_llama3", "qwen2_untied"] {
        let model: Decoder<AD> = load_hf(&fixture(name), &Default::default()).unwrap();
        let vocab = model.config().vocab_size as i64;
        let (b, s) = (3, 9);
        let ids: Vec<i64> = (0..b * s).map(|i| (i as i64 * 7 + 3) % vocab).collect();
        let lens = [9, 6, 4];
        let mask: Vec<i64> = (0..b * s).map(|i| i64::from(i % s < lens[i / s])).collect();
        let targets: Vec<i64> = (0..b * s).map(|i| (i as i64 * 5 + 1) % vocab).collect();
        let weights: Vec<f32> = (0..b * s)
            .map(|i| {
                if mask[i] == 1 {
                    1.0 + (i % 4) as f32 * 0.25
                } else {
                    0.0
                }
            })
            .collect();
        let run = |_| {
            let hidden = model.hidden(int2(&ids, b, s), Some(int2(&mask, b, s)));
            let lp = model.token_logprobs(hidden, int2(&targets, b, s), 4);
            let w = Tensor::<AD, 2>::from_data(
                TensorData::new(weights.clone(), [b, s]),
                &Default::default(),
            );
            let obj = (lp * w).sum();
            let value = to_vec(obj.clone())[0];
            (value, grads(&model, &obj.backward()))
        };
        let ((vf, gf), (vg, gg)) = both(run);
        assert!(
            (vf - vg).abs() <= 1e-5 * vf.abs(),
            "{name}: objective {vf} vs {vg}"
        );
        let n = assert_grads_agree(name, &gf, &gg);
        eprintln!("{name}: objective {vf:.6} vs {vg:.6}; {n} gradients agree");
    }
}

/// Rollouts (prefill, cached decode, seeded sampling) and one GRPO loss with non-zero advantages
/// on them (the sampling log-probs as the old policy, so the ratio is not 1), its gradient norm included: the same tokens and log-probs within 1e-4 on both paths,
/// the loss within 1e-5 (absolute), the gradient norm within 1e-4 (relative).
#[test]
fn rollouts_and_a_grpo_step_agree_between_paths() {
    let dir = fixture("qwen2_untied");
    let plain: Decoder<B> = load_hf(&dir, &Default::default()).unwrap();
    let policy: Decoder<AD> = load_hf(&dir, &Default::default()).unwrap();
    let vocab = plain.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = [3usize, 5, 3, 5, 2, 2]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n as u32)
                .map(|j| (j * 11 + (i as u32 / 2) * 5 + 1) % vocab)
                .collect()
        })
        .collect();
    let opts = GenerateOptions {
        sampler: Sampler::Random {
            temperature: 1.2,
            top_k: None,
            top_p: 1.0,
        },
        max_new_tokens: 7,
        stop: vec![],
        embed: None,
        pad: 0,
        seed: 5,
    };
    let adv = [1.0f32, -1.0, 0.5, -0.5, 2.0, -2.0];
    let run = |_| {
        let rollouts = generate(&plain, &prompts, &opts, |_| {}).unwrap();
        // the completions' log-probs under the policy, with gradient: prompt + completion rows,
        // right-padded to the longest
        let n = rollouts.len();
        let t = opts.max_new_tokens;
        let s = prompts.iter().map(|p| p.len()).max().unwrap() + t;
        let (mut ids, mut mask, mut targets, mut keep) = (
            vec![0i64; n * s],
            vec![0i64; n * s],
            vec![0i64; n * s],
            vec![0f32; n * t],
        );
        for (i, (p, r)) in prompts.iter().zip(&rollouts).enumerate() {
            let seq: Vec<u32> = p.iter().chain(&r.tokens).copied().collect();
            for (j, &tok) in seq.iter().enumerate() {
                ids[i * s + j] = tok as i64;
                mask[i * s + j] = 1;
                if j + 1 < seq.len() {
                    targets[i * s + j] = seq[j + 1] as i64;
                }
            }
            for k in 0..r.tokens.len() {
                keep[i * t + k] = 1.0;
            }
        }
        let hidden = policy.hidden(int2(&ids, n, s), Some(int2(&mask, n, s)));
        let lp_all = policy.token_logprobs(hidden, int2(&targets, n, s), 8); // [n, s]
        // completion token k of row i is predicted at position len(prompt) − 1 + k
        let rows: Vec<Tensor<AD, 2>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let lo = p.len() - 1;
                lp_all.clone().slice([i..i + 1, lo..lo + t])
            })
            .collect();
        let logps = Tensor::cat(rows, 0); // [n, t]
        let dev = Default::default();
        // the sampling policy's log-probs (at temperature 1.2) as the old policy: ρ ≠ 1, some clip
        let old: Vec<f32> = rollouts
            .iter()
            .flat_map(|r| (0..t).map(|k| r.logprobs.get(k).copied().unwrap_or(0.0)))
            .collect();
        let out = grpo_loss(
            logps.clone(),
            Tensor::from_data(TensorData::new(old, [n, t]), &dev),
            None,
            Tensor::from_data(TensorData::new(adv.to_vec(), [n]), &dev),
            Tensor::from_data(TensorData::new(keep.clone(), [n, t]), &dev),
            &GrpoParams {
                epsilon_low: 0.2,
                epsilon_high: 0.28,
                beta: 0.0,
                kl: KlEstimator::K3,
                loss_type: LossType::Bnpo,
                max_completion_length: t,
                num_items: keep.iter().sum::<f32>() as f64,
            },
        );
        let loss = to_vec(out.loss.clone())[0];
        let g = grads(&policy, &out.loss.backward());
        let norm = g
            .iter()
            .flat_map(|(_, v)| v.iter())
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        (rollouts, loss, norm, g)
    };
    let ((rf, lf, nf, gf), (rg, lg, ng, gg)) = both(run);
    for (a, b) in rf.iter().zip(&rg) {
        assert_eq!(a.tokens, b.tokens, "the same seeded draws on both paths");
        let d = max_abs_diff(&a.logprobs, &b.logprobs);
        assert!(d <= 1e-4, "rollout log-probs differ by {d}");
    }
    assert!(rf.iter().any(|r| r.tokens != rf[0].tokens));
    assert!(lf.abs() > 1e-6, "a loss that can tell the paths apart");
    // the loss is a mean of O(1) terms ρ·A that partly cancel: an absolute bound
    assert!((lf - lg).abs() <= 1e-5, "GRPO loss {lf} vs {lg}");
    assert!(
        nf > 0.0 && (nf - ng).abs() <= 1e-4 * nf,
        "grad norm {nf} vs {ng}"
    );
    assert_grads_agree("grpo", &gf, &gg);
    eprintln!("GRPO loss {lf:.6} vs {lg:.6}, grad norm {nf:.6} vs {ng:.6}");
}

/// Short stage 1 / 2 / 3 / latent runs of the binary under `T1_KERNELS=fused` and `=generic`:
/// every logged loss within 1e-4 (relative), stage 3's sampled rollouts identical.
#[test]
fn short_stage_runs_agree_between_paths() {
    let dir = tempfile::tempdir().unwrap();
    let stages: [(&str, &str, &str, &[&str]); 4] = [
        ("stage1", "stage1/loss", "", &[]),
        (
            "stage2",
            "stage2/loss",
            "[stage2]\ntemperature = 0.05\ngroup_size = 3\nsft_weight = 0.1\n",
            &[],
        ),
        (
            "stage3",
            "stage3/loss",
            "[stage3]\ngroup_size = 4\nbeta = 0.04\nmask_truncated = false\n\n[[stage3.rewards]]\nname = \"reciprocal_rank\"\n",
            &[
                "train.batch_size=2",
                "model.max_reasoning_tokens=10",
                "train.eval_every=3",
            ],
        ),
        (
            "latent",
            "latent/loss",
            "[latent]\nsteps = 2\ngroup_size = 3\n",
            &[],
        ),
    ];
    for (stage, tag, extra, sets) in stages {
        let run_with = |k: &str| {
            let out = dir.path().join(k);
            let cfg = config(&dir.path().join(format!("{k}-cfg")), &out, stage, 3, extra);
            let mut args = vec![
                stage.to_string(),
                "--config".into(),
                cfg.display().to_string(),
            ];
            for s in sets {
                args.extend(["--set".to_string(), s.to_string()]);
            }
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_t1-train"))
                .args(&args)
                .env("T1_KERNELS", k)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{stage} ({k}): {err}");
            assert!(
                err.contains(&format!("kernels: {k}")),
                "{stage} ({k}) logs its kernels: {err}"
            );
            let run = out.join(stage);
            let rollouts = std::fs::read_to_string(run.join("rollouts.jsonl")).ok();
            (scalar(&run, tag), rollouts)
        };
        let ((lf, rf), (lg, rg)) = (run_with("fused"), run_with("generic"));
        assert_eq!(lf.len(), 3, "{stage}: {lf:?}");
        assert_eq!(lf.len(), lg.len());
        for ((step, a), (_, b)) in lf.iter().zip(&lg) {
            assert!(
                a.is_finite() && (a - b).abs() <= 1e-4 * a.abs().max(1e-3),
                "{stage} step {step}: {a} vs {b}"
            );
        }
        if stage == "stage3" {
            let tokens = |r: &Option<String>| -> Vec<serde_json::Value> {
                r.as_deref()
                    .expect("stage 3 writes rollouts.jsonl")
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["reasoning"].clone()
                    })
                    .collect()
            };
            assert_eq!(
                tokens(&rf),
                tokens(&rg),
                "stage 3 rollouts differ between paths"
            );
        }
        eprintln!("{stage}: {lf:?} vs {lg:?}");
    }
}
