//! One function per CLI subcommand: load what the command needs, run it, report.
//! `main.rs` only parses arguments and maps errors to exit codes.

use std::collections::HashMap;
use std::path::Path;

use crate::bm25::Bm25;
use crate::config::{Config, QueryView, RetrieverKind};
use crate::data::{Dataset, Summary};
use crate::error::Result;
use crate::eval::{Report, Run, evaluate, write_trec_run};
use crate::metrics::{MetricsSink, progress_bar};
use crate::run::RunDir;

/// `t1-train data DIR`: load every file (any error names file and line) and print a summary.
pub fn data(dir: &Path) -> Result<Summary> {
    let ds = Dataset::load(dir)?;
    Ok(Summary::of(&ds))
}

/// `t1-train eval --config FILE`: retrieve for every query of the eval split, write a TREC run
/// file and a JSON report under `runs/<name>/eval/`, log the means, return the report.
pub fn eval(cfg: &Config) -> Result<Report> {
    let run_dir = RunDir::create(cfg)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let split = cfg.eval_split();
    let queries = ds.split_queries(split)?;
    let e = &cfg.raw.eval;
    let bar = progress_bar(queries.len() as u64, "eval", cfg.raw.logging.progress);
    let mut sinks = run_dir.sinks(&cfg.raw.logging, bar.clone())?;
    let mut run = Run::new();
    match e.retriever {
        RetrieverKind::Bm25 => {
            let index = Bm25::build(&ds.corpus, e.bm25_k1, e.bm25_b);
            for q in &queries {
                let text = match (e.query_view, &q.reasoning) {
                    (QueryView::Bare, _) | (QueryView::GoldReasoning, None) => q.text.clone(),
                    (QueryView::GoldReasoning, Some(r)) => format!("{} {}", q.text, r),
                };
                let mut hits: Vec<(String, f64)> = index
                    .score(&text)
                    .into_iter()
                    .map(|(d, s)| (ds.corpus.ids[d].clone(), s))
                    .collect();
                crate::eval::trec_order(&mut hits);
                hits.truncate(e.depth);
                run.insert(q.id.clone(), hits);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let excluded: HashMap<String, Vec<String>> = queries
        .iter()
        .filter(|q| !q.excluded_ids.is_empty())
        .map(|q| (q.id.clone(), q.excluded_ids.clone()))
        .collect();
    let report = evaluate(ds.split(split)?, &run, &excluded);
    let out = run_dir.subdir("eval")?;
    let tag = format!("t1-{:?}-{:?}", e.retriever, e.query_view).to_lowercase();
    write_trec_run(&out.join(format!("{split}.run")), &run, &tag, e.depth)?;
    let json = serde_json::to_string_pretty(&report)
        .map_err(|err| crate::Error::Runtime(format!("cannot serialise the report: {err}")))?;
    crate::run::write_atomic(&out.join(format!("{split}.json")), json.as_bytes())?;
    let tags: Vec<(String, f64)> = report
        .mean
        .named()
        .iter()
        .map(|(k, v)| (format!("eval/{split}/{k}"), *v))
        .collect();
    let pairs: Vec<(&str, f64)> = tags.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    sinks.scalars(0, &pairs)?;
    sinks.text(
        0,
        &format!("eval/{split}/report"),
        &format!(
            "`{tag}` on **{split}** ({} queries): {}",
            report.num_queries, report.mean
        ),
    )?;
    sinks.flush()?;
    Ok(report)
}
