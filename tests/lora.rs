//! LoRA adapters (`model::lora`) through the trainer's optimizer: one AdamW step on an adapted
//! model moves the adapters and leaves every base parameter bit-identical, and the base weights
//! take no gradient (so no optimizer state). Runs on the fused CPU kernels and, under
//! `T1_KERNELS=generic`, on burn's generic ops.

mod support;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::model::{Decoder, DecoderConfig, LoraSpec, Target, load_hf, load_peft, save_peft};
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
        tokens: Vec::new(),
    };
    let base: Decoder<AD> = DecoderConfig::tiny(64)
        .init_seeded(1, &Default::default())
        .unwrap();
    let mut model = base.with_lora(&spec, 2).unwrap();
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

fn fixture(path: &str) -> std::path::PathBuf {
    support::root().join("tests/fixtures").join(path)
}

/// The logits at a backbone fixture's real (unpadded) positions, from `[b, s, V]` values.
fn real_positions(base: &str, logits: &[f32]) -> Vec<f32> {
    let e = support::expected(&fixture(&format!("backbone/{base}")));
    let [b, s, v] = e.shape;
    (0..b * s)
        .filter(|&i| e.mask[i] == 1)
        .flat_map(|i| logits[i * v..(i + 1) * v].to_vec())
        .collect()
}

/// A model's logits on a backbone fixture's inputs (`scripts/golden_backbone.py`), real
/// positions only.
fn fixture_logits(model: &Decoder<Flex>, base: &str) -> Vec<f32> {
    let e = support::expected(&fixture(&format!("backbone/{base}")));
    let [b, s, _] = e.shape;
    let ids = support::check::int2::<Flex>(&e.ids, b, s);
    let mask = support::check::int2::<Flex>(&e.mask, b, s);
    real_positions(
        base,
        &support::check::to_vec(model.forward(ids, Some(mask)).0),
    )
}

/// PEFT's logits (`expected.safetensors` of an adapter fixture), real positions only.
fn peft_logits(dir: &std::path::Path, base: &str) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let all: Vec<f32> = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    real_positions(base, &all)
}

/// Every tensor of a safetensors file, by name.
fn tensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort();
    v
}

/// Adapters PEFT wrote (`scripts/golden_peft.py`, peft 0.21.2) on base fixtures — two with
/// trainable token rows (tied: PEFT's list form; untied: embedding and head rows): loaded here
/// they give PEFT's logits (≤ 1e-4); saved again they are PEFT's tensors, byte for byte, under
/// PEFT's keys; merged, the plain model gives the same logits.
#[test]
fn peft_adapters_round_trip_against_peft() {
    for (name, base, rank, alpha, rslora, targets, tokens) in [
        ("qwen3_tied_r4", "qwen3_tied", 4, 8.0, false, 7, vec![]),
        (
            "llama_untied_bias_rs2",
            "llama_untied_bias",
            2,
            16.0,
            true,
            3,
            vec![],
        ),
        (
            "qwen3_tied_tokens",
            "qwen3_tied",
            2,
            4.0,
            false,
            4,
            vec![3, 90, 95],
        ),
        (
            "qwen3_untied_tokens",
            "qwen3_untied",
            2,
            4.0,
            false,
            3,
            vec![95, 3, 50],
        ),
    ] {
        let dir = fixture(&format!("peft/{name}"));
        let plain: Decoder<Flex> =
            load_hf(&fixture(&format!("backbone/{base}")), &Default::default()).unwrap();
        let (adapted, spec) = load_peft(plain, &dir).unwrap();
        assert_eq!(
            (
                spec.rank,
                spec.alpha,
                spec.use_rslora,
                spec.targets.len(),
                spec.tokens.clone()
            ),
            (rank, alpha, rslora, targets, tokens),
            "{name}: adapter_config.json"
        );
        let want = peft_logits(&dir, base);
        let got = fixture_logits(&adapted, base);
        let d = support::max_abs_diff(&got, &want);
        eprintln!("{name}: logits {d:.1e} from PEFT's");
        assert!(d <= 1e-4, "{name}: logits {d} from PEFT's");
        let out = tempfile::tempdir().unwrap();
        save_peft(&adapted, &spec, base, out.path()).unwrap();
        assert_eq!(
            tensors(&out.path().join("adapter_model.safetensors")),
            tensors(&dir.join("adapter_model.safetensors")),
            "{name}: the saved adapter is PEFT's, key for key and byte for byte"
        );
        if let Some(to) = std::env::var_os("T1_PEFT_SAVE_TO") {
            // for `python3 scripts/golden_peft.py --check BASE DIR` (PEFT reading ours)
            let to = std::path::Path::new(&to).join(name);
            save_peft(&adapted, &spec, base, &to).unwrap();
            std::fs::copy(
                dir.join("expected.safetensors"),
                to.join("expected.safetensors"),
            )
            .unwrap();
        }
        let merged = adapted.merge_lora();
        let d = support::max_abs_diff(&fixture_logits(&merged, base), &want);
        assert!(d <= 1e-4, "{name}: merged logits {d} from PEFT's");
    }
}

/// What PEFT can write but t1-train cannot run is an error naming the file and the field (or
/// tensor), never a silent drop.
#[test]
fn unsupported_or_broken_adapters_are_refused_by_name() {
    let src = fixture("peft/qwen3_tied_r4");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    let base = || -> Decoder<Flex> {
        load_hf(&fixture("backbone/qwen3_tied"), &Default::default()).unwrap()
    };
    let try_config = |edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        load_peft(base(), dir.path()).unwrap_err().to_string()
    };
    for (field, value) in [
        ("peft_type", serde_json::json!("IA3")),
        ("r", serde_json::json!(0)),
        ("lora_alpha", serde_json::json!("eight")),
        ("target_modules", serde_json::json!("q_proj|v_proj")),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"])),
        ("use_dora", serde_json::json!(true)),
        ("bias", serde_json::json!("all")),
        ("layers_to_transform", serde_json::json!([0])),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        (
            "trainable_token_indices",
            serde_json::json!({"embed_tokens": [3], "lm_head": [4]}),
        ),
        ("trainable_token_indices", serde_json::json!({"wte": [3]})),
        ("trainable_token_indices", serde_json::json!([3, 3])),
        ("trainable_token_indices", serde_json::json!([96])),
    ] {
        let err = try_config(&|c| c[field] = value.clone());
        assert!(
            err.contains("adapter_config.json") && err.contains(field),
            "{field} = {value}: {err}"
        );
    }
    // a target in the config whose tensors the file lacks
    let err = try_config(&|c| c["target_modules"] = serde_json::json!(["q_proj", "k_proj"]));
    assert!(
        err.contains("is not in") && err.contains("target_modules"),
        "{err}"
    );
    // tensors: a missing factor, a wrong shape, a NaN, a foreign key
    let st_path = src.join("adapter_model.safetensors");
    let ts = tensors(&st_path);
    let edit_tensors = |f: &dyn Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)| -> String {
        let mut t = ts.clone();
        f(&mut t);
        let views: Vec<_> = t
            .iter()
            .map(|(k, s, d)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .unwrap(),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("adapter_model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::copy(
            src.join("adapter_config.json"),
            dir.path().join("adapter_config.json"),
        )
        .unwrap();
        load_peft(base(), dir.path()).unwrap_err().to_string()
    };
    let first = ts[0].0.clone();
    let err = edit_tensors(&|t| {
        t.remove(0);
    });
    assert!(err.contains(&first) && err.contains("missing"), "{err}");
    let err = edit_tensors(&|t| {
        let n = t[0].2.len();
        t[0].1 = vec![t[0].1.iter().product::<usize>()];
        assert_eq!(n % 4, 0);
    });
    assert!(err.contains(&first) && err.contains("shape"), "{err}");
    let err = edit_tensors(&|t| t[0].2[0..4].copy_from_slice(&f32::NAN.to_le_bytes()));
    assert!(err.contains(&first) && err.contains("not finite"), "{err}");
    let err = edit_tensors(&|t| {
        t.push((
            "base_model.model.lm_head.weight".into(),
            vec![1],
            vec![0; 4],
        ))
    });
    assert!(err.contains("base_model.model.lm_head.weight"), "{err}");
    // token rows the config does not list
    let rows = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";
    let err = edit_tensors(&|t| t.push((rows.into(), vec![1, 32], vec![0; 128])));
    assert!(err.contains(rows) && err.contains("does not list"), "{err}");
    // listed token rows missing from the file, or of the wrong shape
    let src = fixture("peft/qwen3_untied_tokens");
    let untied = tensors(&src.join("adapter_model.safetensors"));
    let head_rows = "base_model.model.lm_head.token_adapter.trainable_tokens_delta";
    for (edit, want) in [
        (
            Box::new(|t: &mut Vec<(String, Vec<usize>, Vec<u8>)>| t.retain(|x| x.0 != head_rows))
                as Box<dyn Fn(&mut Vec<_>)>,
            "missing",
        ),
        (
            Box::new(|t: &mut Vec<(String, Vec<usize>, Vec<u8>)>| {
                for x in t.iter_mut().filter(|x| x.0 == head_rows) {
                    x.1 = vec![6, 16];
                }
            }),
            "shape",
        ),
    ] {
        let mut t = untied.clone();
        edit(&mut t);
        let views: Vec<_> = t
            .iter()
            .map(|(k, s, d)| {
                let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
                (k.clone(), v.unwrap())
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("adapter_model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        std::fs::copy(
            src.join("adapter_config.json"),
            dir.path().join("adapter_config.json"),
        )
        .unwrap();
        let base: Decoder<Flex> =
            load_hf(&fixture("backbone/qwen3_untied"), &Default::default()).unwrap();
        let err = load_peft(base, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(head_rows) && err.contains(want),
            "{want}: {err}"
        );
    }
}
