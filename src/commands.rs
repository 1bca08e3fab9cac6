//! One function per CLI subcommand: load what the command needs, run it, report.
//! `main.rs` only parses arguments and maps errors to exit codes.

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Config, QueryView, RetrieverKind};
use crate::data::{Dataset, Summary};
use crate::index::bm25::Bm25;
use crate::metrics::ProgressMode;
use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::eval::{Report, Run, evaluate, write_trec_run};
use crate::metrics::{MetricsSink, progress_bar};
use crate::model::generate::{self, Embed, GenerateOptions, Sampler, StopReason};
use crate::model::{Decoder, T1Tokenizer, load_model};
use crate::run::RunDir;

/// `t1-train data DIR`: load every file (any error names file and line) and print a summary.
pub fn data(dir: &Path) -> Result<Summary> {
    let ds = Dataset::load(dir)?;
    Ok(Summary::of(&ds))
}

/// `t1-train eval --config FILE`: retrieve for every query of the eval split, write a TREC run
/// file and a JSON report under `runs/<name>/eval/`, log the means, return the report.
pub fn eval<B: Backend>(cfg: &Config, device: &B::Device) -> Result<Report> {
    let run_dir = RunDir::create(cfg)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let split = cfg.eval_split();
    let queries = ds.split_queries(split)?;
    let e = &cfg.raw.eval;
    let bar = progress_bar(queries.len() as u64, "eval", cfg.raw.logging.progress);
    let mut sinks = run_dir.sinks(&cfg.raw.logging, bar.clone())?;
    let mut run = Run::new();
    let mut reasoning = None;
    match e.retriever {
        RetrieverKind::Bm25 => {
            let index = Bm25::build(&ds.corpus, e.bm25_k1, e.bm25_b);
            for q in &queries {
                let text = match (e.query_view, &q.reasoning) {
                    // validate() refuses `generated` with BM25
                    (
                        QueryView::Bare
                        | QueryView::Generated
                        | QueryView::Latent
                        | QueryView::Mixed,
                        _,
                    )
                    | (QueryView::GoldReasoning, None) => q.text.clone(),
                    (QueryView::GoldReasoning, Some(r)) => format!("{} {}", q.text, r),
                };
                // excluded documents leave the ranking before the cut, as on the dense path: the
                // run written to eval/<split>.run is the one the metrics are computed on
                let excluded = ds.excluded(q);
                let mut hits: Vec<(String, f64)> = index
                    .score(&text)
                    .into_iter()
                    .filter(|(d, _)| !excluded.contains(d))
                    .map(|(d, s)| (ds.corpus.ids[d].clone(), s))
                    .collect();
                crate::eval::trec_order(&mut hits);
                hits.truncate(e.depth);
                run.insert(q.id.clone(), hits);
                bar.inc(1);
            }
        }
        RetrieverKind::Dense => {
            bar.set_message("encoding documents and queries");
            let (model, tok) = crate::model::load::load_backbone::<B>(cfg, device)?;
            let (_, dense, generated) =
                crate::eval::dense::dense_eval(&model, &tok, &ds, split, e.query_view, cfg)?;
            run = dense;
            reasoning = generated;
            bar.set_position(queries.len() as u64);
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
    crate::fsio::write_atomic(&out.join(format!("{split}.json")), json.as_bytes())?;
    if let Some(reasoning) = &reasoning {
        write_reasoning(
            &out.join(format!("{split}.reasoning.jsonl")),
            &queries,
            reasoning,
            &report,
        )?;
    }
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

/// `eval/<split>.reasoning.jsonl` for the `generated` and `mixed` views: per query (split order) its id and
/// text, the model's greedy reasoning, the dataset's gold reasoning (null where it has none) and
/// the query's nDCG@10 — for reading what the model wrote where retrieval failed.
fn write_reasoning(
    path: &Path,
    queries: &[&crate::data::Query],
    reasoning: &[String],
    report: &Report,
) -> Result<()> {
    let mut text = String::new();
    for (q, r) in queries.iter().zip(reasoning) {
        let line = serde_json::json!({
            "query_id": q.id,
            "query": q.text,
            "reasoning": r,
            "gold_reasoning": q.reasoning,
            "ndcg@10": report.per_query.get(&q.id).map(|m| m.ndcg_at_10),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    crate::fsio::write_atomic(path, text.as_bytes())
}

/// One row of `t1-train eval --views`: a query view's retrieval quality and query cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewRow {
    /// `bare`, `gold_reasoning`, `generated` or `latent`.
    pub view: String,
    pub metrics: crate::eval::Metrics,
    /// Wall time to turn one query into its vector, one query at a time: the median over
    /// `latency_queries` queries (after one untimed warm-up query); `None` with
    /// `--latency-queries 0` (no timing).
    pub ms_per_query_batch1: Option<f64>,
    /// The whole split encoded `batch_size` queries at a time, per query: the median of
    /// three passes; `None` without timing.
    pub ms_per_query_batched: Option<f64>,
}

/// What `t1-train eval --views` measured, written to `runs/<name>/eval/views.{json,md}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewsReport {
    pub split: String,
    pub num_queries: usize,
    pub model: String,
    pub batch_size: usize,
    pub latency_queries: usize,
    /// CPU threads available to this process.
    pub threads: usize,
    pub rows: Vec<ViewRow>,
}

impl ViewsReport {
    pub fn markdown(&self) -> String {
        let latency = if self.latency_queries == 0 {
            "Latency not measured (`--latency-queries 0`): one pass per view.".to_string()
        } else {
            format!(
                "Latency: time to turn a query into its vector (document encoding and ranking \
                 excluded); batch 1: median over {} queries; batched: all queries at {} per batch, \
                 median of 3 passes; {} threads.",
                self.latency_queries, self.batch_size, self.threads
            )
        };
        let mut out = format!(
            "# Query views on {} ({} queries), model `{}`\n\n{latency}\n\n\
             | query view | nDCG@10 | Recall@100 | MRR@10 | ms/query (batch 1) | ms/query (batch {}) |\n\
             |---|---|---|---|---|---|\n",
            self.split, self.num_queries, self.model, self.batch_size
        );
        let ms = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |x| format!("{x:.2}"));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} | {} |\n",
                r.view,
                r.metrics.ndcg_at_10,
                r.metrics.recall_at_100,
                r.metrics.mrr_at_10,
                ms(r.ms_per_query_batch1),
                ms(r.ms_per_query_batched)
            ));
        }
        out
    }
}

/// Timed passes over the whole split for the batched latency (the median is reported).
const BATCHED_REPEATS: usize = 3;

/// `t1-train eval --config FILE --views bare,generated,latent`: dense retrieval on the eval split
/// with each query view of the config's model (one document index for all), plus the cost of
/// encoding a query under each view. Writes `runs/<name>/eval/views.{json,md}` and, per view,
/// a TREC run, the per-query report (`<split>-<view>.json`) and, for `generated` / `mixed`, the
/// reasoning (`<split>-<view>.reasoning.jsonl`). `latency_queries = 0` skips the timing: one
/// pass per view, `mixed` from the bare and generated vectors already computed.
pub fn eval_views<B: Backend>(
    cfg: &Config,
    views: &[QueryView],
    latency_queries: usize,
    device: &B::Device,
) -> Result<ViewsReport> {
    use crate::eval::dense::{mixed_vectors, query_vectors, rank_and_score};
    use crate::model::load::{load_backbone, model_section};
    let m = model_section(cfg)?;
    let run_dir = RunDir::create(cfg)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let split = cfg.eval_split();
    let queries = ds.split_queries(split)?;
    if queries.is_empty() {
        return Err(Error::Runtime(format!("split {split} has no queries")));
    }
    let batch = cfg.raw.train.eval_batch_size;
    let latent = crate::model::latent::LatentOptions::from_section(&cfg.raw.latent);
    let (model, tok) = load_backbone::<B>(cfg, device)?;
    let bar = progress_bar(
        ds.corpus.len() as u64,
        "documents",
        cfg.raw.logging.progress,
    );
    let index =
        crate::index::DocIndex::build(&model, &tok, &ds.corpus, m.max_doc_tokens, batch, |n| {
            bar.set_position(n as u64)
        })?;
    bar.finish_and_clear();
    let out = run_dir.subdir("eval")?;
    // 0 = no timing: each view encoded once, and `mixed` reuses the bare and generated vectors
    // when those views come first (kept for that alone)
    let timed = latency_queries > 0;
    let n1 = latency_queries.clamp(1, queries.len());
    let bar = progress_bar(views.len() as u64, "views", cfg.raw.logging.progress);
    let mut rows = Vec::new();
    let mut done: HashMap<QueryView, (burn::tensor::Tensor<B, 2>, Option<Vec<String>>)> =
        HashMap::new();
    for &view in views {
        let name = serde_json::to_value(view)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{view:?}"));
        bar.set_message(name.clone());
        let encode = |qs: &[&crate::data::Query],
                      b: usize|
         -> Result<(burn::tensor::Tensor<B, 2>, Option<Vec<String>>)> {
            let (v, r) = query_vectors(&model, &tok, qs, view, m, &latent, b)?;
            let _ = v.clone().into_data(); // wait for the device
            Ok((v, r))
        };
        // medians: a shared machine's hiccups hit single timings, not the middle of many
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let (qv, reasoning, batch1, batched) = if timed {
            encode(&queries[..1], 1)?; // warm-up
            let mut one = Vec::with_capacity(n1);
            for q in &queries[..n1] {
                let t0 = std::time::Instant::now();
                encode(std::slice::from_ref(q), 1)?;
                one.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let mut all = Vec::with_capacity(BATCHED_REPEATS);
            let mut last = None;
            for _ in 0..BATCHED_REPEATS {
                let t0 = std::time::Instant::now();
                last = Some(encode(&queries, batch)?);
                all.push(t0.elapsed().as_secs_f64() * 1e3 / queries.len() as f64);
            }
            let (qv, r) = last.expect("at least one repeat");
            (qv, r, Some(median(one)), Some(median(all)))
        } else {
            let (qv, r) = match (
                view,
                done.get(&QueryView::Bare),
                done.get(&QueryView::Generated),
            ) {
                (QueryView::Mixed, Some((b, _)), Some((g, r))) => {
                    (mixed_vectors(b.clone(), g.clone()), r.clone())
                }
                _ => encode(&queries, batch)?,
            };
            if matches!(view, QueryView::Bare | QueryView::Generated) {
                done.insert(view, (qv.clone(), r.clone()));
            }
            (qv, r, None, None)
        };
        let (report, run) = rank_and_score(&index, qv, &ds, split, &queries, cfg)?;
        write_trec_run(
            &out.join(format!("{split}-{name}.run")),
            &run,
            &format!("t1-{name}"),
            cfg.raw.eval.depth,
        )?;
        // the per-query report, as a plain `eval` writes it
        let json = serde_json::to_string_pretty(&report)
            .map_err(|err| Error::Runtime(format!("cannot serialise the report: {err}")))?;
        crate::fsio::write_atomic(&out.join(format!("{split}-{name}.json")), json.as_bytes())?;
        if let Some(r) = &reasoning {
            write_reasoning(
                &out.join(format!("{split}-{name}.reasoning.jsonl")),
                &queries,
                r,
                &report,
            )?;
        }
        rows.push(ViewRow {
            view: name,
            metrics: report.mean,
            ms_per_query_batch1: batch1,
            ms_per_query_batched: batched,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = ViewsReport {
        split: split.to_string(),
        num_queries: queries.len(),
        model: m
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .or_else(|| m.preset.clone())
            .unwrap_or_default(),
        batch_size: batch,
        latency_queries: if timed { n1 } else { 0 },
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Runtime(format!("cannot serialise the report: {e}")))?;
    crate::fsio::write_atomic(&out.join("views.json"), json.as_bytes())?;
    crate::fsio::write_atomic(&out.join("views.md"), report.markdown().as_bytes())?;
    Ok(report)
}

/// What `t1-train generate` was asked for.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// HF model folder with `tokenizer.json` (and `tokenizer_config.json` when it has a chat template).
    pub model: std::path::PathBuf,
    pub prompt: String,
    /// Build the query view around `prompt` (chat template, instruction, `<think>`), stop at
    /// `</think>` and read the `<emb_token>` state; otherwise continue the raw text.
    pub query: bool,
    pub sampler: Sampler,
    pub max_new_tokens: usize,
    pub num_samples: usize,
    pub seed: u64,
    /// Hugging Face's repetition penalty (1 = off).
    pub repetition_penalty: f32,
}

/// One printed sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The prompt as fed (decoded, special tokens shown).
    pub prompt: String,
    /// The generated text (special tokens shown), forced closing tokens included.
    pub text: String,
    pub tokens: usize,
    pub stop: String,
    /// Mean sampling log-prob of the generated tokens.
    pub mean_logprob: f32,
    /// L2 norm of the `<emb_token>` state (query mode).
    pub embedding_norm: Option<f32>,
}

/// A `--model` argument that is no model folder is a usage error (exit 2), not a failed load.
fn model_folder_arg(dir: &Path) -> Result<()> {
    let model = dir.join("config.json").is_file() || crate::model::is_adapter_dir(dir);
    if model && dir.join("tokenizer.json").is_file() {
        return Ok(());
    }
    Err(Error::Config {
        location: "--model".into(),
        message: format!(
            "{}: not a model folder (config.json, tokenizer.json and safetensors expected, or a \
             LoRA stage's adapter_config.json, adapter_model.safetensors and tokenizer.json)",
            dir.display()
        ),
    })
}

/// `t1-train generate`: load a model folder, sample `num_samples` continuations of one prompt.
pub fn generate<B: Backend>(req: &GenerateRequest, device: &B::Device) -> Result<Vec<Sample>> {
    model_folder_arg(&req.model)?;
    if req.num_samples == 0 {
        return Err(Error::Config {
            location: "--num-samples".into(),
            message: "must be at least 1".into(),
        });
    }
    // the model first: it verifies the folder's SHA256SUMS (tokenizer included) when it has one
    let mut model: Decoder<B> = load_model(&req.model, device)?;
    let tok = T1Tokenizer::load(&req.model.join("tokenizer.json"))?;
    let ids = if req.query {
        tok.query_prompt(&req.prompt, usize::MAX)?
    } else {
        tok.encode(&req.prompt)?
    };
    if ids.is_empty() {
        return Err(Error::Runtime("the prompt has no tokens".into()));
    }
    // A raw checkpoint lacks the T1 tokens: grow it only when they are needed, so plain
    // continuation of a pretrained model is exactly that model's.
    let vocab = model.config().vocab_size;
    if tok.vocab_size() > vocab && (req.query || ids.iter().any(|&t| t as usize >= vocab)) {
        model = model.resize_vocab(tok.vocab_size())?;
    }
    let c = model.config();
    let total = ids
        .len()
        .saturating_add(req.max_new_tokens)
        .saturating_add(2);
    if total > c.max_position_embeddings {
        return Err(Error::Config {
            location: "--max-new-tokens".into(),
            message: format!(
                "the prompt's {} tokens + {} new tokens exceed the model's max_position_embeddings = {}",
                ids.len(),
                req.max_new_tokens,
                c.max_position_embeddings
            ),
        });
    }
    crate::model::memory::check_fits(
        "--num-samples",
        &format!("{} samples of {total} tokens", req.num_samples),
        crate::model::memory::kv_cache_bytes(c, req.num_samples, total)
            + crate::model::memory::activation_bytes(c, req.num_samples, 1, false),
    )?;
    let mut stop: Vec<u32> = tok.eos.into_iter().collect();
    if req.query {
        stop.push(tok.end_think);
    }
    let opts = GenerateOptions {
        sampler: req.sampler.clone(),
        max_new_tokens: req.max_new_tokens,
        stop,
        embed: req.query.then_some(Embed {
            end_think: tok.end_think,
            emb: tok.emb,
        }),
        pad: tok.pad,
        seed: req.seed,
        first_stream: 0,
        repetition_penalty: req.repetition_penalty,
    };
    let prompts = vec![ids.clone(); req.num_samples];
    let bar = progress_bar(prompts.len() as u64, "generate", ProgressMode::Auto);
    let rollouts = generate::generate(&model, &prompts, &opts, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let prompt = tok.decode(&ids, true)?;
    rollouts
        .into_iter()
        .map(|r| {
            let all: Vec<u32> = r.tokens.iter().chain(&r.forced).copied().collect();
            let stop = match r.stop {
                StopReason::Length => "max_new_tokens".to_string(),
                StopReason::Token(t) => format!("{:?}", tok.decode(&[t], true)?),
            };
            Ok(Sample {
                prompt: prompt.clone(),
                text: tok.decode(&all, true)?,
                tokens: r.tokens.len(),
                stop,
                mean_logprob: r.logprobs.iter().sum::<f32>() / r.logprobs.len().max(1) as f32,
                embedding_norm: r
                    .embedding
                    .map(|e| e.iter().map(|x| x * x).sum::<f32>().sqrt()),
            })
        })
        .collect()
}

/// The model a config names, as `(description, sha256)`: an HF folder's weight files, or for a
/// preset its name, seed and tokenizer (a preset is initialised from `run.seed`).
pub fn model_identity(cfg: &Config) -> Result<(String, String, Option<u64>)> {
    use sha2::{Digest, Sha256};
    let m = crate::model::load::model_section(cfg)?;
    match (&m.path, &m.preset) {
        (Some(dir), _) => Ok((
            dir.display().to_string(),
            crate::index::model_hash(dir)?,
            crate::index::model_step(dir),
        )),
        (None, Some(name)) => {
            let tok = m.tokenizer.as_ref().map(|p| p.display().to_string());
            let text = format!("preset {name} seed {} tokenizer {tok:?}", cfg.raw.run.seed);
            let tok_bytes = match &m.tokenizer {
                Some(p) => std::fs::read(p).map_err(|e| Error::io(p, e))?,
                None => Vec::new(),
            };
            let mut h = Sha256::new();
            h.update(text.as_bytes());
            h.update(&tok_bytes);
            Ok((
                format!("preset {name} (seed {})", cfg.raw.run.seed),
                format!("{:x}", h.finalize()),
                Some(0),
            ))
        }
        (None, None) => unreachable!("validate() requires model.path or model.preset"),
    }
}

/// `t1-train index --config FILE [--out FILE]`: encode the config's corpus with its model's
/// document view (no autodiff) and save it (default `runs/<name>/index/index.safetensors`).
pub fn index<B: Backend>(
    cfg: &Config,
    out: Option<&Path>,
    device: &B::Device,
) -> Result<(std::path::PathBuf, crate::index::IndexMeta)> {
    let run_dir = RunDir::create(cfg)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let m = crate::model::load::model_section(cfg)?;
    let (model_desc, model_sha, step) = model_identity(cfg)?;
    let (model, tok) = crate::model::load::load_backbone::<B>(cfg, device)?;
    let bar = progress_bar(ds.corpus.len() as u64, "index", cfg.raw.logging.progress);
    let index = crate::index::DocIndex::build(
        &model,
        &tok,
        &ds.corpus,
        m.max_doc_tokens,
        cfg.raw.train.eval_batch_size,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => run_dir.subdir("index")?.join("index.safetensors"),
    };
    let meta = crate::index::IndexMeta::new(
        model_desc,
        model_sha,
        step,
        &cfg.raw.data.dataset,
        &ds.corpus,
        m,
    );
    let meta = index.save(&path, &ds.corpus.ids, meta)?;
    if index.truncated > 0 {
        eprintln!(
            "note: {} of {} documents were cut at model.max_doc_tokens = {}",
            index.truncated,
            ds.corpus.len(),
            m.max_doc_tokens
        );
    }
    Ok((path, meta))
}

/// One answer of `t1-train search`.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub rank: usize,
    pub id: String,
    pub score: f32,
    /// Title and text when the indexed dataset is still there (and unchanged).
    pub title: Option<String>,
    pub text: Option<String>,
}

/// `t1-train search`: the model writes its reasoning for each query (greedy), its `<emb_token>`
/// state is scored against a saved index, the top `k` come back. Refuses an index built from
/// another model (weights hash) or, when the indexed dataset is readable, another corpus.
pub fn search<B: Backend>(
    model_dir: &Path,
    index_path: &Path,
    queries: &[String],
    k: usize,
    device: &B::Device,
) -> Result<Vec<(String, Vec<SearchHit>)>> {
    model_folder_arg(model_dir)?;
    let (index, meta, ids) = crate::index::DocIndex::<B>::load(index_path, device)?;
    crate::index::check_index(
        index_path,
        &meta,
        &meta.corpus_sha256,
        Some(&crate::index::model_hash(model_dir)?),
    )?;
    // the documents' text, when the corpus it was built from is still there: it must be the same
    // corpus (any change is refused, whatever else in the dataset folder changed or broke)
    let corpus_path = Path::new(&meta.dataset).join("corpus.jsonl");
    let corpus = if corpus_path.exists() {
        let corpus = crate::data::load_corpus(&corpus_path)?;
        crate::index::check_index(index_path, &meta, &crate::index::corpus_hash(&corpus), None)?;
        if corpus.ids != ids {
            return Err(Error::Data {
                file: index_path.to_path_buf(),
                line: 0,
                field: Some("t1.doc_ids".into()),
                message: format!(
                    "the document ids differ from those of {}",
                    corpus_path.display()
                ),
            });
        }
        Some(corpus)
    } else {
        eprintln!(
            "note: {} is gone: showing document ids without their text",
            corpus_path.display()
        );
        None
    };
    let mut model: Decoder<B> = load_model(model_dir, device)?; // verifies SHA256SUMS first
    let tok = T1Tokenizer::load(&model_dir.join("tokenizer.json"))?;
    if tok.vocab_size() > model.config().vocab_size {
        model = model.resize_vocab(tok.vocab_size())?;
    }
    let texts: Vec<&str> = queries.iter().map(String::as_str).collect();
    let (qv, reasoning) = crate::eval::dense::greedy_reasoning(
        &model,
        &tok,
        &texts,
        meta.max_query_tokens,
        meta.max_reasoning_tokens,
        meta.repetition_penalty,
        64,
    )?;
    let top = crate::index::top_k(&index, qv, &ids, k, 64, &[])?;
    Ok(reasoning
        .into_iter()
        .zip(top)
        .map(|(r, hits)| {
            let hits = hits
                .into_iter()
                .enumerate()
                .map(|(rank, (i, score))| SearchHit {
                    rank: rank + 1,
                    id: ids[i].clone(),
                    score,
                    title: corpus.as_ref().map(|c| c.titles[i].clone()),
                    text: corpus.as_ref().map(|c| c.texts[i].clone()),
                })
                .collect();
            (r, hits)
        })
        .collect())
}

/// `t1-train merge --model DIR --out DIR`: a model folder (a LoRA stage's adapter folder, its
/// chain of bases resolved) as one merged HF folder — `config.json`, `model.safetensors`, the
/// tokenizer, `t1-best.json` when the source has one, `SHA256SUMS` — that transformers loads
/// without peft. `out` must not exist yet (nothing is overwritten).
pub fn merge<B: Backend>(model_dir: &Path, out: &Path, device: &B::Device) -> Result<()> {
    model_folder_arg(model_dir)?;
    if out.exists() {
        return Err(Error::Config {
            location: "--out".into(),
            message: format!(
                "{} already exists: pick a new folder (merge never overwrites)",
                out.display()
            ),
        });
    }
    let mut model: Decoder<B> = load_model(model_dir, device)?;
    let tok = T1Tokenizer::load(&model_dir.join("tokenizer.json"))?;
    if tok.vocab_size() > model.config().vocab_size {
        model = model.resize_vocab(tok.vocab_size())?;
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = out.with_file_name(format!(".{name}.tmp"));
    let written = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        crate::model::save_hf(&model, &tmp)?;
        tok.save(&tmp.join("tokenizer.json"))?;
        let about = model_dir.join("t1-best.json");
        if about.is_file() {
            std::fs::copy(&about, tmp.join("t1-best.json")).map_err(|e| Error::io(&about, e))?;
        }
        crate::checksums::write(&tmp)?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}
