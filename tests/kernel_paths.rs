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
use support::check::{
    assert_grads_agree, assert_grpo_agree, int2, rollouts_and_grpo_step, to_vec, training_step,
};
use support::{config, expected, max_abs_diff, root, scalar};
use t1_train::model::cpu::{Kernels, scoped};
use t1_train::model::{Decoder, load_hf};

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

/// A training forward + backward through the whole decoder (right-padded rows, the LM-head
/// log-probs in chunks): the objective and every parameter's gradient agree between the paths,
/// tied and untied heads, Qwen3's head norms and Llama-3's RoPE scaling included.
#[test]
fn training_gradients_agree_between_paths() {
    for name in ["qwen3_untied", "llama_tied_rope_llama3", "qwen2_untied"] {
        let model: Decoder<AD> = load_hf(&fixture(name), &Default::default()).unwrap();
        let ((vf, gf), (vg, gg)) = both(|_| training_step(&model));
        assert!(
            (vf - vg).abs() <= 1e-5 * vf.abs(),
            "{name}: objective {vf} vs {vg}"
        );
        let n = assert_grads_agree(name, &gf, &gg, 1e-4);
        eprintln!("{name}: objective {vf:.6} vs {vg:.6}; {n} gradients agree");
    }
}

/// Rollouts (prefill, cached decode, seeded sampling) and one GRPO loss with non-zero
/// advantages on them, its gradient included (`support::check`): the same tokens, log-probs
/// within 1e-4 on both paths and of each path's full forward, the loss within 1e-5 (absolute),
/// the gradient norm and every gradient within 1e-4 (relative).
#[test]
fn rollouts_and_a_grpo_step_agree_between_paths() {
    let dir = fixture("qwen2_untied");
    let plain: Decoder<B> = load_hf(&dir, &Default::default()).unwrap();
    let policy: Decoder<AD> = load_hf(&dir, &Default::default()).unwrap();
    let (f, g) = both(|_| rollouts_and_grpo_step(&plain, &policy));
    assert_grpo_agree("fused vs generic", &f, &g, 1e-4, 1e-4);
    assert!(
        (f.loss - g.loss).abs() <= 1e-5,
        "GRPO loss {} vs {}",
        f.loss,
        g.loss
    );
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
