//! Stage 3 (GRPO) smoke test on the tiny preset: a run with a reference model (β > 0), μ = 2
//! iterations, a built-in and a script reward completes, moves every parameter, logs finite
//! metrics that TensorBoard's reader parses, and writes rollouts; a failing script reward stops
//! the run naming the script and line.

mod support;

use std::path::Path;
use std::process::Command;

use support::{assert_every_parameter_moved, config, scalar, t1};

fn stage3(reward: &str) -> String {
    format!(
        r#"
[stage3]
group_size = 2
iterations = 2
beta = 0.04
loss_type = "grpo"
epsilon_high = 0.28
mask_truncated = false   # an untrained model never closes </think> in 12 tokens

[[stage3.rewards]]
name = "reciprocal_rank"

{reward}
"#
    )
}

#[test]
fn stage3_smoke_updates_the_policy_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let script = support::root().join("rewards/scripts/top3_bonus.rhai");
    let extra = stage3(&format!(
        "[[stage3.rewards]]\nname = \"script\"\npath = \"{}\"\nweight = 0.5\n",
        script.display()
    ));
    let cfg = config(dir.path(), &dir.path().join("runs"), "s3", 4, &extra);
    let o = t1(&[
        "stage3",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=12",
        "--set",
        "logging.tensorboard=true",
        "--set",
        "train.eval_every=4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/s3");
    for tag in [
        "stage3/reward",
        "stage3/loss",
        "stage3/kl",
        "stage3/entropy",
        "stage3/grad_norm",
        "stage3/reward/script:top3_bonus",
    ] {
        let v = scalar(&run, tag);
        assert_eq!(v.len(), 4, "{tag}");
        assert!(v.iter().all(|(_, x)| x.is_finite()), "{tag}: {v:?}");
    }
    // μ = 2: the second pass sees a moved policy, so the ratio leaves 1 and the KL is non-zero
    assert!(scalar(&run, "stage3/kl").iter().any(|(_, x)| *x > 0.0));
    assert_eq!(scalar(&run, "stage3/dev/ndcg@10").len(), 1);
    // where each step's wall clock went: the batch's own phases count on the first of its μ = 2
    // updates, the policy pass and the optimizer on every update
    for tag in [
        "stage3/time/sample_s",
        "stage3/time/rank_reward_s",
        "stage3/time/reference_s",
    ] {
        let v = scalar(&run, tag);
        assert_eq!(v.len(), 4, "{tag}");
        for (i, (_, secs)) in v.iter().enumerate() {
            assert!((i % 2 == 0) == (*secs > 0.0), "{tag}: {v:?}");
        }
    }
    for tag in ["stage3/time/policy_s", "stage3/time/optimizer_s"] {
        let v = scalar(&run, tag);
        assert!(
            v.len() == 4 && v.iter().all(|(_, s)| *s > 0.0),
            "{tag}: {v:?}"
        );
    }
    assert!(
        std::fs::read_to_string(run.join("rollouts.jsonl"))
            .unwrap()
            .lines()
            .count()
            >= 2
    );

    assert_every_parameter_moved(&cfg, &run.join("checkpoints/step-000004"), 0.0);

    // TensorBoard's own reader parses the event files
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_tensorboard.py");
    let out = Command::new("python3")
        .arg(reader)
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    if out.status.code() == Some(3) && std::env::var_os("CI").is_none() {
        eprintln!(
            "skipped the TensorBoard read: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stage3/reward") && text.contains("stage3/rollouts"),
        "{text}"
    );
}

#[test]
fn failing_script_reward_stops_the_run_naming_script_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rhai");
    std::fs::write(&bad, "fn reward(o) {\n  let x = o.gold[99].rank;\n  x\n}\n").unwrap();
    let extra = stage3(&format!(
        "[[stage3.rewards]]\nname = \"script\"\npath = \"{}\"\n",
        bad.display()
    ));
    let cfg = config(dir.path(), &dir.path().join("runs"), "s3bad", 4, &extra);
    let o = t1(&[
        "stage3",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=8",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.rhai:2"), "{err}");

    // an unknown reward name fails at load with exit 2, listing the names
    let cfg = config(
        dir.path(),
        &dir.path().join("runs"),
        "s3x",
        2,
        "[[stage3.rewards]]\nname = \"mrr\"\n",
    );
    let o = t1(&["stage3", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("mrr") && err.contains("reciprocal_rank") && err.contains("s3x.toml:"),
        "{err}"
    );
}

#[test]
fn interrupted_and_resumed_stage3_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let extra = stage3("");
    let steps = 12;
    let run = |name: &str| -> std::path::PathBuf {
        config(
            &dir.path().join(format!("{name}-cfg")),
            &dir.path().join(name),
            "s3",
            steps,
            &extra,
        )
    };
    let args = |cfg: &std::path::Path| -> Vec<String> {
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
    };
    let cfg_a = run("a");
    let a: Vec<String> = args(&cfg_a);
    let o = t1(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cfg_b = run("b");
    let b: Vec<String> = args(&cfg_b);
    let b_args: Vec<&str> = b.iter().map(String::as_str).collect();
    support::interrupt_when(
        &b_args,
        &dir.path().join("b/s3/checkpoints/step-000004/state.json"),
    );
    assert!(
        scalar(&dir.path().join("b/s3"), "stage3/loss").len() < steps as usize,
        "finished before the signal"
    );
    let mut resume = b_args.clone();
    resume.push("--resume");
    let o = t1(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let ra = scalar(&dir.path().join("a/s3"), "stage3/reward");
    let mut rb = scalar(&dir.path().join("b/s3"), "stage3/reward");
    rb.sort_by_key(|x| x.0);
    rb.dedup_by_key(|x| x.0);
    assert_eq!(ra.len(), rb.len());
    for ((s, x), (_, y)) in ra.iter().zip(&rb) {
        assert!((x - y).abs() <= 1e-5, "step {s}: reward {x} vs {y}");
    }
    let last = format!("s3/checkpoints/step-{steps:06}");
    let wa = support::params(
        &t1_train::model::load_hf::<burn::backend::Flex>(
            &dir.path().join("a").join(&last),
            &Default::default(),
        )
        .unwrap(),
    );
    let wb = support::params(
        &t1_train::model::load_hf::<burn::backend::Flex>(
            &dir.path().join("b").join(&last),
            &Default::default(),
        )
        .unwrap(),
    );
    let worst = support::max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}

/// A constant reward gives every group zero advantage, so with β = 0 the GRPO gradient is exactly
/// zero and the policy cannot move — unless the auxiliary InfoNCE on the rollouts' own
/// `<emb_token>` states is on, which alone moves it.
#[test]
fn auxiliary_infonce_alone_moves_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let constant = dir.path().join("constant.rhai");
    std::fs::write(&constant, "fn reward(o) {\n  1.0\n}\n").unwrap();
    let run = |name: &str, weight: f64| {
        let extra = format!(
            "[stage3]\ngroup_size = 2\nmask_truncated = false\naux_infonce_weight = {weight}\n\n\
             [[stage3.rewards]]\nname = \"script\"\npath = \"{}\"\n",
            constant.display()
        );
        let cfg = config(dir.path(), &dir.path().join("runs"), name, 2, &extra);
        let o = t1(&[
            "stage3",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "train.batch_size=2",
            "--set",
            "train.weight_decay=0.0",
            "--set",
            "train.warmup_steps=0",
            "--set",
            "model.max_reasoning_tokens=8",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let c =
            t1_train::config::Config::load(&cfg, &["train.warmup_steps=0".to_string()]).unwrap();
        let start =
            t1_train::model::load::load_backbone::<burn::backend::Flex>(&c, &Default::default())
                .unwrap()
                .0;
        let end = t1_train::model::load_hf::<burn::backend::Flex>(
            &dir.path()
                .join(format!("runs/{name}/checkpoints/step-000002")),
            &Default::default(),
        )
        .unwrap();
        (
            support::max_param_diff(&support::params(&start), &support::params(&end)),
            dir.path().join(format!("runs/{name}")),
        )
    };
    let (moved_off, run_off) = run("aux-off", 0.0);
    assert_eq!(
        moved_off, 0.0,
        "a zero-advantage GRPO step moved the policy"
    );
    assert!(scalar(&run_off, "stage3/aux_infonce").is_empty());
    let (moved_on, run_on) = run("aux-on", 1.0);
    assert!(
        moved_on > 0.0,
        "the auxiliary InfoNCE did not move the policy"
    );
    let aux = scalar(&run_on, "stage3/aux_infonce");
    assert_eq!(aux.len(), 2);
    assert!(
        aux.iter().all(|(_, x)| x.is_finite() && *x > 0.0),
        "{aux:?}"
    );
}

/// The bare query's ranks that stage 3 computes each step (for `beats_bare` and the
/// `bare_*`/`beats_bare_frac` scalars) are those of eval's `bare` view of the same model: the
/// first step's rollouts were scored by the starting model, which `t1-train eval` also loads.
/// `beats_bare` on reciprocal rank pays exactly the rollouts whose best gold rank beats the bare
/// one, so its logged mean equals `beats_bare_frac`, counted separately from the ranks.
#[test]
fn beats_bare_ranks_against_the_bare_view_of_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let extra = stage3(
        "[[stage3.rewards]]\nname = \"beats_bare\"\nmetric = \"reciprocal_rank\"\nweight = 0.5\n",
    );
    let cfg = config(dir.path(), &dir.path().join("runs"), "bb", 2, &extra);
    let cfg = cfg.to_str().unwrap();
    let o = t1(&[
        "stage3",
        "--config",
        cfg,
        "--set",
        "train.batch_size=4",
        "--set",
        "model.max_reasoning_tokens=12",
        "--set",
        "train.eval_every=1",
        "--set",
        "train.warmup_steps=1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/bb");
    let frac = scalar(&run, "stage3/beats_bare_frac");
    let paid = scalar(&run, "stage3/reward/beats_bare");
    assert_eq!(frac.len(), 2);
    assert_eq!(
        frac, paid,
        "beats_bare pays exactly the rollouts that beat the bare rank"
    );
    for (_, r) in scalar(&run, "stage3/bare_gold_rank_mean") {
        assert!(r.is_finite() && r >= 1.0, "{r}");
    }

    // the first step's rollouts with their query's bare rank, as rollouts.jsonl wrote them
    let first: Vec<serde_json::Value> = std::fs::read_to_string(run.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["step"] == 1)
        .collect();
    assert_eq!(first.len(), 2, "one group of G = 2");
    let qid = first[0]["query_id"].as_str().unwrap().to_string();
    let bare_rank = first[0]["bare_gold_rank"].as_u64().unwrap();
    assert_eq!(first[1]["bare_gold_rank"].as_u64(), Some(bare_rank));
    assert!(first[0]["gold_rank"].as_u64().is_some());

    // eval's bare view of the starting model, the whole train split ranked to the corpus' depth
    let o = t1(&[
        "eval",
        "--config",
        cfg,
        "--set",
        "run.name=bb-eval",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "eval.split=train",
        "--set",
        "eval.retriever=dense",
        "--set",
        "eval.query_view=bare",
        "--set",
        "eval.depth=1000",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = support::root().join("curricula/default/data");
    let gold: Vec<String> = std::fs::read_to_string(data.join("qrels/train.tsv"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0] == qid && f[2] != "0").then(|| f[1].to_string())
        })
        .collect();
    let excluded: Vec<String> = std::fs::read_to_string(data.join("queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|q| q["_id"] == qid.as_str())
        .and_then(|q| q["excluded_ids"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let ranked: Vec<String> =
        std::fs::read_to_string(dir.path().join("runs/bb-eval/eval/train.run"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0] == qid).then(|| f[2].to_string())
            })
            .filter(|d| !excluded.contains(d))
            .collect();
    let eval_rank = 1 + ranked.iter().position(|d| gold.contains(d)).unwrap();
    assert_eq!(bare_rank, eval_rank as u64, "query {qid}");
}

/// Every rollout truncated with `mask_truncated = true`: the step updates nothing, and the run
/// says so on stderr even with progress bars off (indicatif prints nothing through a hidden
/// bar) — the silent no-op stage 3 of the Coq and Metamath runs on 2026-12-07.
#[test]
fn all_rollouts_masked_is_said_on_stderr_without_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    let extra = stage3("").replace("mask_truncated = false", "mask_truncated = true");
    let cfg = config(dir.path(), &dir.path().join("runs"), "masked", 1, &extra);
    let o = t1(&[
        "stage3",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.batch_size=2",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "model.max_reasoning_tokens=2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("stage3 step 1: every rollout reached model.max_reasoning_tokens = 2")
            && err.contains("this step updates nothing"),
        "{err}"
    );
    let norm = scalar(&dir.path().join("runs/masked"), "stage3/grad_norm");
    assert_eq!(norm, [(1, 0.0)], "no rollout left, no gradient");
}
