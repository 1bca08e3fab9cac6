//! Stage 1 on the tiny preset: the loss is finite and falls, every parameter moves, and a run
//! interrupted with Ctrl-C then resumed ends exactly where an uninterrupted run ends.

mod support;

use burn::backend::Flex;
use support::{
    assert_every_parameter_moved, config, interrupt_when, max_param_diff, params, scalar,
    signal_when, t1,
};
use t1_train::model::load_hf;

type B = Flex;

fn losses(run: &std::path::Path) -> Vec<(u64, f64)> {
    scalar(run, "stage1/loss")
}

#[test]
fn stage1_learns_and_moves_every_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "s1", 24, "");
    let o = t1(&[
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.eval_every=12",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/s1");
    let l = losses(&run);
    assert_eq!(l.len(), 24, "one loss per step");
    assert!(l.iter().all(|(_, v)| v.is_finite()));
    let head: f64 = l[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let tail: f64 = l[20..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(tail < 0.7 * head, "loss did not fall: {head} → {tail}");
    // the dev eval ran and the best model is an HF folder
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("best dev loss"), "{stdout}");
    assert!(run.join("best/config.json").exists() && run.join("best/tokenizer.json").exists());

    // every parameter changed from the seeded initialisation
    assert_every_parameter_moved(&cfg, &run.join("checkpoints/step-000024"), 1e-6);
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    // uninterrupted
    let a_out = dir.path().join("a");
    let cfg_a = config(&dir.path().join("a-cfg"), &a_out, "s1", steps, "");
    let o = t1(&["stage1", "--config", cfg_a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // interrupted with Ctrl-C once the first checkpoint exists, then resumed
    let b_out = dir.path().join("b");
    let cfg_b = config(&dir.path().join("b-cfg"), &b_out, "s1", steps, "");
    interrupt_when(
        &["stage1", "--config", cfg_b.to_str().unwrap()],
        &b_out.join("s1/checkpoints/step-000004/state.json"),
    );
    let stopped_at = losses(&b_out.join("s1")).len();
    assert!(
        stopped_at < steps as usize,
        "the run finished before the signal"
    );

    // a fresh start on a run with checkpoints is refused; --resume continues
    let o = t1(&["stage1", "--config", cfg_b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let o = t1(&["stage1", "--config", cfg_b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // same losses step for step after the resume point, same final weights
    let la = losses(&a_out.join("s1"));
    let mut lb = losses(&b_out.join("s1"));
    lb.sort_by_key(|x| x.0);
    lb.dedup_by_key(|x| x.0);
    assert_eq!(la.len(), lb.len());
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {s}: {x} vs {y}"
        );
    }
    let last = format!("s1/checkpoints/step-{steps:06}");
    let wa = params(&load_hf::<B>(&a_out.join(&last), &Default::default()).unwrap());
    let wb = params(&load_hf::<B>(&b_out.join(&last), &Default::default()).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}

#[test]
fn killed_with_sigkill_resumes_from_the_last_checkpoint_to_the_same_end() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    let a_out = dir.path().join("a");
    let cfg_a = config(&dir.path().join("a-cfg"), &a_out, "s1", steps, "");
    assert!(
        t1(&["stage1", "--config", cfg_a.to_str().unwrap()])
            .status
            .success()
    );
    let b_out = dir.path().join("b");
    let cfg_b = config(&dir.path().join("b-cfg"), &b_out, "s1", steps, "");
    let (code, err) = signal_when(
        &["stage1", "--config", cfg_b.to_str().unwrap()],
        &b_out.join("s1/checkpoints/step-000004/state.json"),
        "-KILL",
    );
    assert_eq!(code, None, "killed by the signal: {err}");
    let o = t1(&["stage1", "--config", cfg_b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = format!("s1/checkpoints/step-{steps:06}");
    let wa = params(&load_hf::<B>(&a_out.join(&last), &Default::default()).unwrap());
    let wb = params(&load_hf::<B>(&b_out.join(&last), &Default::default()).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
    let la = losses(&a_out.join("s1"));
    let lb = losses(&b_out.join("s1"));
    let (ea, eb) = (la.last().unwrap(), lb.last().unwrap());
    assert_eq!(ea.0, eb.0);
    assert!(
        (ea.1 - eb.1).abs() <= 1e-5 * ea.1.abs().max(1.0),
        "{ea:?} vs {eb:?}"
    );
}

#[test]
fn eval_at_end_false_skips_the_final_dev_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "s1", 4, "");
    let run = |name: &str, at_end: &str| {
        let o = t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("run.name=\"{name}\""),
            "--set",
            "train.eval_every=0",
            "--set",
            &format!("train.eval_at_end={at_end}"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        (dir.path().join("runs").join(name), stdout)
    };
    // the default: one dev evaluation, after the last step, which writes best/
    let (with, said) = run("with", "true");
    assert_eq!(scalar(&with, "stage1/dev/loss").len(), 1);
    assert!(said.contains("last dev: "), "{said}");
    assert!(with.join("best/config.json").exists());
    // eval_at_end = false with eval_every = 0: none, no best/, the last checkpoint still saved
    let (without, said) = run("without", "false");
    assert!(scalar(&without, "stage1/dev/loss").is_empty());
    assert!(said.contains("4 steps; no dev evaluation"), "{said}");
    assert!(!without.join("best").exists());
    assert!(without.join("checkpoints/step-000004/state.json").exists());
    // the same training either way
    assert_eq!(
        scalar(&with, "stage1/loss"),
        scalar(&without, "stage1/loss")
    );
}
