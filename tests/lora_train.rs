//! LoRA through the stages (`[lora]`, issue 22): the trainer updates only the adapters and the
//! T1 token rows and the base stays bit-identical; checkpoints and `best/` are PEFT adapter
//! folders naming a base folder; a LoRA stage 3 interrupted and resumed ends where an
//! uninterrupted one ends (the KL reference is the base under the adapters); a curriculum hands
//! each LoRA stage's `best/` to the next as its merged model; `t1-train merge` writes the merged
//! HF folder; bad `[lora]` settings are refused by key.

mod support;

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor, TensorData};
use support::{config, max_param_diff, params, scalar, t1};
use t1_train::config::Config;
use t1_train::model::{Decoder, load_hf, load_model};
use t1_train::train::common::{Goal, Trainer, load_backbone};

type AD = Autodiff<Flex>;

const LORA: &str = "\n[lora]\nenabled = true\nrank = 4\nalpha = 8\n";

fn is_adapter(name: &str) -> bool {
    name.contains("_lora") || name.starts_with("token_rows")
}

/// A teacher-forced objective over the model's vocabulary, `t1` (the T1 token ids) among the
/// inputs and the targets.
fn objective(model: &Decoder<AD>, t1: &[i64]) -> Tensor<AD, 1> {
    let v = model.config().vocab_size as i64;
    let dev = Default::default();
    let mut ids: Vec<i64> = (0..24).map(|i| (i * 7 + 3) % v).collect();
    let mut targets: Vec<i64> = (0..24).map(|i| (i * 5 + 1) % v).collect();
    ids[..3].copy_from_slice(t1);
    targets[21..].copy_from_slice(t1);
    let ids = Tensor::<AD, 2, Int>::from_data(TensorData::new(ids, [2, 12]), &dev);
    let targets = Tensor::<AD, 2, Int>::from_data(TensorData::new(targets, [2, 12]), &dev);
    let hidden = model.hidden(ids, None);
    -model.token_logprobs(hidden, targets, 4).mean()
}

#[test]
fn the_trainer_moves_only_adapters_and_token_rows_and_saves_adapter_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &dir.path().join("runs"), "l", 3, LORA);
    let cfg = Config::load(&path, &[]).unwrap();
    let dev = Default::default();
    // a base/ left by an earlier start under another seed is not kept
    let tok = t1_train::model::T1Tokenizer::load(
        &support::root().join("curricula/default/tokenizer.json"),
    )
    .unwrap();
    let stale: Decoder<Flex> = t1_train::model::DecoderConfig::preset("tiny", tok.vocab_size())
        .unwrap()
        .init_seeded(99, &dev)
        .unwrap();
    let stale_dir = dir.path().join("runs/l/base");
    t1_train::model::save_hf(&stale, &stale_dir).unwrap();
    t1_train::checksums::write(&stale_dir).unwrap();
    let mut tr = Trainer::<AD>::start(&cfg, "stage1", false, Goal::Minimize, "loss", &dev).unwrap();
    let before = params(&tr.model.valid());
    let n_adapters = before.iter().filter(|(n, _)| is_adapter(n)).count();
    let layers = tr.model.config().num_hidden_layers;
    // A and B on all seven projections of every layer, plus the token rows (tiny is tied)
    assert_eq!(n_adapters, 2 * 7 * layers + 1);
    // runs/l/base/ holds the preset's weights the adapters sit on
    let root = dir.path().join("runs/l");
    let base = params(&load_hf::<Flex>(&root.join("base"), &dev).unwrap());
    let frozen = params(&tr.model.valid().base_view());
    assert_eq!(
        max_param_diff(&base, &frozen),
        0.0,
        "base/ is the stage's base"
    );
    let mut t1 = vec![tr.tok.think, tr.tok.end_think, tr.tok.emb];
    t1.sort();
    let t1_ids: Vec<i64> = t1.iter().map(|&t| t as i64).collect();
    for _ in 0..3 {
        let loss = objective(&tr.model, &t1_ids);
        let value = loss.clone().into_scalar() as f64;
        tr.backward(loss);
        tr.step(&[("loss", value)]).unwrap();
    }
    // the KL reference: the base under the trained adapters computes what a second copy of the
    // starting model does
    let (copy, _) = load_backbone::<AD>(&cfg, &dev).unwrap();
    let view = tr.model.base_view();
    let (r_view, r_copy) = (
        objective(&view, &t1_ids).into_scalar(),
        objective(&copy, &t1_ids).into_scalar(),
    );
    assert_eq!(r_view, r_copy, "reference without a copy");
    let trained = objective(&tr.model, &t1_ids).into_scalar();
    assert!(trained != r_view, "the adapters changed nothing");
    let after = params(&tr.model.valid());
    for ((name, x), (_, y)) in before.iter().zip(&after) {
        let moved = x.iter().zip(y).any(|(p, q)| p != q);
        if is_adapter(name) {
            // every B starts at zero and every A, then, gets a gradient through it after step 1
            assert!(moved, "{name} did not train");
        } else {
            assert!(!moved, "{name} is base and moved");
        }
    }
    // only the three T1 rows of the embedding differ in the merged model
    let merged = params(&tr.model.valid().merge_lora());
    let (_, emb_base) = base
        .iter()
        .find(|(n, _)| n.contains("embed_tokens"))
        .unwrap();
    let (_, emb_merged) = merged
        .iter()
        .find(|(n, _)| n.contains("embed_tokens"))
        .unwrap();
    let d = tr.model.config().hidden_size;
    let changed: Vec<usize> = (0..emb_base.len() / d)
        .filter(|r| emb_base[r * d..(r + 1) * d] != emb_merged[r * d..(r + 1) * d])
        .collect();
    let t1: Vec<usize> = t1.iter().map(|&t| t as usize).collect();
    assert_eq!(changed, t1, "rows that changed");

    // a checkpoint is an adapter folder (no full weights) that loads back as the same model
    let name = tr.save().unwrap();
    let ck = root.join("checkpoints").join(&name);
    assert!(
        ck.join("adapter_config.json").is_file() && ck.join("adapter_model.safetensors").is_file()
    );
    assert!(
        !ck.join("model.safetensors").exists(),
        "a LoRA checkpoint holds no full weights"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        Path::new(config["base_model_name_or_path"].as_str().unwrap()),
        root.join("base")
    );
    let loaded = params(&load_model::<Flex>(&ck, &dev).unwrap());
    assert_eq!(
        max_param_diff(&loaded, &merged),
        0.0,
        "checkpoint = merged model"
    );
    // and best/ too
    tr.record_eval(&[("loss", 1.0)]).unwrap();
    let best = root.join("best");
    assert!(best.join("adapter_config.json").is_file() && best.join("t1-best.json").is_file());
    let loaded = params(&load_model::<Flex>(&best, &dev).unwrap());
    assert_eq!(
        max_param_diff(&loaded, &merged),
        0.0,
        "best/ = merged model"
    );
}

#[test]
fn bad_lora_settings_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    for (set, key, says) in [
        ("lora.dropout=0.1", "lora.dropout", "not supported yet"),
        ("lora.dropout=nan", "lora.dropout", "[0, 1)"),
        ("lora.rank=0", "lora.rank", "at least 1"),
        ("lora.alpha=inf", "lora.alpha", "finite"),
        (
            "lora.target_modules=[\"q_proj\",\"wq\"]",
            "lora.target_modules[1]",
            "unknown module",
        ),
        (
            "lora.target_modules=[\"q_proj\",\"q_proj\"]",
            "lora.target_modules[1]",
            "twice",
        ),
        ("lora.target_modules=[]", "lora.target_modules", "empty"),
        ("lora.ranks=4", "ranks", "unknown field"),
    ] {
        let cfg = config(dir.path(), &dir.path().join("runs"), "bad", 4, LORA);
        let o = t1(&["stage1", "--config", cfg.to_str().unwrap(), "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(key) && err.contains(says), "{set}: {err}");
    }
}

fn stage3_args(cfg: &Path) -> Vec<String> {
    [
        "stage3",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const STAGE3: &str = r#"
[stage3]
group_size = 2
iterations = 2
beta = 0.04
mask_truncated = false

[[stage3.rewards]]
name = "reciprocal_rank"
"#;

#[test]
fn a_lora_stage3_interrupted_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 8;
    let extra = format!("{STAGE3}{LORA}");
    let cfg = |name: &str| {
        config(
            &dir.path().join(format!("{name}-cfg")),
            &dir.path().join(name),
            "s3",
            steps,
            &extra,
        )
    };
    let a = stage3_args(&cfg("a"));
    let o = t1(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = stage3_args(&cfg("b"));
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    support::interrupt_when(
        &b,
        &dir.path().join("b/s3/checkpoints/step-000004/state.json"),
    );
    let mut resume = b.clone();
    resume.push("--resume");
    let o = t1(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for tag in ["stage3/reward", "stage3/kl"] {
        let (a, b) = (dir.path().join("a/s3"), dir.path().join("b/s3"));
        support::assert_same_scalars(&a, &b, tag, steps as usize, 1e-5, 1.0);
    }
    // the policy moved away from the reference (the KL is not identically zero)
    let kl = scalar(&dir.path().join("a/s3"), "stage3/kl");
    assert!(kl.iter().any(|(_, k)| *k > 0.0), "{kl:?}");
    let last = format!("s3/checkpoints/step-{steps:06}");
    let dev = Default::default();
    let wa = params(&load_model::<Flex>(&dir.path().join("a").join(&last), &dev).unwrap());
    let wb = params(&load_model::<Flex>(&dir.path().join("b").join(&last), &dev).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}

#[test]
fn a_lora_curriculum_hands_each_merged_best_on_and_merge_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("unused");
    // stage 1's [lora] comes from its config, stage 2's from the curriculum's per-stage `set`
    let c1 = config(dir.path(), &runs, "c1", 3, LORA);
    let c2 = config(dir.path(), &runs, "c2", 3, "");
    let file = dir.path().join("lora.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"lora\"\noutput_dir = \"out\"\n\n[[stage]]\nkind = \"stage1\"\nconfig = \"{}\"\n\n[[stage]]\nkind = \"stage2\"\nconfig = \"{}\"\nset = [\"lora.enabled=true\", \"lora.rank=4\", \"lora.alpha=8\"]\n",
            c1.file_name().unwrap().to_str().unwrap(),
            c2.file_name().unwrap().to_str().unwrap(),
        ),
    )
    .unwrap();
    let o = t1(&[
        "curriculum",
        file.to_str().unwrap(),
        "--set",
        "train.eval_every=3",
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = dir.path().join("out/lora");
    let dev = Default::default();
    for s in ["stage1", "stage2"] {
        assert!(
            root.join(s).join("best/adapter_config.json").is_file(),
            "{s}"
        );
        assert!(!root.join(s).join("best/model.safetensors").exists(), "{s}");
    }
    // stage 2's base is stage 1's best, merged: what its fresh adapters start from
    let s1_best = params(&load_model::<Flex>(&root.join("stage1/best"), &dev).unwrap());
    let s2_base = params(&load_hf::<Flex>(&root.join("stage2/base"), &dev).unwrap());
    assert_eq!(max_param_diff(&s1_best, &s2_base), 0.0);
    // and stage 1 trained something: its merged best is not its own base
    let s1_base = params(&load_hf::<Flex>(&root.join("stage1/base"), &dev).unwrap());
    assert!(max_param_diff(&s1_best, &s1_base) > 0.0);

    // merge: one HF folder equal to the chain (stage 2's adapter on stage 1's merged best)
    let out = dir.path().join("merged");
    let best = root.join("stage2/best");
    let merge = || {
        t1(&[
            "merge",
            "--model",
            best.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = merge();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("config.json").is_file() && out.join("tokenizer.json").is_file());
    let merged = params(&load_hf::<Flex>(&out, &dev).unwrap());
    let chain = params(&load_model::<Flex>(&best, &dev).unwrap());
    assert_eq!(max_param_diff(&merged, &chain), 0.0);
    // a second merge into the same folder is refused, and it is left as it was
    let o = merge();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let again = params(&load_hf::<Flex>(&out, &dev).unwrap());
    assert_eq!(
        max_param_diff(&again, &merged),
        0.0,
        "the refused merge changed {out:?}"
    );
    // `generate` reads an adapter folder as its merged model
    let generate = |model: &Path| {
        let o = t1(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "what is",
            "--max-new-tokens",
            "3",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let (o, o2) = (generate(&best), generate(&out));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o2.stdout),
        "adapter folder and merged folder generate the same"
    );
}
