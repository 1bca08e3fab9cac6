//! Stage 1 — supervised reasoning (`t1-train stage1 --config FILE`).
//!
//! Each training query with gold `reasoning` becomes the query view with that reasoning teacher
//! forced: `instruction + query + <think> + reasoning + </think><emb_token>`. The loss is the
//! next-token cross-entropy on the reasoning tokens and the closing `</think><emb_token>` only;
//! the prompt is masked out (`loss::sft`). Rows are right-padded; the mean is over all trained
//! tokens of a micro-batch (as transformers' `ignore_index = -100`).
//!
//! Per step it logs `stage1/{loss, token_accuracy, lr, grad_norm, tokens_per_s}`; every
//! `train.eval_every` steps `stage1/dev/{loss, token_accuracy}` on the dev split, keeping the
//! lowest dev loss in `runs/<name>/best/` (the HF folder stage 2 starts from). Queries without
//! gold reasoning cannot be trained on here: they are counted and reported, not silently dropped.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};

use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::loss::sft_loss;
use crate::model::load::model_section;
use crate::model::{Decoder, T1Tokenizer};
use crate::train::common::{Goal, StageSummary, Trainer};
use crate::train::micro::StepPlan;

/// One teacher-forced sequence: ids and how many of them are prompt.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The SFT examples of a split, and the ids of queries skipped for lack of reasoning.
pub fn examples(
    tok: &T1Tokenizer,
    ds: &Dataset,
    split: &str,
    cfg: &Config,
) -> Result<(Vec<Example>, Vec<String>)> {
    let m = model_section(cfg)?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for q in ds.split_queries(split)? {
        match &q.reasoning {
            Some(r) if !r.trim().is_empty() => {
                let (ids, prompt_len) = tok.query_with_reasoning(
                    &q.text,
                    r,
                    m.max_query_tokens,
                    m.max_reasoning_tokens,
                )?;
                out.push(Example { ids, prompt_len });
            }
            _ => skipped.push(q.id.clone()),
        }
    }
    Ok((out, skipped))
}

/// A right-padded micro-batch: inputs `[b, s]`, attention mask `[b, s]`, next-token targets
/// `[b, s]` and the trained-token mask `[b, s]` (target index ≥ prompt length, not padding).
pub struct Batch<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub attention: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
    pub trained: Tensor<B, 2, Bool>,
}

pub fn batch<B: Backend>(examples: &[&Example], pad: u32, device: &B::Device) -> Batch<B> {
    let b = examples.len();
    let s = examples
        .iter()
        .map(|e| e.ids.len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let (mut inputs, mut attention, mut targets, mut trained) = (
        Vec::with_capacity(b * s),
        Vec::with_capacity(b * s),
        Vec::with_capacity(b * s),
        Vec::with_capacity(b * s),
    );
    for e in examples {
        let n = e.ids.len() - 1; // input i predicts ids[i + 1]
        for i in 0..s {
            let real = i < n;
            inputs.push(if real { e.ids[i] } else { pad } as i64);
            attention.push(real as i64);
            targets.push(if real { e.ids[i + 1] } else { pad } as i64);
            trained.push(real && i + 1 >= e.prompt_len);
        }
    }
    let int = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, s]), device);
    Batch {
        inputs: int(inputs),
        attention: int(attention),
        targets: int(targets),
        trained: Tensor::from_data(TensorData::new(trained, [b, s]), device),
    }
}

/// Loss `[1]`, trained tokens, arg-max hits of one micro-batch.
pub fn micro_batch<B: Backend>(model: &Decoder<B>, b: Batch<B>) -> (Tensor<B, 1>, usize, usize) {
    let s = b.inputs.dims()[1];
    let hidden = model.hidden(b.inputs, Some(b.attention));
    let (lp, hits) = model.token_logprobs_hits(hidden, b.targets, s);
    let hits = hits
        .bool_and(b.trained.clone())
        .int()
        .sum()
        .into_scalar()
        .elem::<i64>() as usize;
    let out = sft_loss(lp, b.trained);
    (out.loss, out.tokens, hits)
}

/// Token-weighted dev loss and token accuracy (no autodiff).
pub fn evaluate_sft<B: Backend>(
    model: &Decoder<B>,
    examples: &[Example],
    pad: u32,
    batch_size: usize,
) -> (f64, f64) {
    let device = model.device();
    let (mut nll, mut tokens, mut hits) = (0.0, 0usize, 0usize);
    let refs: Vec<&Example> = examples.iter().collect();
    for chunk in refs.chunks(batch_size.max(1)) {
        let (loss, n, h) = micro_batch(model, batch::<B>(chunk, pad, &device));
        nll += loss.into_scalar().elem::<f64>() * n as f64;
        tokens += n;
        hits += h;
    }
    let t = tokens.max(1) as f64;
    (nll / t, hits as f64 / t)
}

/// Runs stage 1 to `train.steps` (or resumes it).
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    resume: bool,
    device: &B::Device,
) -> Result<StageSummary> {
    let mut tr = Trainer::<B>::start(cfg, "stage1", resume, Goal::Minimize, "loss", device)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let (train, skipped) = examples(&tr.tok, &ds, &cfg.raw.data.train_split, cfg)?;
    let (dev, _) = examples(&tr.tok, &ds, &cfg.raw.data.dev_split, cfg)?;
    if train.is_empty() {
        return Err(Error::data(
            &ds.root.join("queries.jsonl"),
            1,
            Some("reasoning"),
            format!(
                "no query of split '{}' has gold reasoning: stage 1 has nothing to learn from",
                cfg.raw.data.train_split
            ),
        ));
    }
    if !skipped.is_empty() {
        tr.sinks.text(
            tr.state.step,
            "stage1/data",
            &format!(
                "{} of {} training queries have no gold reasoning and are not trained on (first: {})",
                skipped.len(),
                skipped.len() + train.len(),
                skipped[0]
            ),
        )?;
    }
    let t = cfg.raw.train.clone();
    let pad = tr.tok.pad;
    // a step is grad_accum micro-batches on every worker (data-parallel: each runs its block of
    // the step's grad_accum × workers, drawing all of them so the data order stays shared)
    let world = crate::dist::world();
    let parts = t.grad_accum.max(1) * world.size;
    let plan = StepPlan::equal(t.batch_size, parts);
    let mut last_dev = Vec::new();
    while tr.running() {
        tr.stop_if_interrupted()?;
        let (mut tokens, mut hits) = (0usize, 0usize);
        for (k, mb) in plan.micro.iter().enumerate() {
            let idx = tr.next_examples(train.len(), t.batch_size);
            if !world.owns(k, parts) {
                continue;
            }
            let rows: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
            tr.tokens += rows.iter().map(|e| e.ids.len()).sum::<usize>();
            let (loss, n, h) = micro_batch(&tr.model, batch::<B>(&rows, pad, device));
            tokens += n;
            hits += h;
            tr.backward(mb, loss, None);
        }
        tr.step(&[("token_accuracy", hits as f64 / tokens.max(1) as f64)])?;
        if tr.eval_due() && !dev.is_empty() {
            let (dev_loss, dev_acc) = evaluate_sft(&tr.model.valid(), &dev, pad, t.eval_batch_size);
            last_dev = vec![
                ("loss".to_string(), dev_loss),
                ("token_accuracy".to_string(), dev_acc),
            ];
            tr.record_eval(&[("loss", dev_loss), ("token_accuracy", dev_acc)])?;
        }
        if tr.save_due() {
            tr.save()?;
        }
    }
    tr.finish(last_dev)
}
