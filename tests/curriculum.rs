//! `t1-train curriculum`: three short stages chained best → next, a report with every row, a
//! second run that skips the finished stages and reproduces the report, and a stage folder
//! trained under another config refused.

mod support;

use support::{config, t1};

const STAGE3: &str = r#"
[stage3]
group_size = 2
mask_truncated = false

[[stage3.rewards]]
name = "reciprocal_rank"
"#;

#[test]
fn curriculum_chains_stages_reports_and_skips_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("unused");
    let c1 = config(dir.path(), &runs, "c1", 4, "");
    let c2 = config(dir.path(), &runs, "c2", 4, "");
    let c3 = config(dir.path(), &runs, "c3", 4, STAGE3);
    let file = dir.path().join("tiny.toml");
    let write = |name: &str| {
        std::fs::write(
            &file,
            format!(
                "name = \"{name}\"\noutput_dir = \"out\"\n\n[[stage]]\nkind = \"stage1\"\nconfig = \"{}\"\n\n[[stage]]\nkind = \"stage2\"\nconfig = \"{}\"\n\n[[stage]]\nkind = \"stage3\"\nconfig = \"{}\"\n",
                c1.file_name().unwrap().to_str().unwrap(),
                c2.file_name().unwrap().to_str().unwrap(),
                c3.file_name().unwrap().to_str().unwrap(),
            ),
        )
        .unwrap();
    };
    write("tiny");
    let args = [
        "curriculum",
        file.to_str().unwrap(),
        "--set",
        "train.eval_every=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "model.max_reasoning_tokens=8",
        "--set",
        "train.warmup_steps=1",
    ];
    let o = t1(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    let root = dir.path().join("out/tiny");
    for s in ["stage1", "stage2", "stage3"] {
        assert!(root.join(s).join("best/config.json").is_file(), "{s}");
        assert!(root.join(s).join("checkpoints/step-000004").is_dir(), "{s}");
    }
    // stage 2 started from stage 1's best, stage 3 from stage 2's
    let resolved = std::fs::read_to_string(root.join("stage3/config.resolved.toml")).unwrap();
    assert!(
        resolved.contains(&root.join("stage2/best").display().to_string()),
        "{resolved}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} / {}",
                r["model"].as_str().unwrap(),
                r["query"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            "untrained backbone / bare",
            "after stage1 / bare",
            "after stage1 / greedy reasoning",
            "after stage2 / bare",
            "after stage2 / greedy reasoning",
            "after stage3 / bare",
            "after stage3 / greedy reasoning",
        ]
    );
    // every trained model's reasoning row against its bare row: the means are the rows', the
    // counts cover the split, and the verdict says what the p-value says
    let cmp = report["comparisons"].as_array().unwrap();
    let models: Vec<&str> = cmp.iter().map(|c| c["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["after stage1", "after stage2", "after stage3"]);
    let ndcg = |model: &str, query: &str| {
        rows.iter()
            .find(|r| r["model"] == model && r["query"] == query)
            .unwrap()["ndcg_at_10"]
            .as_f64()
            .unwrap()
    };
    for c in cmp {
        let model = c["model"].as_str().unwrap();
        let p = &c["paired"];
        assert!((p["mean_a"].as_f64().unwrap() - ndcg(model, "bare")).abs() < 1e-9);
        assert!((p["mean_b"].as_f64().unwrap() - ndcg(model, "greedy reasoning")).abs() < 1e-9);
        let n: u64 = ["wins", "losses", "ties"]
            .iter()
            .map(|k| p[k].as_u64().unwrap())
            .sum();
        assert_eq!(n, report["num_queries"].as_u64().unwrap());
        let pv = p["p_value"].as_f64().unwrap();
        assert!(pv > 0.0 && pv <= 1.0, "{pv}");
    }
    for r in rows {
        for k in ["ndcg_at_10", "recall_at_100", "mrr_at_10"] {
            let v = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
    }
    let md = std::fs::read_to_string(root.join("report.md")).unwrap();
    assert!(md.contains("| after stage3 | greedy reasoning |"), "{md}");
    assert!(
        md.contains("| p (paired randomisation) | verdict |"),
        "{md}"
    );

    // again: every stage is skipped and the report is the same
    let o = t1(&args);
    let err2 = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err2}");
    assert_eq!(
        err2.matches("already complete, skipped").count(),
        3,
        "{err2}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("report.json")).unwrap()).unwrap();
    assert_eq!(again["rows"], report["rows"]);

    // a changed stage config does not silently reuse the old folder
    let mut changed = args.to_vec();
    changed.extend(["--set", "train.lr=1e-2"]);
    let o = t1(&changed);
    let err3 = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err3}");
    assert!(err3.contains("trained under another config"), "{err3}");
}
