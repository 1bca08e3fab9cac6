//! One function per CLI subcommand: load what the command needs, run it, report.
//! `main.rs` only parses arguments and maps errors to exit codes.

use std::collections::HashMap;
use std::path::Path;

use crate::bm25::Bm25;
use crate::config::{Config, ProgressMode, QueryView, RetrieverKind};
use crate::data::{Dataset, Summary};
use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::eval::{Report, Run, evaluate, write_trec_run};
use crate::metrics::{MetricsSink, progress_bar};
use crate::model::generate::{self, Embed, GenerateOptions, Sampler, StopReason};
use crate::model::{Decoder, T1Tokenizer, load_hf};
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
    match e.retriever {
        RetrieverKind::Bm25 => {
            let index = Bm25::build(&ds.corpus, e.bm25_k1, e.bm25_b);
            for q in &queries {
                let text = match (e.query_view, &q.reasoning) {
                    // validate() refuses `generated` with BM25
                    (QueryView::Bare | QueryView::Generated, _)
                    | (QueryView::GoldReasoning, None) => q.text.clone(),
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
        RetrieverKind::Dense => {
            bar.set_message("encoding documents and queries");
            let (model, tok) = crate::train::common::load_backbone::<B>(cfg, device)?;
            let (_, dense) =
                crate::train::common::dense_eval(&model, &tok, &ds, split, e.query_view, cfg)?;
            run = dense;
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

/// `t1-train generate`: load a model folder, sample `num_samples` continuations of one prompt.
pub fn generate<B: Backend>(req: &GenerateRequest, device: &B::Device) -> Result<Vec<Sample>> {
    let tok = T1Tokenizer::load(&req.model.join("tokenizer.json"))?;
    let mut model: Decoder<B> = load_hf(&req.model, device)?;
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
    };
    let prompts = vec![ids.clone(); req.num_samples.max(1)];
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
