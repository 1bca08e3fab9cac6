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
use t1_train::model::load::load_backbone;
use t1_train::model::{Decoder, load_hf, load_model};
use t1_train::train::common::{Goal, Trainer};
use t1_train::train::micro::MicroBatch;

/// One micro-batch, the whole step: its loss is the step's logged loss.
const WHOLE: MicroBatch = MicroBatch {
    rows: 0..1,
    scale: 1.0,
};

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
        tr.backward(&WHOLE, loss, None);
        tr.step(&[]).unwrap();
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
        ("lora.base_dtype=\"f8\"", "base_dtype", "unknown variant"),
    ] {
        let cfg = config(dir.path(), &dir.path().join("runs"), "bad", 4, LORA);
        let o = t1(&["stage1", "--config", cfg.to_str().unwrap(), "--set", set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(key) && err.contains(says), "{set}: {err}");
    }
    // a half-precision base needs a frozen one
    let cfg = config(dir.path(), &dir.path().join("runs"), "bad", 4, "");
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "lora.base_dtype=\"bf16\"",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lora.base_dtype") && err.contains("needs lora.enabled = true"),
        "{err}"
    );
}

/// `lora.base_dtype`: the frozen projections held in bf16 / f16 (norms, embeddings, adapters
/// f32), the losses of a few LoRA steps near the f32 run's (but not equal: the products do run
/// in half precision), training still lowering the loss, and merging back to f32.
#[test]
fn a_half_precision_base_trains_the_adapters_near_the_f32_run() {
    use burn::tensor::DType;
    let dir = tempfile::tempdir().unwrap();
    let dev = Default::default();
    let run = |name: &str, extra: &str| -> (Vec<f64>, Trainer<AD>) {
        let path = config(dir.path(), &dir.path().join("runs"), name, 4, extra);
        let cfg = Config::load(&path, &[]).unwrap();
        let mut tr =
            Trainer::<AD>::start(&cfg, "stage1", false, Goal::Minimize, "loss", &dev).unwrap();
        let mut t1 = vec![tr.tok.think, tr.tok.end_think, tr.tok.emb];
        t1.sort();
        let t1: Vec<i64> = t1.iter().map(|&t| t as i64).collect();
        let mut losses = Vec::new();
        for _ in 0..4 {
            let loss = objective(&tr.model, &t1);
            losses.push(tr.backward(&WHOLE, loss, None));
            tr.step(&[]).unwrap();
        }
        (losses, tr)
    };
    let (full, _) = run("f32", LORA);
    for (name, dtype, tol) in [("bf16", DType::BF16, 2e-2), ("f16", DType::F16, 3e-3)] {
        let (half, tr) = run(name, &format!("{LORA}base_dtype = \"{name}\"\n"));
        let m = &tr.model;
        for layer in &m.model.layers {
            let (a, p) = (&layer.self_attn, &layer.mlp);
            for w in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                .into_iter()
                .chain([&p.gate_proj, &p.up_proj, &p.down_proj])
            {
                assert_eq!(w.weight.val().dtype(), dtype, "{name}: a projection");
            }
            assert_eq!(layer.input_layernorm.gamma.val().dtype(), DType::F32);
            let lora = a.q_lora.as_ref().unwrap();
            assert_eq!(lora.b.val().dtype(), DType::F32, "{name}: an adapter");
        }
        assert_eq!(m.model.embed_tokens.weight.val().dtype(), DType::F32);
        for (step, (h, f)) in half.iter().zip(&full).enumerate() {
            let rel = (h - f).abs() / f.abs();
            eprintln!("{name} step {step}: loss {h:.6} vs f32 {f:.6} ({rel:.1e})");
            assert!(rel <= tol, "{name} step {step}: {h} vs {f}");
            assert!(
                step > 0 || rel > 0.0,
                "{name}: the products did not run in {name}"
            );
        }
        assert!(half[3] < half[0], "{name}: the loss did not fall: {half:?}");
        let merged = m.valid().merge_lora();
        let q = &merged.model.layers[0].self_attn.q_proj.weight;
        assert_eq!(q.val().dtype(), DType::F32, "{name}: merged in f32");
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

/// A LoRA checkpoint remembers its base's fingerprint: resuming after the base folder was
/// replaced by another model (same path, same config, valid checksums) is refused with exit
/// code 2 instead of attaching the adapters to weights they were not trained on.
#[test]
fn a_lora_resume_on_a_changed_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    // two full stage-1 runs from other seeds: two bases of the same shape
    for (name, seed) in [("p", 7), ("q", 8)] {
        let cfg = config(dir.path(), &out, name, 4, "");
        let o = t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("run.seed={seed}"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let base = out.join("base-folder");
    let copy = |from: &Path| {
        if base.exists() {
            std::fs::remove_dir_all(&base).unwrap();
        }
        std::fs::create_dir_all(&base).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
        }
    };
    copy(&out.join("p/checkpoints/step-000004"));
    let cfg = config(dir.path(), &out, "l", 4, LORA);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "preset = \"tiny\"",
        &format!("path = {:?}", base.display().to_string()),
    );
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("tokenizer ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, text).unwrap();
    let args = ["stage1", "--config", cfg.to_str().unwrap()];
    let o = t1(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resume = [&args[..], &["--resume", "--set", "train.steps=8"]].concat();
    // the same base resumes (and the state records its fingerprint)
    let state = std::fs::read_to_string(out.join("l/checkpoints/step-000004/state.json")).unwrap();
    assert!(state.contains("base_fingerprint"), "{state}");
    // another model at the same path does not
    copy(&out.join("q/checkpoints/step-000004"));
    let o = t1(&resume);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not the one the adapters") && err.contains("weight tensor"),
        "{err}"
    );
    // the original back: the resume goes on
    copy(&out.join("p/checkpoints/step-000004"));
    let o = t1(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("l/checkpoints/step-000008/state.json").is_file());
}
