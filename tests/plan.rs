//! `t1-train plan`: the predicted peak memory of a stage is within 20 % of the peak the same
//! config reaches when it runs (`<stage>/peak_rss_mib`, the process's VmHWM, logged each step),
//! on the tiny preset (every stage; LoRA and checkpointing) and on SmolLM2-135M (stage 3), and
//! the plan's components follow the options (reference, LoRA, checkpointing, `--arch`).

mod support;

use std::path::Path;

use support::{config, root, scalar, t1};

/// `[stage3]` at a size where activations, not the process, dominate the peak.
const STAGE3: &str = r#"
[stage3]
group_size = 8
beta = 0.04
refresh_every = 0

[[stage3.rewards]]
name = "reciprocal_rank"
"#;

/// `t1-train args… --set s…` for each of `sets`; asserts it succeeded.
fn t1_ok(args: &[&str], sets: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    for s in sets {
        all.extend(["--set", s]);
    }
    let o = t1(&all);
    assert!(
        o.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn plan_json(cfg: &Path, stage: &str, sets: &[&str]) -> serde_json::Value {
    let args = [
        "plan",
        "--config",
        cfg.to_str().unwrap(),
        "--stage",
        stage,
        "--json",
    ];
    serde_json::from_slice(&t1_ok(&args, sets).stdout).expect("plan --json prints JSON")
}

fn component(plan: &serde_json::Value, name: &str) -> f64 {
    plan["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name}"))["bytes"]
        .as_f64()
        .unwrap()
}

/// Plans `stage` of `cfg` with `sets`, runs it, and returns (predicted, measured) MiB.
fn predicted_and_measured(cfg: &Path, run: &Path, stage: &str, sets: &[&str]) -> (f64, f64) {
    let plan = plan_json(cfg, stage, sets);
    t1_ok(&[stage, "--config", cfg.to_str().unwrap()], sets);
    let peaks = scalar(run, &format!("{stage}/peak_rss_mib"));
    let measured = peaks.iter().map(|p| p.1).fold(0.0, f64::max);
    assert!(measured > 0.0, "{stage}: no peak_rss_mib logged");
    std::fs::remove_dir_all(run).unwrap();
    (
        plan["peak"].as_f64().unwrap() / (1u64 << 20) as f64,
        measured,
    )
}

fn assert_within(label: &str, predicted: f64, measured: f64, tol: f64) {
    let ratio = predicted / measured;
    eprintln!(
        "{label}: predicted {predicted:.0} MiB, measured {measured:.0} MiB, ratio {ratio:.2}"
    );
    assert!(
        (ratio - 1.0).abs() <= tol,
        "{label}: predicted {predicted:.0} MiB vs measured {measured:.0} MiB (ratio {ratio:.2})"
    );
}

#[test]
fn predictions_are_within_20_percent_of_measured_peaks_on_the_tiny_preset() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let long = [
        "model.max_query_tokens=48",
        "model.max_reasoning_tokens=64",
        "model.max_doc_tokens=64",
        "train.warmup_steps=0",
        "train.save_every=100",
    ];
    let cases: &[(&str, &str, &[&str])] = &[
        ("stage3", STAGE3, &[]),
        (
            "stage3",
            STAGE3,
            &[
                "train.batch_size=4",
                "train.grad_accum=2",
                "lora.enabled=true",
            ],
        ),
        (
            "stage3",
            STAGE3,
            &["train.gradient_checkpointing=true", "stage3.group_size=4"],
        ),
        (
            "stage3",
            STAGE3,
            &["lora.enabled=true", "lora.base_dtype=\"bf16\""],
        ),
        ("stage1", "", &["train.batch_size=32"]),
        ("stage2", "", &["train.batch_size=16"]),
        ("latent", "", &["train.batch_size=16"]),
    ];
    for (i, (stage, extra, sets)) in cases.iter().enumerate() {
        let name = format!("plan{i}");
        let cfg = config(dir.path(), &runs, &name, 2, extra);
        let all: Vec<&str> = long.iter().chain(sets.iter()).copied().collect();
        let (p, m) = predicted_and_measured(&cfg, &runs.join(&name), stage, &all);
        assert_within(&format!("{stage} {sets:?}"), p, m, 0.20);
    }
}

#[test]
fn predictions_are_within_20_percent_on_smollm2() {
    let Some(model) = support::smollm2_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cfg = config(dir.path(), &runs, "plan-smollm2", 2, STAGE3);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("preset = ").unwrap();
    let end = start + text[start..].find("max_query_tokens").unwrap();
    let text = text.replace(
        &text[start..end],
        &format!("path = \"{}\"\n", model.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let sets = [
        "model.max_query_tokens=48",
        "model.max_reasoning_tokens=64",
        "model.max_doc_tokens=128",
        "train.batch_size=2",
        "stage3.group_size=4",
        "train.warmup_steps=0",
        "train.save_every=100",
        "lora.enabled=true",
    ];
    let (p, m) = predicted_and_measured(&cfg, &runs.join("plan-smollm2"), "stage3", &sets);
    assert_within("SmolLM2 stage3 LoRA", p, m, 0.20);
}

#[test]
fn components_follow_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "opts", 10, STAGE3);
    let full = plan_json(&cfg, "stage3", &[]);
    let params = full["params"].as_f64().unwrap();
    assert_eq!(component(&full, "weights"), 4.0 * params);
    assert_eq!(component(&full, "moments"), 8.0 * params);
    // β > 0 without LoRA: a full reference copy; β = 0: none; LoRA: the base, no copy
    assert_eq!(component(&full, "reference"), 4.0 * params);
    assert_eq!(
        component(&plan_json(&cfg, "stage3", &["stage3.beta=0"]), "reference"),
        0.0
    );
    let lora = plan_json(&cfg, "stage3", &["lora.enabled=true"]);
    assert_eq!(component(&lora, "reference"), 0.0);
    // β = 0 with a frozen index: a --resume loads the starting model to encode it again, in a
    // phase of its own; a refreshed index (or LoRA's base, or β > 0's reference) needs no copy
    let has_resume_phase = |p: &serde_json::Value| {
        p["phases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ph| ph[0] == "resume index encode")
    };
    let frozen = plan_json(&cfg, "stage3", &["stage3.beta=0"]);
    assert_eq!(component(&frozen, "resume_copy"), 4.0 * params);
    assert!(has_resume_phase(&frozen));
    for sets in [
        &["stage3.beta=0", "stage3.refresh_every=2"][..],
        &["stage3.beta=0", "lora.enabled=true"][..],
        &[][..],
    ] {
        let p = plan_json(&cfg, "stage3", sets);
        assert_eq!(component(&p, "resume_copy"), 0.0, "{sets:?}");
        assert!(!has_resume_phase(&p), "{sets:?}");
    }
    let trained = lora["trained"].as_f64().unwrap();
    assert!(trained < params / 5.0, "{trained} of {params}");
    assert_eq!(component(&lora, "moments"), 8.0 * trained);
    // checkpointing keeps less; more rollouts keep more
    let ck = plan_json(&cfg, "stage3", &["train.gradient_checkpointing=true"]);
    assert!(component(&ck, "activations") < 0.6 * component(&full, "activations"));
    let g16 = plan_json(&cfg, "stage3", &["stage3.group_size=16"]);
    assert!(component(&g16, "kv_cache") > 1.9 * component(&full, "kv_cache"));
    // another architecture from its config.json: Qwen3-0.6B's ≈ 0.6e9 parameters (+ the grown
    // vocabulary) without any weights on disk
    let arch = root().join("docs/plan/qwen3-0.6b.json");
    let args = [
        "plan",
        "--config",
        cfg.to_str().unwrap(),
        "--arch",
        arch.to_str().unwrap(),
        "--json",
    ];
    let q: serde_json::Value = serde_json::from_slice(&t1_ok(&args, &[]).stdout).unwrap();
    let n = q["params"].as_f64().unwrap();
    assert!((5.9e8..6.2e8).contains(&n), "Qwen3-0.6B: {n}");
    // lora.base_dtype: the layers' projections at 2 bytes instead of 4, nothing else
    let plan = |sets: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&t1_ok(&args, sets).stdout).unwrap()
    };
    let (f32_base, bf16_base) = (
        plan(&["lora.enabled=true"]),
        plan(&["lora.enabled=true", "lora.base_dtype=\"bf16\""]),
    );
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&arch).unwrap()).unwrap();
    let u = |k: &str| c[k].as_f64().unwrap();
    let (d, i) = (u("hidden_size"), u("intermediate_size"));
    let (q_w, kv_w) = (
        u("num_attention_heads") * u("head_dim"),
        u("num_key_value_heads") * u("head_dim"),
    );
    let proj = u("num_hidden_layers") * (2.0 * d * q_w + 2.0 * d * kv_w + 3.0 * d * i);
    let saved = component(&f32_base, "weights") - component(&bf16_base, "weights");
    assert_eq!(saved, 2.0 * proj, "bf16 base: {saved} bytes saved");
    // on a GPU backend (--gpu) a half base keeps the same activations; on the CPU one burn-flex's
    // half matmul adds f32 copies of the widest projection: m·(6d + 6i) + 4·d·i bytes for the
    // micro-batch's m tokens
    let gpu_args: Vec<&str> = args.iter().copied().chain(["--gpu"]).collect();
    let gpu = |sets: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&t1_ok(&gpu_args, sets).stdout).unwrap()
    };
    assert_eq!(
        component(&gpu(&["lora.enabled=true"]), "activations"),
        component(
            &gpu(&["lora.enabled=true", "lora.base_dtype=\"bf16\""]),
            "activations"
        )
    );
    let excess = component(&bf16_base, "activations") - component(&f32_base, "activations");
    let m = (excess - 4.0 * d * i) / (6.0 * d + 6.0 * i);
    assert!(
        m >= 1.0 && m.fract() == 0.0,
        "bf16 on the CPU: {excess} bytes more, m = {m}"
    );
    // a stage that does not exist is a usage error
    let o = t1(&[
        "plan",
        "--config",
        cfg.to_str().unwrap(),
        "--stage",
        "stage9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stage9"));
}
