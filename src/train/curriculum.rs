//! `t1-train curriculum curricula/<name>.toml`: the stages in order, each from the best model of
//! the one before (stage 3's reference is therefore the stage-2 model), then a report.
//!
//! Layout: `<output_dir>/<name>/<stage>/` is each stage's ordinary run folder (its config's
//! `run.output_dir` and `run.name` are overridden), `<output_dir>/<name>/report.{md,json}` the
//! report. Running the same command again skips stages whose last checkpoint reached
//! `train.steps` under the same config, resumes a stage that was interrupted, and refuses a
//! stage folder trained under another config (the hash in its checkpoint differs).
//!
//! Report (dense retrieval, trec_eval-exact, on the last stage's eval split): the untrained
//! backbone with bare queries; after stage 1 with its greedy reasoning; after stage 2 bare and
//! with greedy reasoning; after stage 3 with greedy reasoning — nDCG@10, Recall@100, MRR@10.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::config::{Config, QueryView};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::Metrics;
use crate::eval::dense::dense_eval;
use crate::model::load::load_backbone;
use crate::train::StageKind;
use crate::train::common::{StageSummary, config_hash};

/// One stage of a curriculum file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    /// `stage1`, `stage2`, `stage3` or `latent` (LaSER).
    pub kind: StageKind,
    /// The stage's config, relative to the curriculum file. Its `[model]` is used as is for
    /// the first stage; later stages start from the previous stage's `best/`.
    pub config: PathBuf,
    /// `key=value` overrides of this stage's config (as `--set`), applied before the command
    /// line's `--set`s: e.g. `set = ["lora.enabled=true", "train.lr=1e-2"]`. Default none.
    #[serde(default)]
    pub set: Vec<String>,
}

/// A curriculum file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// Run folder name under `output_dir`.
    pub name: String,
    /// Relative to the curriculum file. Default `runs` beside it.
    #[serde(default = "default_output")]
    pub output_dir: PathBuf,
    /// The stages, in order (`[[stage]]` tables).
    pub stage: Vec<StageEntry>,
}

fn default_output() -> PathBuf {
    PathBuf::from("runs")
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub model: String,
    /// `bare` or `greedy reasoning`.
    pub query: String,
    pub model_path: String,
    pub ndcg_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    /// Each query's nDCG@10 (for the paired comparisons).
    #[serde(skip)]
    pub per_query_ndcg: std::collections::BTreeMap<String, f64>,
}

/// A model's reasoning view against its bare query on the same queries (nDCG@10).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub model: String,
    /// The reasoning view (`greedy reasoning`, `latent (K steps)`).
    pub query: String,
    pub paired: crate::eval::paired::Paired,
}

impl Comparison {
    /// What the comparison says, plainly (two-sided p < 0.05).
    pub fn verdict(&self) -> &'static str {
        match (self.paired.diff(), self.paired.p_value < 0.05) {
            (d, true) if d > 0.0 => "reasoning helps",
            (d, true) if d < 0.0 => "reasoning hurts",
            _ => "no significant difference: reasoning does not help here",
        }
    }
}

/// One stage's outcome: name, steps done, best dev `(metric, value, step)`.
pub type StageOutcome = (String, u64, Option<(String, f64, u64)>);

/// The report written to `report.json` / `report.md`.
#[derive(Debug, Clone, Serialize)]
pub struct CurriculumReport {
    pub curriculum: String,
    pub split: String,
    pub num_queries: usize,
    pub stages: Vec<StageOutcome>,
    pub rows: Vec<ReportRow>,
    /// Every model's reasoning rows against its bare row.
    pub comparisons: Vec<Comparison>,
}

impl CurriculumReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Curriculum `{}`: {} split ({} queries)\n\n| model | query | nDCG@10 | Recall@100 | MRR@10 |\n|---|---|---|---|---|\n",
            self.curriculum, self.split, self.num_queries
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} |\n",
                r.model, r.query, r.ndcg_at_10, r.recall_at_100, r.mrr_at_10
            ));
        }
        if !self.comparisons.is_empty() {
            s.push_str(
                "\n| model | reasoning vs bare | Δ nDCG@10 | wins / losses / ties | p (paired randomisation) | verdict |\n|---|---|---|---|---|---|\n",
            );
            for c in &self.comparisons {
                let p = &c.paired;
                let pv = match p.p_value {
                    v if v < 1e-4 => "< 0.0001".to_string(),
                    v => format!("{v:.4}"),
                };
                s.push_str(&format!(
                    "| {} | {} | {:+.4} | {} / {} / {} | {pv} | {} |\n",
                    c.model,
                    c.query,
                    p.diff(),
                    p.wins,
                    p.losses,
                    p.ties,
                    c.verdict()
                ));
            }
        }
        s.push_str("\n| stage | steps | best dev checkpoint |\n|---|---|---|\n");
        for (stage, steps, best) in &self.stages {
            let best = best
                .as_ref()
                .map(|(m, v, step)| format!("{m} {v:.4} at step {step}"))
                .unwrap_or_else(|| "–".into());
            s.push_str(&format!("| {stage} | {steps} | {best} |\n"));
        }
        s
    }
}

/// What happened to one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus {
    Fresh,
    Resumed,
    /// Its last checkpoint reached `train.steps`: nothing is loaded, its state says how it ended.
    AlreadyDone(crate::run::checkpoint::TrainState),
}

/// Reads and checks a curriculum file: known fields, at least one stage, stage configs exist.
pub fn load(path: &Path) -> Result<Curriculum> {
    let mut c: Curriculum = crate::config::load_toml(path, &[])?;
    let base = path.parent().unwrap_or(Path::new("."));
    let err = |key: &str, message: String| Error::Config {
        location: format!("{} (key '{key}')", path.display()),
        message,
    };
    if c.stage.is_empty() {
        return Err(err(
            "stage",
            "a curriculum needs at least one [[stage]]".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in c.stage.iter_mut().enumerate() {
        if !seen.insert(s.kind) {
            return Err(err(
                &format!("stage[{i}].kind"),
                format!("{} appears twice", s.kind.name()),
            ));
        }
        s.config = absolute(base, &s.config);
        if !s.config.is_file() {
            return Err(err(
                &format!("stage[{i}].config"),
                format!("{} does not exist", s.config.display()),
            ));
        }
    }
    c.output_dir = absolute(base, &c.output_dir);
    Ok(c)
}

/// `p` against `base`, made absolute (so stage configs resolve the same from any working folder).
fn absolute(base: &Path, p: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    crate::config::resolve(&cwd, &crate::config::resolve(base, p))
}

/// The resolved config of stage `i`: its file, the curriculum's folder and name, the previous
/// stage's best model, the stage's own `set`, then the command line's `--set`s.
pub fn stage_config(
    c: &Curriculum,
    i: usize,
    previous_best: Option<&Path>,
    extra: &[String],
) -> Result<Config> {
    let s = &c.stage[i];
    let mut overrides = vec![
        format!(
            "run.output_dir={:?}",
            c.output_dir.join(&c.name).display().to_string()
        ),
        format!("run.name={:?}", s.kind.name()),
    ];
    overrides.extend(s.set.iter().cloned());
    overrides.extend(extra.iter().cloned());
    match previous_best {
        Some(best) => Config::load_from_model(&s.config, &overrides, best),
        None => Config::load(&s.config, &overrides),
    }
}

/// Whether a stage's run folder is empty, part-way, or complete under this config.
pub fn stage_status(cfg: &Config) -> Result<StageStatus> {
    let Some(dir) = crate::run::checkpoint::latest(&cfg.run_dir)? else {
        return Ok(StageStatus::Fresh);
    };
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: crate::run::checkpoint::TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::data(&path, e.line(), None, format!("malformed train state: {e}")))?;
    if state.config_hash != config_hash(cfg)? {
        return Err(Error::Config {
            location: cfg.source.display().to_string(),
            message: format!(
                "{} was trained under another config; move that folder away (or change the curriculum's name) to run this one",
                cfg.run_dir.display()
            ),
        });
    }
    Ok(if state.step >= cfg.raw.train.steps {
        StageStatus::AlreadyDone(state)
    } else {
        StageStatus::Resumed
    })
}

/// Runs (or finishes) every stage, then writes the report. `say` gets one line per event.
pub fn run<B: AutodiffBackend>(
    c: &Curriculum,
    extra: &[String],
    device: &B::Device,
    mut say: impl FnMut(&str),
) -> Result<CurriculumReport> {
    let mut best: Option<PathBuf> = None;
    let mut configs = Vec::new();
    let mut stages = Vec::new();
    for (i, s) in c.stage.iter().enumerate() {
        let cfg = stage_config(c, i, best.as_deref(), extra)?;
        let status = stage_status(&cfg)?;
        say(&format!(
            "[{}/{}] {} ({}): {}",
            i + 1,
            c.stage.len(),
            s.kind.name(),
            cfg.run_dir.display(),
            match status {
                StageStatus::Fresh => "starting",
                StageStatus::Resumed => "resuming from its last checkpoint",
                StageStatus::AlreadyDone(_) => "already complete, skipped",
            }
        ));
        let resume = status == StageStatus::Resumed;
        let summary: StageSummary = match (&status, s.kind) {
            (StageStatus::AlreadyDone(state), _) => Ok(StageSummary {
                steps: state.step,
                best: state.best.as_ref().map(|b| (b.metric.clone(), b.value, b.step)),
                best_dir: cfg.run_dir.join("best"),
                last_dev: Vec::new(),
            }),
            (_, kind) => kind.run::<B>(&cfg, resume, device),
        }
        .map_err(|e| match e {
            Error::Interrupted(m) => Error::Interrupted(format!(
                "{m} — in a curriculum, run the same `t1-train curriculum` command again to continue"
            )),
            other => other,
        })?;
        let dir = cfg.run_dir.join("best");
        // an HF folder, or with [lora] an adapter folder (the next stage starts from its merge)
        let kept = dir.join("config.json").exists() || crate::model::is_adapter_dir(&dir);
        if !kept && !crate::dist::world().is_main() {
            return Err(Error::Runtime(format!(
                "worker {}: {} does not show the best model rank 0 kept: a data-parallel \
                 curriculum needs its run folder on a filesystem every machine shares",
                crate::dist::world().rank,
                dir.display()
            )));
        }
        if !kept {
            return Err(Error::Runtime(format!(
                "{}: {} kept no best model (keep train.eval_at_end = true or set train.eval_every > 0 in {}; \
                 a non-finite dev metric is never kept)",
                dir.display(),
                s.kind.name(),
                s.config.display()
            )));
        }
        stages.push((
            s.kind.name().to_string(),
            summary.steps,
            summary.best.clone(),
        ));
        best = Some(dir);
        configs.push(cfg);
    }
    if !crate::dist::world().is_main() {
        // data-parallel: rank 0 alone evaluates and writes the report
        return Ok(CurriculumReport {
            curriculum: c.name.clone(),
            split: String::new(),
            num_queries: 0,
            stages,
            rows: Vec::new(),
            comparisons: Vec::new(),
        });
    }
    report::<B>(c, &configs, stages, device, &mut say)
}

/// Each trained model's reasoning rows against its bare row (the untrained backbone has only a
/// bare row).
fn compare_to_bare(rows: &[ReportRow]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for bare in rows.iter().filter(|r| r.query == "bare") {
        for r in rows
            .iter()
            .filter(|r| r.model == bare.model && r.query != "bare")
        {
            out.push(Comparison {
                model: r.model.clone(),
                query: r.query.clone(),
                paired: crate::eval::paired::paired(&bare.per_query_ndcg, &r.per_query_ndcg),
            });
        }
    }
    out
}

/// A hash of the curriculum (`c`, with its stages' overrides), every stage's config file and the
/// command line's `extra` overrides: what data-parallel workers compare before a curriculum (each
/// must run the same stages with the same settings). Files are hashed as written, since later
/// stages' configs resolve only once the stage before has finished.
pub fn config_id(c: &Curriculum, extra: &[String]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(c.name.as_bytes());
    for s in &c.stage {
        h.update(s.kind.name().as_bytes());
        h.update(std::fs::read(&s.config).map_err(|e| Error::io(&s.config, e))?);
        for o in &s.set {
            h.update(o.as_bytes());
        }
    }
    for o in extra {
        h.update(o.as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Evaluates the untrained backbone and each stage's best model on the last stage's eval split.
fn report<B: AutodiffBackend>(
    c: &Curriculum,
    configs: &[Config],
    stages: Vec<StageOutcome>,
    device: &B::Device,
    say: &mut impl FnMut(&str),
) -> Result<CurriculumReport> {
    let last = configs.last().expect("at least one stage");
    let split = last.eval_split().to_string();
    let ds = Dataset::load(&last.raw.data.dataset)?;
    let mut rows = Vec::new();
    let mut num_queries = 0;
    let mut eval =
        |label: &str, cfg: &Config, view: QueryView, rows: &mut Vec<ReportRow>| -> Result<()> {
            say(&format!("report: {label}, {view:?} queries on {split}"));
            let (model, tok) = load_backbone::<B::InnerBackend>(cfg, device)?;
            let (report, _, _) = dense_eval(&model, &tok, &ds, &split, view, cfg)?;
            num_queries = report.num_queries;
            let Metrics {
                ndcg_at_10,
                recall_at_100,
                mrr_at_10,
                ..
            } = report.mean;
            rows.push(ReportRow {
                model: label.to_string(),
                query: match view {
                    QueryView::Bare => "bare".into(),
                    QueryView::GoldReasoning => "gold reasoning".into(),
                    QueryView::Generated => "greedy reasoning".into(),
                    QueryView::Mixed => "bare + greedy reasoning (mixed)".into(),
                    QueryView::Latent => format!("latent ({} steps)", cfg.raw.latent.steps),
                },
                model_path: crate::model::load::model_section(cfg)?
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "preset".into()),
                ndcg_at_10,
                recall_at_100,
                mrr_at_10,
                per_query_ndcg: report
                    .per_query
                    .iter()
                    .map(|(q, m)| (q.clone(), m.ndcg_at_10))
                    .collect(),
            });
            Ok(())
        };
    // the first stage's starting model, untrained for retrieval
    eval(
        "untrained backbone",
        &configs[0],
        QueryView::Bare,
        &mut rows,
    )?;
    for (i, s) in c.stage.iter().enumerate() {
        // stage i's best model, read through stage i's own config (lengths, eval depth)
        let mut cfg = configs[i].clone();
        if let Some(m) = cfg.raw.model.as_mut() {
            m.path = Some(configs[i].run_dir.join("best"));
            m.preset = None;
            m.tokenizer = None;
        }
        let label = format!("after {}", s.kind.name());
        // the bare query beside every reasoning row
        eval(&label, &cfg, QueryView::Bare, &mut rows)?;
        eval(&label, &cfg, QueryView::Generated, &mut rows)?;
        if s.kind == StageKind::Latent {
            eval(&label, &cfg, QueryView::Latent, &mut rows)?;
        }
    }
    let comparisons = compare_to_bare(&rows);
    let report = CurriculumReport {
        curriculum: c.name.clone(),
        split,
        num_queries,
        stages,
        rows,
        comparisons,
    };
    let root = c.output_dir.join(&c.name);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Runtime(format!("cannot serialise the report: {e}")))?;
    crate::fsio::write_atomic(&root.join("report.json"), json.as_bytes())?;
    crate::fsio::write_atomic(&root.join("report.md"), report.markdown().as_bytes())?;
    Ok(report)
}
