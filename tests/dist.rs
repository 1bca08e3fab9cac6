//! Data-parallel training over burn-collective, as processes over loopback: two workers reach
//! the weights one worker reaches on the same global batch (stage 1; stage 2 and latent with
//! the in-batch negatives gathered; stage 3 with the batch's rewards and tokens shared), a
//! curriculum runs on them, an interrupted
//! data-parallel run resumes to the same end, a worker that dies or hangs stops the others with
//! an error within a bounded time, and workers started with different configs are refused.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use support::{config, max_param_diff, params, scalar, t1};
use t1_train::model::load_hf;

/// `t1-train args…` as a child process with its stderr captured.
fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_t1-train"))
        .args(args)
        .current_dir(support::root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn series(run: &Path, tag: &str) -> Vec<(u64, f64)> {
    let mut v = scalar(run, tag);
    v.sort_by_key(|x| x.0);
    v.dedup_by_key(|x| x.0);
    v
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    params(&load_hf::<Flex>(dir, &Default::default()).unwrap())
}

/// Stage 1 with `sets` and the launch options `launch`; asserts success.
fn stage1(cfg: &Path, sets: &[&str], launch: &[&str]) {
    run_stage("stage1", cfg, sets, launch)
}

fn run_stage(stage: &str, cfg: &Path, sets: &[&str], launch: &[&str]) {
    let mut args = vec![stage, "--config", cfg.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(launch);
    let o = t1(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn assert_same_run(one: &Path, two: &Path, steps: u64) {
    assert_same_stage(one, two, steps, &["stage1/loss"])
}

/// The runs `one` and `two` logged the same `tags` on each of `steps` steps, and their last
/// checkpoints hold the same weights (within float tolerance).
fn assert_same_stage(one: &Path, two: &Path, steps: u64, tags: &[&str]) {
    for tag in tags {
        let (la, lb) = (series(one, tag), series(two, tag));
        assert_eq!(la.len(), steps as usize, "one worker logged {tag} {la:?}");
        assert_eq!(lb.len(), steps as usize, "two workers logged {tag} {lb:?}");
        for ((s, x), (_, y)) in la.iter().zip(&lb) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "step {s}: {tag} {x} ({}) vs {y} ({})",
                one.display(),
                two.display()
            );
        }
    }
    let last = format!("checkpoints/step-{steps:06}");
    let worst = max_param_diff(&weights(&one.join(&last)), &weights(&two.join(&last)));
    // float summation order only (the all-reduce adds the two halves' gradients, one worker sums
    // the whole batch): 1.05e-5 measured for the latent stage on an AMD EPYC machine (2026-12-07),
    // where every other stage here stays below 1e-5
    assert!(worst <= 2e-5, "final weights differ by {worst}");
}

#[test]
fn two_workers_reach_the_weights_of_one_worker_on_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let steps = 6;
    let cfg = config(dir.path(), &runs, "one", steps, "");
    // one process: micro-batches of 4, two per step; two workers: one micro-batch of 4 each
    stage1(&cfg, &["train.batch_size=4", "train.grad_accum=2"], &[]);
    let two = [
        "train.batch_size=4",
        "train.grad_accum=1",
        "run.name=\"two\"",
    ];
    stage1(
        &cfg,
        &two,
        &[
            "--workers",
            "2",
            "--coordinator",
            "127.0.0.1:29610",
            "--dist-timeout",
            "120",
        ],
    );
    assert_same_run(&runs.join("one"), &runs.join("two"), steps);
    // rank 0 alone logs: one line per step, no second writer
    let lines = std::fs::read_to_string(runs.join("two/metrics.jsonl")).unwrap();
    let step_lines = lines
        .lines()
        .filter(|l| l.contains("\"stage1/loss\""))
        .count();
    assert_eq!(step_lines, steps as usize, "{lines}");
}

#[test]
fn an_interrupted_data_parallel_run_resumes_to_the_uninterrupted_end() {
    assert_resumes(
        "stage1",
        12,
        "",
        &["train.batch_size=4"],
        &["stage1/loss"],
        29620,
    );
}

#[test]
fn an_interrupted_data_parallel_stage3_resumes_to_the_uninterrupted_end() {
    // re-encoded every 3 steps, cut at step 4 or 5: the resume ranks against the index of step 3
    // that the checkpoint kept, as the uninterrupted run does
    let extra = "[stage3]\ngroup_size = 2\nbeta = 0.04\nrefresh_every = 3\nmask_truncated = false\n\
                 [[stage3.rewards]]\nname = \"reciprocal_rank\"\n";
    let sets = ["train.batch_size=2", "model.max_reasoning_tokens=12"];
    let tags = ["stage3/loss", "stage3/reward"];
    assert_resumes("stage3", 8, extra, &sets, &tags, 29700);
}

/// `stage` on two workers to `steps`, once whole and once Ctrl-C'd after its first checkpoint
/// (step 4) and resumed: the same figures and weights.
fn assert_resumes(stage: &str, steps: u64, extra: &str, sets: &[&str], tags: &[&str], port: u16) {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cfg = config(dir.path(), &runs, "whole", steps, extra);
    let launch = two_workers(port);
    run_stage(stage, &cfg, sets, &strs(&launch));
    let mut args = vec![stage, "--config", cfg.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--set", "run.name=\"cut\""]);
    args.extend(strs(&launch));
    // Ctrl-C to the launcher once the first checkpoint exists: the workers stop together
    let child = spawn(&args);
    let ckpt = runs.join("cut/checkpoints/step-000004/state.json");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let stopped = series(&runs.join("cut"), tags[0]).len();
    assert!(
        stopped < steps as usize,
        "the run finished before the signal"
    );
    args.push("--resume");
    let o = t1(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_stage(&runs.join("whole"), &runs.join("cut"), steps, tags);
}

/// `child`'s output once it exits; killed, and the test failed, after `limit`.
fn wait_at_most(mut child: Child, limit: Duration) -> std::process::Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: nothing stopped it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The pids of `parent`'s children.
fn children_of(parent: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &parent.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Node `rank` of two, one worker each, over `port`.
fn node(cfg: &Path, rank: &str, port: &str, timeout: &str, sets: &[&str]) -> Child {
    let mut args = vec!["stage1", "--config", cfg.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let coordinator = format!("127.0.0.1:{port}");
    args.extend([
        "--nodes",
        "2",
        "--node-rank",
        rank,
        "--coordinator",
        &coordinator,
    ]);
    args.extend(["--dist-timeout", timeout]);
    // on one machine the two "nodes" need their own worker ports
    let worker_port = (port.parse::<u16>().unwrap() + 5).to_string();
    if rank == "1" {
        args.extend(["--worker-port", &worker_port]);
    }
    spawn(&args)
}

/// Two one-worker nodes over `port` training a long run `name` (checkpoints every 2 steps), once
/// rank 0 has written step 2: (node 0, node 1, node 1's worker pid). The tempdir lives in `dir`.
fn two_nodes_past_step_2(dir: &Path, name: &str, port: &str, timeout: &str) -> (Child, Child, u32) {
    let runs = dir.join("runs");
    let cfg = config(dir, &runs, name, 400, "");
    let sets = ["train.batch_size=4", "train.save_every=2"];
    let n0 = node(&cfg, "0", port, timeout, &sets);
    let n1 = node(&cfg, "1", port, timeout, &sets);
    let ckpt = runs.join(format!("{name}/checkpoints/step-000002/state.json"));
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    let workers = children_of(n1.id());
    assert_eq!(workers.len(), 1, "node 1's worker: {workers:?}");
    (n0, n1, workers[0])
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_worker_that_dies_stops_the_other_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (n0, n1, worker) = two_nodes_past_step_2(dir.path(), "dies", "29630", "15");
    // node 1's worker dies (SIGKILL: no goodbye); its launcher reports it
    let killed = Instant::now();
    assert!(signal(worker, "-KILL"));
    let out1 = n1.wait_with_output().unwrap();
    let err1 = String::from_utf8_lossy(&out1.stderr);
    assert_eq!(out1.status.code(), Some(1), "node 1: {err1}");
    assert!(
        err1.contains("worker 1 (of 2) was killed by a signal"),
        "node 1: {err1}"
    );
    // node 0's worker waits at the next exchange, then stops with an error naming the step
    let out0 = wait_at_most(n0, Duration::from_secs(120));
    let waited = killed.elapsed();
    let err0 = String::from_utf8_lossy(&out0.stderr);
    assert_eq!(out0.status.code(), Some(1), "node 0: {err0}");
    // (burn-collective notices the closed connection, or else the watchdog's timeout fires)
    assert!(
        err0.contains("gradients of step")
            && (err0.contains("another worker died or closed its connection")
                || err0.contains("got no answer within 15 s")),
        "node 0: {err0}"
    );
    assert!(
        err0.contains("worker 0 (of 2) exited with code 1"),
        "node 0: {err0}"
    );
    assert!(
        waited < Duration::from_secs(60),
        "node 0 stopped after {waited:?}"
    );
}

#[test]
fn a_worker_that_hangs_is_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let (n0, n1, worker) = two_nodes_past_step_2(dir.path(), "hangs", "29650", "5");
    // node 1's worker stops (SIGSTOP: alive, its connections open, never answering)
    assert!(signal(worker, "-STOP"));
    let stopped = Instant::now();
    let out0 = wait_at_most(n0, Duration::from_secs(120));
    let waited = stopped.elapsed();
    signal(worker, "-KILL");
    let _ = n1.wait_with_output();
    let err0 = String::from_utf8_lossy(&out0.stderr);
    assert_eq!(out0.status.code(), Some(1), "node 0: {err0}");
    assert!(
        err0.contains("got no answer within 5 s") && err0.contains("gradients of step"),
        "node 0: {err0}"
    );
    assert!(
        waited < Duration::from_secs(60),
        "node 0 stopped after {waited:?}"
    );
}

#[test]
fn workers_started_with_different_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let cfg = config(dir.path(), &runs, "mixed", 4, "");
    let n0 = node(&cfg, "0", "29640", "60", &["train.batch_size=4"]);
    let n1 = node(
        &cfg,
        "1",
        "29640",
        "60",
        &["train.batch_size=4", "train.lr=1e-3"],
    );
    for (rank, n) in [(0, n0), (1, n1)] {
        let out = n.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "node {rank}: {err}");
        assert!(err.contains("different configs"), "node {rank}: {err}");
    }
    // nothing trained
    assert!(!runs.join("mixed/checkpoints").exists());
}

#[test]
fn launch_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "bad", 4, "");
    let c = cfg.to_str().unwrap();
    for (args, says) in [
        (vec!["--nodes", "2"], "--coordinator"),
        (
            vec!["--nodes", "2", "--node-rank", "2", "--coordinator", "h:1"],
            "--node-rank",
        ),
        (
            vec!["--workers", "2", "--coordinator", "nohost"],
            "HOST:PORT",
        ),
        (vec!["--workers", "0"], "at least 1"),
    ] {
        let mut all = vec!["stage1", "--config", c];
        all.extend(&args);
        let o = t1(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Two workers over loopback on ports from `port`.
fn two_workers(port: u16) -> Vec<String> {
    [
        "--workers",
        "2",
        "--coordinator",
        &format!("127.0.0.1:{port}"),
        "--dist-timeout",
        "120",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn stage2_on_two_workers_gathers_the_in_batch_negatives_of_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let steps = 4;
    // joint SFT (each worker's tokens over the batch's), mining with the current model (an
    // index shared between the workers) from step 2 on
    let extra = "[stage2]\ntemperature = 0.05\ngroup_size = 3\nsft_weight = 0.1\nmine_every = 2\n";
    let cfg = config(dir.path(), &runs, "one", steps, extra);
    // one process: micro-batches of 4 queries (their 12 documents the negatives), two per step;
    // two workers: 2 queries each per micro-batch, the negatives gathered from both
    run_stage(
        "stage2",
        &cfg,
        &["train.batch_size=4", "train.grad_accum=2"],
        &[],
    );
    let two = [
        "train.batch_size=2",
        "train.grad_accum=2",
        "run.name=\"two\"",
    ];
    run_stage("stage2", &cfg, &two, &strs(&two_workers(29660)));
    let tags = [
        "stage2/loss",
        "stage2/nce_loss",
        "stage2/sft_loss",
        "stage2/accuracy",
    ];
    assert_same_stage(&runs.join("one"), &runs.join("two"), steps, &tags);
    // rank 0 wrote the mined pools, once per mining step
    assert!(runs.join("two/mined_negatives/step-000002.jsonl").exists());
}

#[test]
fn the_latent_stage_on_two_workers_equals_one_worker_on_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let steps = 3;
    let extra = "[latent]\nsteps = 2\ntemperature = 0.05\nteacher_temperature = 0.05\n\
                 group_size = 3\ntrajectory = \"kl\"\nsft_weight = 0.1\n";
    let cfg = config(dir.path(), &runs, "one", steps, extra);
    run_stage("latent", &cfg, &["train.batch_size=4"], &[]);
    let two = ["train.batch_size=2", "run.name=\"two\""];
    run_stage("latent", &cfg, &two, &strs(&two_workers(29670)));
    let tags = [
        "latent/loss",
        "latent/latent_nce",
        "latent/trajectory",
        "latent/sft_loss",
    ];
    assert_same_stage(&runs.join("one"), &runs.join("two"), steps, &tags);
}

#[test]
fn stage3_on_two_workers_equals_one_worker_on_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let steps = 4;
    // token-normalised loss (the step's tokens shared), batch-scaled rewards (the batch's
    // rewards shared), a KL reference, the auxiliary InfoNCE (a share of the step's rows) and an
    // index the workers re-encode together every 2 steps
    let extra = r#"
[stage3]
group_size = 2
beta = 0.04
loss_type = "bnpo"
scale_rewards = "batch"
refresh_every = 2
aux_infonce_weight = 0.1
mask_truncated = false

[[stage3.rewards]]
name = "reciprocal_rank"
"#;
    let cfg = config(dir.path(), &runs, "one", steps, extra);
    // one process: 2 micro-batches of 2 queries per step; two workers: one micro-batch each
    let short = "model.max_reasoning_tokens=12";
    run_stage(
        "stage3",
        &cfg,
        &["train.batch_size=2", "train.grad_accum=2", short],
        &[],
    );
    let two = [
        "train.batch_size=2",
        "train.grad_accum=1",
        short,
        "run.name=\"two\"",
    ];
    run_stage("stage3", &cfg, &two, &strs(&two_workers(29680)));
    let tags = [
        "stage3/loss",
        "stage3/reward",
        "stage3/reward_std",
        "stage3/completion_len_mean",
        "stage3/kl",
        "stage3/aux_infonce",
    ];
    assert_same_stage(&runs.join("one"), &runs.join("two"), steps, &tags);
    // the re-encodings (steps 2 and 4: at the start of steps 3 and 5, so only 3 is logged) say how
    // many documents they encoded and how fast
    for run in ["one", "two"] {
        let docs = series(&runs.join(run), "stage3/index/docs");
        assert_eq!(docs, vec![(3, 378.0)], "{run}");
        let speed = series(&runs.join(run), "stage3/index/docs_per_s");
        assert!(speed.len() == 1 && speed[0].1 > 0.0, "{run}: {speed:?}");
    }
}

#[test]
fn a_curriculum_runs_on_two_workers_and_rank_0_reports() {
    let dir = tempfile::tempdir().unwrap();
    let root = support::root();
    let file = dir.path().join("dp.toml");
    let stage = |kind: &str, cfg: &str| {
        format!(
            "[[stage]]\nkind = \"{kind}\"\nconfig = \"{}\"\n",
            root.join("configs").join(cfg).display()
        )
    };
    let text = format!(
        "name = \"dp\"\noutput_dir = \"{}\"\n{}{}",
        dir.path().join("runs").display(),
        stage("stage1", "tiny-stage1.toml"),
        stage("stage2", "tiny-stage2.toml"),
    );
    std::fs::write(&file, text).unwrap();
    let mut args = vec![
        "curriculum".to_string(),
        file.display().to_string(),
        "--set".into(),
        "train.steps=2".into(),
        "--set".into(),
        "train.eval_every=2".into(),
        "--set".into(),
        "train.warmup_steps=0".into(),
        "--set".into(),
        "logging.progress=\"never\"".into(),
    ];
    args.extend(two_workers(29690));
    let o = t1(&strs(&args));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let report = std::fs::read_to_string(dir.path().join("runs/dp/report.md")).unwrap();
    assert!(report.contains("after stage2"), "{report}");
    // the stages' progress lines come from rank 0 alone
    assert_eq!(err.matches("[2/2] stage2").count(), 1, "{err}");
}
