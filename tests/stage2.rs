//! Stage 2 on the tiny preset: InfoNCE (+ joint SFT) is finite and falls, every parameter moves,
//! mined negatives exclude positives and excluded ids, and a Ctrl-C'd run resumed (with mining
//! and random negatives in play) ends exactly where an uninterrupted one ends.

mod support;

use std::collections::HashSet;

use burn::backend::Flex;
use support::{
    assert_every_parameter_moved, config, interrupt_when, max_param_diff, params, scalar, t1,
};
use t1_train::data::Dataset;
use t1_train::model::load_hf;

type B = Flex;

const STAGE2: &str = "
[stage2]
temperature = 0.05
group_size = 3
sft_weight = 0.1
";

#[test]
fn stage2_learns_moves_every_parameter_and_reports_dev_ndcg() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "s2", 20, STAGE2);
    let o = t1(&[
        "stage2",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.eval_every=10",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/s2");
    let nce = scalar(&run, "stage2/nce_loss");
    assert_eq!(nce.len(), 20);
    assert!(nce.iter().all(|(_, v)| v.is_finite()));
    let head: f64 = nce[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let tail: f64 = nce[16..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(tail < 0.8 * head, "InfoNCE did not fall: {head} → {tail}");
    assert!(
        scalar(&run, "stage2/sft_loss")
            .iter()
            .all(|(_, v)| *v > 0.0)
    );
    let ndcg = scalar(&run, "stage2/dev/ndcg@10");
    assert_eq!(ndcg.iter().map(|x| x.0).collect::<Vec<_>>(), vec![10, 20]);
    assert!(run.join("best/model.safetensors").exists());

    assert_every_parameter_moved(&cfg, &run.join("checkpoints/step-000020"), 1e-6);
}

#[test]
fn mined_negatives_skip_positives_and_excluded_ids_and_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 24;
    let extra = format!("{STAGE2}mine_every = 8\nmine_depth = 10\n");
    let a_out = dir.path().join("a");
    let cfg_a = config(&dir.path().join("a-cfg"), &a_out, "s2", steps, &extra);
    let o = t1(&["stage2", "--config", cfg_a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // mined lists: one per mining step, 10 per query, never relevant or excluded
    let ds = Dataset::load(&support::root().join("curricula/default/data")).unwrap();
    let train = ds.split("train").unwrap();
    for step in [0, 8, 16] {
        let f = a_out.join(format!("s2/mined_negatives/step-{step:06}.jsonl"));
        let mined = ds.read_hard_negatives(&f).unwrap();
        assert_eq!(mined.len(), train.len());
        for (qid, docs) in &mined {
            assert_eq!(docs.len(), 10);
            let q = ds.query(qid).unwrap();
            let bad: HashSet<&String> = train[qid]
                .iter()
                .filter(|(_, s)| **s > 0)
                .map(|(d, _)| d)
                .chain(&q.excluded_ids)
                .collect();
            assert!(docs.iter().all(|d| !bad.contains(d)), "{qid}: {docs:?}");
        }
    }

    let b_out = dir.path().join("b");
    let cfg_b = config(&dir.path().join("b-cfg"), &b_out, "s2", steps, &extra);
    interrupt_when(
        &["stage2", "--config", cfg_b.to_str().unwrap()],
        &b_out.join("s2/checkpoints/step-000004/state.json"),
    );
    assert!(scalar(&b_out.join("s2"), "stage2/loss").len() < steps as usize);
    let o = t1(&["stage2", "--config", cfg_b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let la = scalar(&a_out.join("s2"), "stage2/loss");
    let mut lb = scalar(&b_out.join("s2"), "stage2/loss");
    lb.sort_by_key(|x| x.0);
    lb.dedup_by_key(|x| x.0);
    assert_eq!(la.len(), lb.len());
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {s}: {x} vs {y}"
        );
    }
    let last = format!("s2/checkpoints/step-{steps:06}");
    let wa = params(&load_hf::<B>(&a_out.join(&last), &Default::default()).unwrap());
    let wb = params(&load_hf::<B>(&b_out.join(&last), &Default::default()).unwrap());
    let worst = max_param_diff(&wa, &wb);
    assert!(worst <= 1e-5, "final weights differ by {worst}");
}
