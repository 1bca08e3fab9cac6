//! Work done the same way on two backends (or two kernel paths) and then compared: one
//! training forward + backward, and rollouts with a GRPO loss on them. Generic over the backend,
//! so `kernel_paths` (fused vs generic CPU ops) and `wgpu` (lavapipe vs CPU) run the very same
//! code. Self-contained (the benchmark's device check includes it with `#[path]`).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::loss::grpo::{GrpoParams, KlEstimator, LossType, grpo_loss};
use t1_train::model::{Decoder, GenerateOptions, Rollout, Sampler, generate};

/// Largest element-wise |a − b| (same lengths).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

pub fn int2<B: Backend>(v: &[i64], b: usize, s: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, s]), &Default::default())
}

/// Every parameter's gradient, by module path.
pub fn grads<AD: AutodiffBackend>(
    model: &Decoder<AD>,
    g: &AD::Gradients,
) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a, AD: AutodiffBackend> {
        grads: &'a AD::Gradients,
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }
    impl<AD: AutodiffBackend> ModuleVisitor<AD> for Collect<'_, AD> {
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
    let mut c = Collect::<AD> {
        grads: g,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Each parameter's gradients agree within `rel` of the largest of them; returns the number of
/// parameters compared.
pub fn assert_grads_agree(
    what: &str,
    f: &[(String, Vec<f32>)],
    g: &[(String, Vec<f32>)],
    rel: f32,
) -> usize {
    assert_eq!(f.len(), g.len(), "{what}: parameters with a gradient");
    for ((name, a), (name2, b)) in f.iter().zip(g) {
        assert_eq!(name, name2);
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(a, b);
        assert!(scale > 0.0, "{what}: {name} has a zero gradient");
        assert!(
            d <= rel * scale + 1e-7,
            "{what}: {name}: |Δgrad| {d:.2e} of {scale:.2e}"
        );
    }
    f.len()
}

/// A training objective `Σ w · log p(target)` over right-padded rows (the LM-head log-probs in
/// chunks of 4): its value and every parameter's gradient.
pub fn training_step<AD: AutodiffBackend>(model: &Decoder<AD>) -> (f32, Vec<(String, Vec<f32>)>) {
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
    let hidden = model.hidden(int2(&ids, b, s), Some(int2(&mask, b, s)));
    let lp = model.token_logprobs(hidden, int2(&targets, b, s), 4); // chunks of 4, 4 and 1
    let w = Tensor::<AD, 2>::from_data(TensorData::new(weights, [b, s]), &Default::default());
    let obj = (lp * w).sum();
    let value = to_vec(obj.clone())[0];
    (value, grads(model, &obj.backward()))
}

/// What [`rollouts_and_grpo_step`] returns.
pub struct GrpoCheck {
    pub rollouts: Vec<Rollout>,
    /// The same completions' log-probs from one full (uncached) forward of the policy.
    pub full_logprobs: Vec<Vec<f32>>,
    pub loss: f32,
    pub grad_norm: f64,
    pub grads: Vec<(String, Vec<f32>)>,
}

/// The sampling options of [`rollouts_and_grpo_step`]: temperature 1, so the rollouts'
/// log-probs are the policy's own and can be compared with a full forward.
pub fn rollout_options(seed: u64) -> GenerateOptions {
    GenerateOptions {
        sampler: Sampler::Random {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
        },
        max_new_tokens: 7,
        stop: vec![],
        embed: None,
        pad: 0,
        seed,
        first_stream: 0,
        repetition_penalty: 1.0,
    }
}

/// Rollouts (prefill, cached decode, seeded sampling) of 6 prompts of 2–5 tokens, then one GRPO
/// loss with non-zero advantages on them and its gradient. The old policy is the sampling
/// log-probs shifted by ±0.15 in a pattern over rows and positions, so the ratio is not 1, some
/// tokens clip and the advantage-weighted terms do not cancel.
pub fn rollouts_and_grpo_step<AD: AutodiffBackend>(
    plain: &Decoder<AD::InnerBackend>,
    policy: &Decoder<AD>,
) -> GrpoCheck {
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
    let opts = rollout_options(5);
    let adv = [1.0f32, -1.0, 0.5, -0.5, 2.0, -2.0];
    let rollouts = generate(plain, &prompts, &opts, |_| {}).unwrap();
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
    let full = to_vec(logps.clone());
    let full_logprobs = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| full[i * t..i * t + r.tokens.len()].to_vec())
        .collect();
    let dev = Default::default();
    let old: Vec<f32> = rollouts
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            (0..t).map(move |k| {
                r.logprobs.get(k).copied().unwrap_or(0.0) + 0.15 * (((i + k) % 3) as f32 - 1.0)
            })
        })
        .collect();
    let out = grpo_loss(
        logps,
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
    let grads = grads(policy, &out.loss.backward());
    let grad_norm = grads
        .iter()
        .flat_map(|(_, v)| v.iter())
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    GrpoCheck {
        rollouts,
        full_logprobs,
        loss,
        grad_norm,
        grads,
    }
}

/// Two [`GrpoCheck`]s agree: the same tokens, log-probs within `tol`, each side's cached
/// decode within `tol` of its own full forward, the loss within `tol` (absolute: a mean of O(1)
/// terms ρ·A that partly cancel), the gradient norm and every gradient within `rel`.
pub fn assert_grpo_agree(what: &str, a: &GrpoCheck, b: &GrpoCheck, tol: f32, rel: f32) {
    for (x, y) in a.rollouts.iter().zip(&b.rollouts) {
        assert_eq!(x.tokens, y.tokens, "{what}: the same seeded draws");
        let d = max_abs_diff(&x.logprobs, &y.logprobs);
        assert!(d <= tol, "{what}: rollout log-probs differ by {d}");
    }
    for (side, c) in [("first", a), ("second", b)] {
        for (r, full) in c.rollouts.iter().zip(&c.full_logprobs) {
            let d = max_abs_diff(&r.logprobs, full);
            assert!(
                d <= tol,
                "{what} ({side}): cached decode vs full forward log-probs differ by {d}"
            );
        }
    }
    assert!(
        a.rollouts.iter().any(|r| r.tokens != a.rollouts[0].tokens),
        "{what}: rows that differ"
    );
    assert!(
        a.loss.abs() > 1e-6,
        "{what}: a loss that can tell them apart"
    );
    assert!(
        (a.loss - b.loss).abs() <= tol,
        "{what}: GRPO loss {} vs {}",
        a.loss,
        b.loss
    );
    assert!(
        a.grad_norm > 0.0 && (a.grad_norm - b.grad_norm).abs() <= rel as f64 * a.grad_norm,
        "{what}: grad norm {} vs {}",
        a.grad_norm,
        b.grad_norm
    );
    assert_grads_agree(what, &a.grads, &b.grads, rel);
    eprintln!(
        "{what}: GRPO loss {:.6} vs {:.6}, grad norm {:.6} vs {:.6}",
        a.loss, b.loss, a.grad_norm, b.grad_norm
    );
}
