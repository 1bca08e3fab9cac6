//! LoRA adapters (`model::lora`) through the trainer's optimizer: one AdamW step on an adapted
//! model moves the adapters and leaves every base parameter bit-identical, and the base weights
//! take no gradient (so no optimizer state). Runs on the fused CPU kernels and, under
//! `T1_KERNELS=generic`, on burn's generic ops.

mod support;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::model::{Decoder, DecoderConfig, LoraSpec, Target};
use t1_train::train::optim::adamw;

type AD = Autodiff<Flex>;

/// Every float parameter by module path.
fn params(m: &Decoder<AD>) -> Vec<(String, Vec<f32>)> {
    support::params(&m.valid())
}

#[test]
fn an_optimizer_step_moves_only_the_adapters() {
    let spec = LoraSpec {
        rank: 2,
        alpha: 4.0,
        use_rslora: false,
        targets: vec![Target::Q, Target::V, Target::Down],
    };
    let base: Decoder<AD> = DecoderConfig::tiny(64)
        .init_seeded(1, &Default::default())
        .unwrap();
    let mut model = base.with_lora(&spec, 2);
    let before = params(&model);
    let adapters = before.iter().filter(|(n, _)| n.contains("_lora")).count();
    assert_eq!(
        adapters,
        2 * 3 * model.config().num_hidden_layers,
        "A and B per target and layer"
    );
    let mut optim = adamw((0.9, 0.999), 1e-8, 0.01).init::<AD, Decoder<AD>>();
    let dev = Default::default();
    let ids = Tensor::<AD, 2, Int>::from_data(
        TensorData::new(
            (0..16).map(|i| (i * 5 + 1) % 64).collect::<Vec<i64>>(),
            [2, 8],
        ),
        &dev,
    );
    let targets = Tensor::<AD, 2, Int>::from_data(
        TensorData::new(
            (0..16).map(|i| (i * 3 + 2) % 64).collect::<Vec<i64>>(),
            [2, 8],
        ),
        &dev,
    );
    for _ in 0..2 {
        let hidden = model.hidden(ids.clone(), None);
        let loss = model
            .token_logprobs(hidden, targets.clone(), 8)
            .mean()
            .neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // A and B of every adapter, nothing else
        assert_eq!(grads.len(), adapters, "parameters with a gradient");
        model = optim.step(1e-2, model, grads);
    }
    let after = params(&model);
    assert_eq!(before.len(), after.len());
    let mut moved = 0;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if name.contains("_lora") {
            moved += usize::from(a != b);
        } else {
            assert_eq!(a, b, "{name}: a frozen base parameter changed");
        }
    }
    // B starts at zero and moves at the first step, A at the second (its gradient is B-weighted)
    assert_eq!(moved, adapters, "every adapter factor moved");
}
