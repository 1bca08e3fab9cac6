//! Per-layer activation checkpointing (`model::recompute`, `train.gradient_checkpointing`): the
//! loss is bit-identical and every parameter's gradient equals the one without recomputation, for
//! tied and untied models, full fine-tuning and LoRA with trainable token rows, a loss reading
//! two forwards (as stage 2's query and document views do); a stage-1 run and a LoRA stage-3 run
//! with it end where runs without it end. Runs on the fused CPU kernels and, under `T1_KERNELS=generic`, on
//! burn's generic ops.

mod support;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use support::{config, max_param_diff, params, t1};
use t1_train::model::{Decoder, DecoderConfig, LoraSpec, Target, load_hf};

type AD = Autodiff<Flex>;

/// `[b, s]` ids `(i·mul + add) mod v`, with the trainable token ids 1, 90, 95 among them.
fn ids(v: i64, b: usize, s: usize, mul: i64, add: i64) -> Tensor<AD, 2, Int> {
    let mut data: Vec<i64> = (0..(b * s) as i64).map(|i| (i * mul + add) % v).collect();
    data[..3].copy_from_slice(&[1, 90 % v, 95 % v]);
    Tensor::from_data(TensorData::new(data, [b, s]), &Default::default())
}

/// A loss over two forwards (different batches and lengths, right padding in one): token
/// log-probs of the first, and the dot product of both forwards' last states.
fn loss(model: &Decoder<AD>) -> Tensor<AD, 1> {
    let v = model.config().vocab_size as i64;
    let dev = Default::default();
    let a = ids(v, 3, 9, 7, 3);
    let mask: Vec<i64> = (0..27)
        .map(|i| i64::from(i % 9 < [9, 6, 4][i / 9]))
        .collect();
    let mask = Tensor::<AD, 2, Int>::from_data(TensorData::new(mask, [3, 9]), &dev);
    let h = model.hidden(a, Some(mask));
    let lp = model.token_logprobs(h.clone(), ids(v, 3, 9, 5, 1), 4);
    let h2 = model.hidden(ids(v, 3, 5, 3, 2), None);
    let d = h.dims()[2];
    let last = h.slice([0..3, 3..4, 0..d]).reshape([3, d]);
    let last2 = h2.slice([0..3, 4..5, 0..d]).reshape([3, d]);
    -lp.mean() + (last * last2).sum().mul_scalar(0.01)
}

/// Every parameter's gradient by module path (parameters without one are left out).
fn grads(model: &Decoder<AD>, g: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        g: &'a GradientsParams,
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
            if let Some(t) = self.g.get::<Flex, D>(p.id) {
                let v = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
                self.out.push((self.path.join("."), v));
            }
        }
    }
    let mut c = Collect {
        g,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

fn check(tied: bool, lora: bool) {
    let what = format!("tied {tied}, lora {lora}");
    let mut c = DecoderConfig::tiny(96);
    c.tie_word_embeddings = tied;
    let mut model: Decoder<AD> = c.init_seeded(3, &Default::default()).unwrap();
    if lora {
        let spec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            use_rslora: false,
            targets: vec![Target::Q, Target::V, Target::Up, Target::Down],
            tokens: vec![1, 90, 95],
        };
        model = model.with_lora(&spec, 5).unwrap();
        // B = 0 at creation: one plain step's worth of change so the adapters matter
        let g = model.backward(loss(&model));
        model = burn::optim::Optimizer::step(
            &mut t1_train::train::optim::adamw((0.9, 0.999), 1e-8, 0.0).init::<AD, Decoder<AD>>(),
            1e-2,
            model,
            g,
        );
    }
    let plain = model.clone().with_recompute(false);
    let ck = model.with_recompute(true);
    let (l0, l1) = (loss(&plain), loss(&ck));
    assert_eq!(
        ck.recompute.as_ref().unwrap().recorded(),
        2,
        "{what}: both forwards recorded"
    );
    let (v0, v1) = (
        l0.clone().into_scalar().to_string(),
        l1.clone().into_scalar().to_string(),
    );
    assert_eq!(v0, v1, "{what}: the loss");
    let g0 = grads(&plain, &plain.backward(l0));
    let g1 = grads(&ck, &ck.backward(l1));
    assert_eq!(
        ck.recompute.as_ref().unwrap().recorded(),
        0,
        "{what}: replayed"
    );
    let names0: Vec<&String> = g0.iter().map(|(n, _)| n).collect();
    let names1: Vec<&String> = g1.iter().map(|(n, _)| n).collect();
    assert_eq!(names0, names1, "{what}: parameters with a gradient");
    let layers = plain.config().num_hidden_layers;
    let expected = if lora {
        // A and B per target per layer, and the token rows (embedding; untied: head too)
        layers * 4 * 2 + 1 + usize::from(!tied)
    } else {
        params(&burn::module::AutodiffModule::valid(&plain)).len()
    };
    assert_eq!(g0.len(), expected, "{what}: parameters with a gradient");
    for ((name, a), (_, b)) in g0.iter().zip(&g1) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0, "{what}: {name} has a zero gradient");
        assert!(
            d <= 1e-5 * scale + 1e-8,
            "{what}: {name}: |Δgrad| {d:.2e} of {scale:.2e}"
        );
    }
}

#[test]
fn recomputed_gradients_equal_the_stored_ones() {
    for tied in [true, false] {
        for lora in [false, true] {
            check(tied, lora);
        }
    }
}

#[test]
fn a_stage1_run_with_gradient_checkpointing_ends_where_one_without_ends() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, on: bool| {
        let cfg = config(&dir.path().join(name), &dir.path().join(name), "s1", 6, "");
        let o = t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("train.gradient_checkpointing={on}"),
            "--set",
            "train.batch_size=4",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir.path().join(name).join("s1")
    };
    let (a, b) = (run("plain", false), run("ck", true));
    support::assert_same_scalars(&a, &b, "stage1/loss", 6, 1e-6, 0.0);
    let dev = Default::default();
    let last = "checkpoints/step-000006";
    let wa = params(&load_hf::<Flex>(&a.join(last), &dev).unwrap());
    let wb = params(&load_hf::<Flex>(&b.join(last), &dev).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
    // and the resolved config says it was on
    let resolved = std::fs::read_to_string(b.join("config.resolved.toml")).unwrap();
    assert!(
        resolved.contains("gradient_checkpointing = true"),
        "{resolved}"
    );
}

#[test]
fn a_lora_stage3_with_gradient_checkpointing_ends_where_one_without_ends() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[stage3]
group_size = 2
iterations = 2
beta = 0.04
mask_truncated = false

[[stage3.rewards]]
name = "reciprocal_rank"

[lora]
enabled = true
rank = 4
alpha = 8
"#;
    let run = |name: &str, on: bool| {
        let cfg = config(
            &dir.path().join(name),
            &dir.path().join(name),
            "s3",
            4,
            extra,
        );
        let o = t1(&[
            "stage3",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("train.gradient_checkpointing={on}"),
            "--set",
            "train.batch_size=2",
            "--set",
            "model.max_reasoning_tokens=12",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir.path().join(name).join("s3")
    };
    let (a, b) = (run("plain", false), run("ck", true));
    for tag in [
        "stage3/loss",
        "stage3/reward",
        "stage3/kl",
        "stage3/grad_norm",
    ] {
        support::assert_same_scalars(&a, &b, tag, 4, 1e-5, 1e-3);
    }
    let dev = Default::default();
    let last = "checkpoints/step-000004";
    let wa = params(&t1_train::model::load_model::<Flex>(&a.join(last), &dev).unwrap());
    let wb = params(&t1_train::model::load_model::<Flex>(&b.join(last), &dev).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}
