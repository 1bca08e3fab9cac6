//! Rewards from TOML: names and parameters are checked at load, scripts run sandboxed and fail
//! with errors naming the script and line, weights combine as TRL's `nansum`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use t1_rewards::{RewardSpec, RolloutOutcome, ScoredDoc, combine};

#[derive(Deserialize)]
struct Cfg {
    rewards: Vec<RewardSpec>,
}

fn parse(text: &str) -> Result<Vec<RewardSpec>, String> {
    toml::from_str::<Cfg>(text)
        .map(|c| c.rewards)
        .map_err(|e| e.to_string())
}

fn outcome(gold_ranks: &[usize], tokens: usize) -> RolloutOutcome {
    RolloutOutcome {
        gold: gold_ranks
            .iter()
            .map(|&r| {
                (
                    ScoredDoc {
                        id: format!("g{r}"),
                        score: 0.5,
                        rank: r,
                    },
                    1,
                )
            })
            .collect(),
        top_k: vec![],
        num_docs: 100,
        text: "because".into(),
        num_tokens: tokens,
        truncated: false,
        format_ok: true,
        bare_gold: None,
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

#[test]
fn builtins_parse_with_defaults_and_combine_with_weights() {
    let specs = parse(
        r#"
[[rewards]]
name = "ndcg"
k = 5
weight = 2.0

[[rewards]]
name = "reciprocal_rank"

[[rewards]]
name = "length_penalty"
max_tokens = 100
weight = 0.5
"#,
    )
    .unwrap();
    assert_eq!(specs[0], RewardSpec::Ndcg { k: 5, weight: 2.0 });
    assert_eq!(specs[1], RewardSpec::ReciprocalRank { weight: 1.0 });
    let rewards: Vec<_> = specs.iter().map(|s| s.build().unwrap()).collect();
    let weights: Vec<f32> = specs.iter().map(|s| s.weight()).collect();
    let o = outcome(&[1], 50);
    let values: Vec<Option<f32>> = rewards.iter().map(|r| r.try_score(&o).unwrap()).collect();
    assert_eq!(values, vec![Some(1.0), Some(1.0), Some(-0.5)]);
    assert_eq!(combine(&values, &weights), Some(2.0 + 1.0 - 0.25));
    // abstaining rewards are left out; all abstaining makes the rollout unscorable
    let none = outcome(&[], 50);
    let values: Vec<Option<f32>> = rewards
        .iter()
        .map(|r| r.try_score(&none).unwrap())
        .collect();
    assert_eq!(values, vec![None, None, Some(-0.5)]);
    assert_eq!(combine(&values, &weights), Some(-0.25));
    assert_eq!(combine(&[None, None], &[1.0, 1.0]), None, "unscorable");
}

#[test]
fn unknown_names_and_parameters_fail_listing_what_exists() {
    let e = parse("[[rewards]]\nname = \"mrr\"\n").unwrap_err();
    assert!(
        e.contains("unknown variant `mrr`")
            && e.contains("reciprocal_rank")
            && e.contains("script"),
        "{e}"
    );
    let e = parse("[[rewards]]\nname = \"ndcg\"\nkk = 3\n").unwrap_err();
    assert!(e.contains("unknown field `kk`") && e.contains("`k`"), "{e}");
    let e = parse("[[rewards]]\nname = \"length_penalty\"\n").unwrap_err();
    assert!(e.contains("missing field `max_tokens`"), "{e}");
    let zero = RewardSpec::Hit { k: 0, weight: 1.0 }.build().err().unwrap();
    assert!(zero.0.contains("hit: k"), "{zero}");
}

#[test]
fn shipped_scripts_compute_and_abstain() {
    let mut s = RewardSpec::Script {
        path: "top3_bonus.rhai".into(),
        weight: 1.0,
        max_operations: 10_000,
    };
    s.resolve(&scripts());
    let r = s.build().unwrap();
    assert_eq!(r.name(), "script:top3_bonus");
    assert_eq!(r.try_score(&outcome(&[5, 2], 10)).unwrap(), Some(1.0));
    assert_eq!(r.try_score(&outcome(&[8], 10)).unwrap(), Some(0.125));
    assert_eq!(r.try_score(&outcome(&[], 10)).unwrap(), None);

    let mut s = RewardSpec::Script {
        path: "concise_and_right.rhai".into(),
        weight: 1.0,
        max_operations: 10_000,
    };
    s.resolve(&scripts());
    let r = s.build().unwrap();
    assert_eq!(r.try_score(&outcome(&[3], 32)).unwrap(), Some(0.75));
    assert_eq!(r.try_score(&outcome(&[30], 32)).unwrap(), Some(0.0));
    let mut t = outcome(&[1], 5);
    t.truncated = true;
    assert_eq!(r.try_score(&t).unwrap(), Some(-1.0));
}

fn script(dir: &Path, name: &str, body: &str) -> RewardSpec {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    RewardSpec::Script {
        path: p,
        weight: 1.0,
        max_operations: 5_000,
    }
}

#[test]
fn failing_scripts_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    // syntax error on line 3, reported at load
    let e = script(
        dir.path(),
        "bad.rhai",
        "fn reward(o) {\n  let x = 1;\n  let = 2;\n}\n",
    )
    .build()
    .err()
    .unwrap()
    .0;
    assert!(
        e.contains("bad.rhai:3") && e.contains("syntax error"),
        "{e}"
    );
    // no reward function
    let e = script(dir.path(), "none.rhai", "fn other(o) { 1 }\n")
        .build()
        .err()
        .unwrap()
        .0;
    assert!(e.contains("none.rhai") && e.contains("fn reward(o)"), "{e}");
    // runtime error on line 2, reported when scoring
    let r = script(
        dir.path(),
        "boom.rhai",
        "fn reward(o) {\n  o.gold[5].rank\n}\n",
    )
    .build()
    .unwrap();
    let e = r.try_score(&outcome(&[1], 3)).unwrap_err().0;
    assert!(e.contains("boom.rhai:2"), "{e}");
    assert_eq!(
        r.score(&outcome(&[1], 3)),
        None,
        "the infallible view abstains"
    );
    // a runaway loop hits the operation limit instead of hanging
    let r = script(dir.path(), "loop.rhai", "fn reward(o) {\n  loop { }\n}\n")
        .build()
        .unwrap();
    let e = r.try_score(&outcome(&[1], 3)).unwrap_err().0;
    assert!(
        e.contains("loop.rhai") && e.to_lowercase().contains("operations"),
        "{e}"
    );
    // a limit has no line: the error says so instead of pointing at a line 0
    assert!(
        !e.contains(":0") && e.contains("whole `reward` call"),
        "{e}"
    );
    // a wrong return type
    let r = script(dir.path(), "str.rhai", "fn reward(o) { \"high\" }\n")
        .build()
        .unwrap();
    let e = r.try_score(&outcome(&[1], 3)).unwrap_err().0;
    assert!(e.contains("expected a number"), "{e}");
    // no file access: there is no function to open one
    let r = script(
        dir.path(),
        "fs.rhai",
        "fn reward(o) { open_file(\"/etc/passwd\"); 1 }\n",
    )
    .build()
    .unwrap();
    assert!(r.try_score(&outcome(&[1], 3)).is_err());
    // nor through `import`, which by default reads `.rhai` files from disk
    std::fs::write(dir.path().join("secret.rhai"), "export const X = 42;\n").unwrap();
    let imported = script(
        dir.path(),
        "import.rhai",
        &format!(
            "import \"{}\" as s;\nfn reward(o) {{ s::X }}\n",
            dir.path().join("secret").display()
        ),
    )
    .build();
    let refused = match imported {
        Err(e) => e.to_string(),
        Ok(r) => r
            .try_score(&outcome(&[1], 3))
            .map(|v| format!("scored {v:?}"))
            .unwrap_or_else(|e| e.0),
    };
    assert!(!refused.starts_with("scored"), "{refused}");
    assert!(refused.contains("import.rhai"), "{refused}");
}

#[test]
fn beats_bare_parses_builds_and_reaches_scripts() {
    let specs = parse(
        "[[rewards]]\nname = \"beats_bare\"\n\n[[rewards]]\nname = \"beats_bare\"\n\
         metric = \"reciprocal_rank\"\nmargin = 0.1\nweight = 0.5\n",
    )
    .unwrap();
    assert_eq!(
        specs[0],
        RewardSpec::BeatsBare {
            metric: t1_rewards::BareMetric::Ndcg,
            k: 10,
            margin: 0.0,
            weight: 1.0
        }
    );
    let bare = |own: &[usize], bare: &[usize]| RolloutOutcome {
        bare_gold: Some(outcome(bare, 5).gold),
        ..outcome(own, 5)
    };
    let rr = specs[1].build().unwrap();
    // 1/2 − 1/4 = 0.25 > 0.1; 1/4 − 1/5 = 0.05 is not
    assert_eq!(rr.try_score(&bare(&[2], &[4])).unwrap(), Some(1.0));
    assert_eq!(rr.try_score(&bare(&[4], &[5])).unwrap(), Some(0.0));
    let e = parse("[[rewards]]\nname = \"beats_bare\"\nmetric = \"map\"\n").unwrap_err();
    assert!(
        e.contains("unknown variant `map`") && e.contains("ndcg"),
        "{e}"
    );
    let nan = RewardSpec::BeatsBare {
        metric: t1_rewards::BareMetric::Hit,
        k: 10,
        margin: f32::NAN,
        weight: 1.0,
    };
    assert!(nan.build().err().unwrap().0.contains("margin"));
    let zero = RewardSpec::BeatsBare {
        metric: t1_rewards::BareMetric::Ndcg,
        k: 0,
        margin: 0.0,
        weight: 1.0,
    };
    let e = zero.build().err().unwrap().0;
    assert!(e.contains("beats_bare: ndcg: k must be at least 1"), "{e}");

    // a script sees the bare ranks, and () without them
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "gain.rhai",
        "fn reward(o) { if o.bare_gold == () { return (); } \
         1.0 / o.gold[0].rank - 1.0 / o.bare_gold[0].rank }",
    )
    .build()
    .unwrap();
    assert_eq!(s.try_score(&bare(&[2], &[4])).unwrap(), Some(0.25));
    assert_eq!(s.try_score(&outcome(&[2], 5)).unwrap(), None);
}
