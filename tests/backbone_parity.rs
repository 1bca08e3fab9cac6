//! Logit parity with Hugging Face transformers on tiny random Qwen3 / Qwen2 / Llama checkpoints
//! (tied and untied, biases, Llama-3 RoPE scaling, right and left padding), and the HF round trip.
//! Fixtures: `python3 scripts/golden_backbone.py` (versions in tests/fixtures/backbone/VERSIONS).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use t1_train::model::{Decoder, load_hf, save_hf};

mod support;
use support::{Expected, expected};

type B = Flex;

const VARIANTS: [&str; 8] = [
    "qwen3_tied",
    "qwen3_tied_sharded", // eight shards + model.safetensors.index.json
    "qwen3_tied_bf16",    // bf16 on disk, cast to f32 on load
    "qwen3_untied",
    "qwen2_tied",
    "qwen2_untied",
    "llama_tied_rope_llama3",
    "llama_untied_bias",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/backbone")
        .join(name)
}

fn int2(v: &[i64], b: usize, s: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, s]), &Default::default())
}

/// Max |ours - HF| over real (unpadded) positions, using explicit positions and a padding mask.
fn max_diff(model: &Decoder<B>, e: &Expected) -> f32 {
    let [b, s, v] = e.shape;
    let pad = int2(&e.mask, b, s).equal_elem(0);
    let hidden = model.hidden_states(int2(&e.ids, b, s), int2(&e.positions, b, s), Some(pad));
    let ours: Vec<f32> = model.logits(hidden).into_data().to_vec().unwrap();
    let mut worst = 0f32;
    for i in 0..b * s {
        if e.mask[i] == 0 {
            continue;
        }
        for j in 0..v {
            worst = worst.max((ours[i * v + j] - e.logits[i * v + j]).abs());
        }
    }
    worst
}

#[test]
fn logits_match_transformers_within_1e_4() {
    let device = Default::default();
    for name in VARIANTS {
        let dir = fixture(name);
        let model: Decoder<B> = load_hf(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = expected(&dir);
        let d = max_diff(&model, &e);
        eprintln!("{name}: max |Δlogit| = {d:.2e}");
        assert!(d <= 1e-4, "{name}: max abs logit difference {d}");
        // logits must not be trivially small: parity at 1e-4 has to mean something
        assert!(e.logits.iter().map(|x| x.abs()).fold(0.0, f32::max) > 0.1);
    }
}

#[test]
fn hf_style_forward_computes_positions_from_the_mask() {
    let dir = fixture("qwen3_untied");
    let model: Decoder<B> = load_hf(&dir, &Default::default()).unwrap();
    let e = expected(&dir);
    let [b, s, v] = e.shape;
    let (logits, _) = model.forward(int2(&e.ids, b, s), Some(int2(&e.mask, b, s)));
    let ours: Vec<f32> = logits.into_data().to_vec().unwrap();
    for i in (0..b * s).filter(|&i| e.mask[i] == 1) {
        for j in 0..v {
            assert!((ours[i * v + j] - e.logits[i * v + j]).abs() <= 1e-4);
        }
    }
}

#[test]
fn saved_model_reloads_to_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["qwen3_tied", "llama_untied_bias"] {
        let dir = fixture(name);
        let model: Decoder<B> = load_hf(&dir, &Default::default()).unwrap();
        // `T1_ROUNDTRIP_OUT=DIR` keeps the saved folders for scripts/check_hf_roundtrip.py
        let out = match std::env::var_os("T1_ROUNDTRIP_OUT") {
            Some(d) => PathBuf::from(d).join(name),
            None => tmp.path().join(name),
        };
        save_hf(&model, &out).unwrap();
        let again: Decoder<B> = load_hf(&out, &Default::default()).unwrap();
        let e = expected(&dir);
        assert!(max_diff(&again, &e) <= 1e-4);
        // the HF key names are what transformers expects
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names: Vec<String> = st.names().into_iter().map(String::from).collect();
        assert!(
            names.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"model.norm.weight".to_string()),
            "{names:?}"
        );
        assert_eq!(
            st.tensor("model.layers.0.mlp.up_proj.weight")
                .unwrap()
                .shape(),
            &[64, 32]
        );
        // every tensor transformers wrote comes back with the same name, shape and bytes
        let orig_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let orig = safetensors::SafeTensors::deserialize(&orig_bytes).unwrap();
        let mut orig_names: Vec<String> = orig.names().into_iter().map(String::from).collect();
        let mut saved = names.clone();
        orig_names.sort();
        saved.sort();
        assert_eq!(saved, orig_names, "{name}: key sets differ");
        for k in &orig_names {
            let (a, b) = (orig.tensor(k).unwrap(), st.tensor(k).unwrap());
            assert_eq!(a.shape(), b.shape(), "{name}: {k}");
            assert!(a.data() == b.data(), "{name}: {k} values differ");
        }
    }
}

#[test]
fn checkpoint_problems_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    // config says untied, checkpoint is tied: lm_head.weight is missing
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("qwen3_tied").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(fixture("qwen3_tied").join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let err = load_hf::<B>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lm_head.weight") && err.contains("missing"),
        "{err}"
    );
    // wrong shapes: a config with a different hidden size
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 48"),
    )
    .unwrap();
    let err = load_hf::<B>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mlp") && err.to_lowercase().contains("shape"),
        "{err}"
    );
    // unexpected tensors: a qwen3 checkpoint read as llama has q_norm/k_norm left over
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"qwen3\"", "\"llama\""),
    )
    .unwrap();
    let err = load_hf::<B>(&dir, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("_norm"), "{err}");
}
