//! Stage 3's advantages and GRPO loss against TRL 1.16.0's formulas
//! (fixtures: `python3 scripts/golden_grpo.py`, a cited transcription of GRPOTrainer).

mod support;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use support::{floats, json_fixture};
use t1_train::advantage::{ScaleRewards, group_advantages};
use t1_train::loss::{GrpoParams, KlEstimator, LossType, grpo_loss};

type B = Autodiff<Flex>;

#[test]
fn advantages_equal_trl_for_every_scale_rewards() {
    let f = json_fixture("grpo/advantages.json");
    let rewards: Vec<Option<f32>> = f["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map(|v| v as f32))
        .collect();
    let g = f["group"].as_u64().unwrap() as usize;
    for (name, scale) in [
        ("group", ScaleRewards::Group),
        ("batch", ScaleRewards::Batch),
        ("none", ScaleRewards::None),
    ] {
        let got = group_advantages(&rewards, g, scale);
        let want = floats(&f["cases"][name]["advantages"]);
        for (i, (a, b)) in got.values.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "{name}[{i}]: {a} vs {b}");
        }
        let fz = f["cases"][name]["frac_zero_std"].as_f64().unwrap();
        assert!(
            (got.frac_zero_std - fz).abs() < 1e-12,
            "{name}: {} vs {fz}",
            got.frac_zero_std
        );
    }
    // unscorable rollouts and lone scorable ones get 0, whatever the scale
    let a = group_advantages(&rewards, g, ScaleRewards::Group);
    assert_eq!(a.values[9], 0.0);
    assert_eq!(a.values[14], 0.0);
}

#[test]
fn loss_equals_trl_for_every_loss_type_kl_and_clip() {
    let f = json_fixture("grpo/loss.json");
    let (n, t) = (
        f["n"].as_u64().unwrap() as usize,
        f["t"].as_u64().unwrap() as usize,
    );
    let dev = Default::default();
    let t2 = |k: &str| Tensor::<B, 2>::from_data(TensorData::new(floats(&f[k]), [n, t]), &dev);
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for c in cases {
        let loss_type = match c["loss_type"].as_str().unwrap() {
            "grpo" => LossType::Grpo,
            "bnpo" => LossType::Bnpo,
            "dr_grpo" => LossType::DrGrpo,
            _ => LossType::Dapo,
        };
        let kl = match c["kl"].as_str().unwrap() {
            "k1" => KlEstimator::K1,
            "k2" => KlEstimator::K2,
            _ => KlEstimator::K3,
        };
        let p = GrpoParams {
            epsilon_low: c["epsilon_low"].as_f64().unwrap(),
            epsilon_high: c["epsilon_high"].as_f64().unwrap(),
            beta: c["beta"].as_f64().unwrap(),
            kl,
            loss_type,
            max_completion_length: c["max_completion_length"].as_u64().unwrap() as usize,
            num_items: c["num_items"].as_f64().unwrap(),
        };
        let logps = t2("logps").require_grad();
        let adv = Tensor::<B, 1>::from_data(TensorData::new(floats(&f["advantages"]), [n]), &dev);
        let out = grpo_loss(
            logps.clone(),
            t2("old_logps"),
            Some(t2("ref_logps")),
            adv,
            t2("mask"),
            &p,
        );
        let tag = format!("{loss_type:?} beta {} {kl:?}", p.beta);
        let got = out
            .loss
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()[0];
        let want = c["loss"].as_f64().unwrap() as f32;
        assert!((got - want).abs() < 1e-5, "{tag}: loss {got} vs {want}");
        let grads = out.loss.backward();
        let g: Vec<f32> = logps
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let gw = floats(&c["grad_logps"]);
        let worst = g
            .iter()
            .zip(&gw)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{tag}: gradient differs by {worst}");
        for (k, v) in [
            ("kl", out.kl),
            ("clip_low", out.clip_low),
            ("clip_high", out.clip_high),
            ("clip_region", out.clip_region),
        ] {
            let w = c[format!("stat_{k}")].as_f64().unwrap();
            assert!((v - w).abs() < 1e-5, "{tag}: {k} {v} vs {w}");
        }
    }
    // the fixture exercises both clip sides
    assert!(cases[0]["stat_clip_low"].as_f64().unwrap() > 0.0);
    assert!(cases[0]["stat_clip_high"].as_f64().unwrap() > 0.0);
}

#[test]
fn one_iteration_means_ratio_one_and_the_policy_gradient() {
    // μ = 1: old = logp.detach(), so ρ = 1, nothing clips, and ∂L/∂logp = −A / (tokens) per token (bnpo)
    let dev = Default::default();
    let lp = Tensor::<B, 2>::from_data(
        TensorData::new(vec![-1.0f32, -2.0, -0.5, -0.1], [2, 2]),
        &dev,
    )
    .require_grad();
    let adv = Tensor::<B, 1>::from_data(TensorData::new(vec![2.0f32, -1.0], [2]), &dev);
    let mask = Tensor::<B, 2>::ones([2, 2], &dev);
    let p = GrpoParams {
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        kl: KlEstimator::K3,
        loss_type: LossType::Bnpo,
        max_completion_length: 2,
        num_items: 4.0,
    };
    let out = grpo_loss(lp.clone(), lp.clone().detach(), None, adv, mask, &p);
    assert_eq!((out.clip_low, out.clip_high, out.kl), (0.0, 0.0, 0.0));
    let g: Vec<f32> = lp
        .grad(&out.loss.backward())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    assert_eq!(g, vec![-0.5, -0.5, 0.25, 0.25]);
}
