//! LaSER on the tiny preset: the latent stage trains (latent InfoNCE falls, alignments finite,
//! every parameter moves, dev nDCG@10 of the latent view logged), and `eval --views` reports
//! quality and per-query latency for each query view.

mod support;

use support::{assert_every_parameter_moved, config, scalar, t1};

const LATENT: &str = "
[latent]
steps = 2
temperature = 0.05
teacher_temperature = 0.05
group_size = 3
trajectory = \"kl\"
";

#[test]
fn latent_stage_learns_moves_every_parameter_and_compares_views() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("runs"), "lat", 20, LATENT);
    let o = t1(&[
        "latent",
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "train.eval_every=10",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = dir.path().join("runs/lat");
    let nce = scalar(&run, "latent/latent_nce");
    assert_eq!(nce.len(), 20);
    let head: f64 = nce[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let tail: f64 = nce[16..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(
        tail < 0.8 * head,
        "latent InfoNCE did not fall: {head} → {tail}"
    );
    for tag in [
        "latent/explicit_nce",
        "latent/output_kl",
        "latent/trajectory",
    ] {
        let v = scalar(&run, tag);
        assert_eq!(v.len(), 20, "{tag}");
        assert!(
            v.iter().all(|(_, x)| x.is_finite() && *x >= 0.0),
            "{tag}: {v:?}"
        );
    }
    let ndcg = scalar(&run, "latent/dev/ndcg@10");
    assert_eq!(ndcg.iter().map(|x| x.0).collect::<Vec<_>>(), vec![10, 20]);
    assert!(run.join("best/model.safetensors").exists());
    assert_every_parameter_moved(&cfg, &run.join("checkpoints/step-000020"), 1e-6);

    // every view of the trained model, with latency: the same config, [model] from best/
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("tokenizer ="))
        .map(|l| {
            if l.starts_with("preset =") {
                format!("path = {:?}\n", run.join("best").display().to_string())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let eval_cfg = dir.path().join("eval.toml");
    std::fs::write(&eval_cfg, text).unwrap();
    let o = t1(&[
        "eval",
        "--config",
        eval_cfg.to_str().unwrap(),
        "--views",
        "bare,generated,latent",
        "--latency-queries",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/views.json")).unwrap())
            .unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["view"].as_str().unwrap()).collect();
    assert_eq!(names, ["bare", "generated", "latent"]);
    for r in rows {
        let ndcg = r["metrics"]["ndcg_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ndcg), "{r}");
        for k in ["ms_per_query_batch1", "ms_per_query_batched"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
        let run_file = run.join(format!("eval/test-{}.run", r["view"].as_str().unwrap()));
        assert!(run_file.exists(), "{}", run_file.display());
    }
    assert_eq!(report["latency_queries"], 3);
    let md = std::fs::read_to_string(run.join("eval/views.md")).unwrap();
    assert!(md.contains("| latent |"), "{md}");

    // a plain eval with the generated view also writes what the model reasoned, per query
    let o = t1(&[
        "eval",
        "--config",
        eval_cfg.to_str().unwrap(),
        "--set",
        "eval.query_view=\"generated\"",
        "--set",
        "eval.retriever=\"dense\"",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/test.json")).unwrap())
            .unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("eval/test.reasoning.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(lines.len() as u64, report["num_queries"].as_u64().unwrap());
    for l in &lines {
        let id = l["query_id"].as_str().unwrap();
        assert!(l["reasoning"].is_string() && l["query"].is_string(), "{l}");
        assert_eq!(l["ndcg@10"], report["per_query"][id]["ndcg_at_10"], "{l}");
    }

    // an unknown view is a usage error naming the choices
    let o = t1(&[
        "eval",
        "--config",
        cfg.to_str().unwrap(),
        "--views",
        "bare,sideways",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sideways") && err.contains("latent"), "{err}");
}
