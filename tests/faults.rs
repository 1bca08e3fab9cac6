//! Faults: non-finite steps are skipped and a streak of them stops the run with the last good
//! weights checkpointed; a corrupted or truncated checkpoint is refused naming the file; a
//! checkpoint write that runs out of room fails clearly and leaves the older checkpoint intact
//! and resumable; an unusable run folder is a clear error.

mod support;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor};
use support::{config, max_param_diff, params, t1};
use t1_train::config::Config;
use t1_train::model::load_hf;
use t1_train::train::common::{Goal, Trainer};
use t1_train::train::micro::MicroBatch;

type B = Flex;
type A = Autodiff<Flex>;

/// A loss that depends on every layer: mean logit of a fixed batch, times `scale`.
fn loss(tr: &Trainer<A>, scale: f64) -> Tensor<A, 1> {
    let dev = Default::default();
    let ids = Tensor::<A, 2, Int>::from_ints([[5, 9, 17, 33, 2, 11]], &dev);
    tr.model.forward(ids, None).0.powf_scalar(2.0).mean() * scale
}

fn step(tr: &mut Trainer<A>, scale: f64) -> t1_train::Result<()> {
    let l = loss(tr, scale);
    // one micro-batch, the whole step: its loss is the step's logged loss
    let whole = MicroBatch {
        rows: 0..1,
        scale: 1.0,
    };
    tr.backward(&whole, l, None);
    tr.step(&[])
}

#[test]
fn nonfinite_steps_are_skipped_counted_and_a_streak_stops_with_the_last_good_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &dir.path().join("runs"), "nf", 20, "");
    let cfg = Config::load(
        &path,
        &[
            "train.max_nonfinite_steps=2".into(),
            "train.save_every=100".into(),
            "logging.jsonl=true".into(),
        ],
    )
    .unwrap();
    let mut tr = Trainer::<A>::start(
        &cfg,
        "stage1",
        false,
        Goal::Minimize,
        "loss",
        &Default::default(),
    )
    .unwrap();

    let w0 = params(&tr.model.valid());
    step(&mut tr, 1.0).unwrap();
    let w1 = params(&tr.model.valid());
    assert!(max_param_diff(&w0, &w1) > 0.0, "a finite step updates");

    // NaN loss (and NaN gradients): skipped, counted, the step still advances
    step(&mut tr, f64::NAN).unwrap();
    assert_eq!(max_param_diff(&w1, &params(&tr.model.valid())), 0.0);
    assert_eq!(
        (
            tr.state.step,
            tr.state.nonfinite_steps,
            tr.state.nonfinite_in_a_row
        ),
        (2, 1, 1)
    );
    // infinite too; then a finite step resets the streak
    step(&mut tr, f64::INFINITY).unwrap();
    assert_eq!(tr.state.nonfinite_in_a_row, 2);
    step(&mut tr, 1.0).unwrap();
    assert_eq!(
        (
            tr.state.step,
            tr.state.nonfinite_steps,
            tr.state.nonfinite_in_a_row
        ),
        (4, 2, 0)
    );
    let good = params(&tr.model.valid());
    assert!(max_param_diff(&w1, &good) > 0.0);

    // a streak longer than max_nonfinite_steps = 2 stops the run at its third step
    step(&mut tr, f64::NAN).unwrap();
    step(&mut tr, f64::NAN).unwrap();
    let e = step(&mut tr, f64::NAN).unwrap_err().to_string();
    assert!(
        e.contains("not finite for 3 steps in a row (steps 5–7)") && e.contains("step-000007"),
        "{e}"
    );
    // …with a checkpoint of the last good weights, which loads
    let run = dir.path().join("runs/nf");
    let saved = load_hf::<B>(&run.join("checkpoints/step-000007"), &Default::default()).unwrap();
    assert_eq!(max_param_diff(&good, &params(&saved)), 0.0);
    // the count is logged
    let counts = support::scalar(&run, "stage1/nonfinite_steps");
    assert_eq!(
        counts.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0]
    );
}

/// A short stage-1 run with checkpoints at steps 4 and 8.
fn short_run(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = config(&dir.join("cfg"), &dir.join("runs"), "f", 8, "");
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cfg, dir.join("runs/f"))
}

#[test]
fn corrupted_or_truncated_checkpoints_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run) = short_run(dir.path());
    let ck = run.join("checkpoints/step-000008");
    assert!(ck.join("SHA256SUMS").exists() && run.join("best/SHA256SUMS").exists());
    let resume = |steps: &str| {
        t1(&[
            "stage1",
            "--config",
            cfg.to_str().unwrap(),
            "--resume",
            "--set",
            &format!("train.steps={steps}"),
        ])
    };

    // one flipped byte deep in the weights: still parses as safetensors, but is refused
    let weights = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let o = resume("12");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("corrupted"),
        "{err}"
    );
    bytes[at] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();

    // truncated optimizer state
    let opt = ck.join("optimizer.mpk");
    let full = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &full[..full.len() / 2]).unwrap();
    let err = String::from_utf8_lossy(&resume("12").stderr).to_string();
    assert!(
        err.contains("optimizer.mpk") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&opt, &full).unwrap();

    // a checkpoint without its SHA256SUMS is not loaded either
    std::fs::rename(ck.join("SHA256SUMS"), dir.path().join("sums")).unwrap();
    let err = String::from_utf8_lossy(&resume("12").stderr).to_string();
    assert!(
        err.contains("SHA256SUMS") && err.contains("cannot be verified"),
        "{err}"
    );
    std::fs::rename(dir.path().join("sums"), ck.join("SHA256SUMS")).unwrap();

    // the best/ model a later stage starts from is checked the same way
    let tok = run.join("best/tokenizer.json");
    let t = std::fs::read_to_string(&tok).unwrap();
    std::fs::write(&tok, t.replacen("<think>", "<thonk>", 1)).unwrap();
    let o = t1(&[
        "generate",
        "--model",
        run.join("best").to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("tokenizer.json") && err.contains("corrupted"),
        "{err}"
    );
    std::fs::write(&tok, t).unwrap();

    // restored: the resume goes through
    let o = resume("12");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run.join("checkpoints/step-000012/SHA256SUMS").exists());
}

/// Runs `t1-train args` with files capped at `max_bytes` (RLIMIT_FSIZE, SIGXFSZ ignored): a write
/// past the cap fails with EFBIG, as a full disk fails with ENOSPC — through the same error path.
#[cfg(unix)]
fn t1_with_file_size_cap(args: &[&str], max_bytes: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_t1-train"));
    cmd.args(args);
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: max_bytes,
                rlim_max: max_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[cfg(unix)]
#[test]
fn a_checkpoint_write_that_runs_out_of_room_fails_clearly_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run) = short_run(dir.path());
    let old =
        params(&load_hf::<B>(&run.join("checkpoints/step-000008"), &Default::default()).unwrap());
    let weights_size = std::fs::metadata(run.join("checkpoints/step-000008/model.safetensors"))
        .unwrap()
        .len();
    let args = [
        "stage1",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "--set",
        "train.steps=16",
    ];
    let o = t1_with_file_size_cap(&args, weights_size / 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // step 12 is a checkpoint step (not an eval one): its write fails
    assert!(
        err.contains("checkpoint step-000012 was not written")
            && err.contains("File too large")
            && err.contains("step-000008 is intact")
            && err.contains("--resume"),
        "{err}"
    );
    // the older checkpoint is untouched and verifies; nothing half-written is left behind
    let entries: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|n| !n.starts_with(".tmp")),
        "{entries:?}"
    );
    assert!(!run.join(".best.tmp").exists());
    let again =
        params(&load_hf::<B>(&run.join("checkpoints/step-000008"), &Default::default()).unwrap());
    assert_eq!(max_param_diff(&old, &again), 0.0);
    // with room again, --resume carries on from it
    let o = t1(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run.join("checkpoints/step-000016/SHA256SUMS").exists());
}

#[test]
fn an_unusable_run_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "a file where the run folder should go").unwrap();
    let cfg = config(&dir.path().join("cfg"), &blocker, "f", 4, "");
    let o = t1(&["stage1", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not-a-folder/f") && err.contains("Not a directory"),
        "{err}"
    );
}
