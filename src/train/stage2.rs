//! Stage 2 — contrastive embedding (`t1-train stage2 --config FILE`).
//!
//! Each step takes `batch_size` training queries. A query is embedded through the query view
//! with its gold reasoning teacher forced (`… <think> reasoning </think><emb_token>`, the state
//! at `<emb_token>`); each query brings a group of `stage2.group_size` documents embedded through
//! the document view: one relevant document (drawn from its qrels) and `group_size − 1` hard
//! negatives — from `hard_negatives.jsonl`, or mined with the current model
//! (`stage2.mine_every`), topped up with random documents when a query has too few. The loss
//! is InfoNCE over all `batch_size × group_size` documents (in-batch negatives; `loss::contrastive`)
//! plus, with `stage2.sft_weight > 0`, the stage-1 SFT loss on the same query sequences so the
//! model keeps writing reasoning.
//!
//! Hard negatives never include a query's relevant documents or its `excluded_ids`, and such a
//! document appearing in another query's group is left out of this query's softmax (no false
//! in-batch negatives). Queries
//! without gold reasoning are embedded with empty reasoning (counted in the log). Mining follows
//! sentence-transformers' `mine_hard_negatives`: rank the corpus for every training query with
//! the current model, drop positives and excluded ids, skip the `mine_skip` best (likely
//! unjudged positives), keep the next `mine_depth`. Mined lists are written to
//! `runs/<name>/mined_negatives.jsonl` (the `hard_negatives.jsonl` format) and reloaded on resume.
//!
//! Logs `stage2/{loss, nce_loss, sft_loss, accuracy, pos_sim, neg_sim, lr, grad_norm,
//! tokens_per_s}`; every `train.eval_every` steps dense retrieval on the dev split
//! (`stage2/dev/{ndcg@10, recall@10, recall@100, mrr@10}`, query view from `eval.query_view`),
//! keeping the best dev nDCG@10 in `runs/<name>/best/`.

use std::collections::HashSet;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::config::{Config, QueryView};
use crate::data::{Dataset, Query};
use crate::error::{Error, Result};
use crate::index::DocIndex;
use crate::loss::{info_nce, sft_loss};
use crate::model::{Decoder, T1Tokenizer};
use crate::run::write_atomic;

use crate::train::common::StageSummary;
use crate::train::common::{Goal, Trainer, model_section, query_vectors};
use crate::train::micro::StepPlan;
use crate::train::stage1::Example;

/// One training query: its teacher-forced query view, relevant and excluded document indices.
pub(crate) struct TrainQuery {
    pub(crate) id: String,
    pub(crate) view: Example,
    pub(crate) positives: Vec<usize>,
    pub(crate) excluded: HashSet<usize>,
}

/// The training queries with a relevant document, and how many have no gold reasoning. Errors
/// (naming `stage`) when none has a relevant document.
pub(crate) fn train_queries(
    tok: &T1Tokenizer,
    ds: &Dataset,
    cfg: &Config,
    stage: &str,
) -> Result<(Vec<TrainQuery>, usize)> {
    let m = model_section(cfg)?;
    let qrels = ds.split(&cfg.raw.data.train_split)?;
    let mut out = Vec::new();
    let mut no_reasoning = 0;
    for q in ds.split_queries(&cfg.raw.data.train_split)? {
        let positives: Vec<usize> = ds
            .relevant(qrels, &q.id)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        if positives.is_empty() {
            continue; // judged, but nothing relevant: no positive to contrast against
        }
        let reasoning = q.reasoning.as_deref().unwrap_or("");
        no_reasoning += reasoning.trim().is_empty() as usize;
        let (ids, prompt_len) = tok.query_with_reasoning(
            &q.text,
            reasoning,
            m.max_query_tokens,
            m.max_reasoning_tokens,
        )?;
        out.push(TrainQuery {
            id: q.id.clone(),
            view: Example { ids, prompt_len },
            positives,
            excluded: ds.excluded(q),
        });
    }
    if out.is_empty() {
        return Err(Error::data(
            &ds.root
                .join("qrels")
                .join(format!("{}.tsv", cfg.raw.data.train_split)),
            1,
            None,
            format!("no training query has a relevant document: {stage} has nothing to contrast"),
        ));
    }
    Ok((out, no_reasoning))
}

/// Hard-negative pools from `hard_negatives.jsonl` (positives and excluded ids removed).
pub(crate) fn file_negatives(ds: &Dataset, queries: &[TrainQuery]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            ds.hard_negatives
                .as_ref()
                .and_then(|h| h.get(&q.id))
                .map(|ids| {
                    ids.iter()
                        .filter_map(|d| ds.corpus.position(d))
                        .filter(|d| !q.positives.contains(d) && !q.excluded.contains(d))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Mines hard negatives with the current model (see the module doc).
fn mine<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    ds: &Dataset,
    queries: &[TrainQuery],
    cfg: &Config,
) -> Result<Vec<Vec<usize>>> {
    let m = model_section(cfg)?;
    let s2 = &cfg.raw.stage2;
    let batch = cfg.raw.train.eval_batch_size;
    let index = DocIndex::build(model, tok, &ds.corpus, m.max_doc_tokens, batch, |_| {})?;
    let all: Vec<&Query> = queries
        .iter()
        .map(|q| {
            ds.query(&q.id)
                .expect("train queries come from the dataset")
        })
        .collect();
    let latent = cfg.raw.latent.options(); // unused by the gold-reasoning view
    let (qv, _) = query_vectors(
        model,
        tok,
        &all,
        QueryView::GoldReasoning,
        m,
        &latent,
        batch,
    )?;
    let scores = index.scores(qv)?;
    Ok(queries
        .iter()
        .zip(scores)
        .map(|(q, row)| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(b.cmp(&a)));
            order
                .into_iter()
                .filter(|d| !q.positives.contains(d) && !q.excluded.contains(d))
                .skip(s2.mine_skip)
                .take(s2.mine_depth)
                .collect()
        })
        .collect())
}

fn write_mined(
    path: &std::path::Path,
    ds: &Dataset,
    queries: &[TrainQuery],
    pools: &[Vec<usize>],
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut text = String::new();
    for (q, pool) in queries.iter().zip(pools) {
        let ids: Vec<&str> = pool.iter().map(|&d| ds.corpus.ids[d].as_str()).collect();
        text.push_str(&serde_json::json!({"query_id": q.id, "doc_ids": ids}).to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

fn read_mined(
    path: &std::path::Path,
    ds: &Dataset,
    queries: &[TrainQuery],
) -> Result<Vec<Vec<usize>>> {
    let h = ds.read_hard_negatives(path)?;
    Ok(queries
        .iter()
        .map(|q| {
            h.get(&q.id)
                .map(|ids| ids.iter().filter_map(|d| ds.corpus.position(d)).collect())
                .unwrap_or_default()
        })
        .collect())
}

/// `group_size` documents for query `q`: a random positive, then hard negatives from its pool
/// (random order), then random documents that are neither relevant nor excluded.
pub(crate) fn group(
    q: &TrainQuery,
    pool: &[usize],
    g: usize,
    n_docs: usize,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let mut docs = vec![*q.positives.choose(rng).expect("queries have positives")];
    let mut cands: Vec<usize> = pool.to_vec();
    while docs.len() < g && !cands.is_empty() {
        let i = rng.random_range(0..cands.len());
        let d = cands.swap_remove(i);
        if !docs.contains(&d) {
            docs.push(d);
        }
    }
    let mut tries = 0;
    while docs.len() < g && tries < 100 * g {
        let d = rng.random_range(0..n_docs);
        if !q.positives.contains(&d) && !q.excluded.contains(&d) && !docs.contains(&d) {
            docs.push(d);
        }
        tries += 1;
    }
    docs
}

/// Runs stage 2 to `train.steps` (or resumes it).
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    resume: bool,
    device: &B::Device,
) -> Result<StageSummary> {
    let mut tr = Trainer::<B>::start(cfg, "stage2", resume, Goal::Maximize, "ndcg@10", device)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let m = model_section(cfg)?.clone();
    let s2 = cfg.raw.stage2.clone();
    let t = cfg.raw.train.clone();
    let (queries, no_reasoning) = train_queries(&tr.tok, &ds, cfg, "stage 2")?;
    if no_reasoning > 0 {
        tr.sinks.text(
            tr.state.step,
            "stage2/data",
            &format!("{no_reasoning} of {} training queries have no gold reasoning (embedded with empty reasoning)", queries.len()),
        )?;
    }
    let doc_views = doc_views(&mut tr, &ds, &m, "stage2/data")?;
    // Mined pools are written per mining step, so a resume reloads exactly the pools in force.
    let mined_path = |step: u64| mined_file(&cfg.run_dir, step);
    let mut pools = file_negatives(&ds, &queries);
    if s2.mine_every > 0 && tr.state.step % s2.mine_every != 0 {
        let at = tr.state.step / s2.mine_every * s2.mine_every;
        pools = read_mined(&mined_path(at), &ds, &queries)?;
    }
    let pad = tr.tok.pad;
    let plan = StepPlan::equal(t.batch_size, t.grad_accum);
    let mut last_dev = Vec::new();
    while tr.running() {
        tr.stop_if_interrupted()?;
        if s2.mine_every > 0 && tr.state.step % s2.mine_every == 0 {
            pools = mine(&tr.model.valid(), &tr.tok, &ds, &queries, cfg)?;
            write_mined(&mined_path(tr.state.step), &ds, &queries, &pools)?;
        }
        let mut sums = [0.0f64; 5];
        for mb in &plan.micro {
            let idx = tr.next_examples(queries.len(), t.batch_size);
            let g = s2.group_size;
            let docs = batch_groups(&queries, &pools, &idx, g, ds.corpus.len(), &mut tr.rng)?;
            let q_rows: Vec<&Example> = idx.iter().map(|&i| &queries[i].view).collect();
            tr.tokens += q_rows.iter().map(|e| e.ids.len()).sum::<usize>();
            let (d_vec, d_tokens) = embed_docs(&tr.model, &doc_views, &docs, pad, device); // [n·g, d]
            tr.tokens += d_tokens;

            let model = &tr.model;
            // queries: state at <emb_token> (the last token), SFT from the same forward pass
            let qb = full_batch::<B>(&q_rows, pad, device);
            let s = qb.inputs.dims()[1];
            let q_hidden = model.hidden(qb.inputs, Some(qb.attention));
            let q_vec = Decoder::hidden_at(q_hidden.clone(), qb.last); // [n, d]
            // another query's copy of one of this query's relevant (or excluded) documents is no
            // negative: leave it out of this query's softmax
            let ignore = false_negatives::<B>(&queries, &idx, &docs, g, device);
            let nce = info_nce(q_vec, d_vec, g, s2.temperature, s2.symmetric, Some(ignore));
            let mut loss = nce.loss.clone();
            let mut sft_value = 0.0;
            if s2.sft_weight > 0.0 {
                let lp = model.token_logprobs(q_hidden, qb.targets, s);
                let sft = sft_loss(lp, qb.trained);
                sft_value = sft.loss.clone().into_scalar().elem::<f64>();
                loss = loss + sft.loss * s2.sft_weight;
            }
            let nce_value = nce.loss.into_scalar().elem::<f64>();
            tr.backward(mb, loss, None);
            for (acc, v) in
                sums.iter_mut()
                    .zip([nce_value, sft_value, nce.accuracy, nce.pos_sim, nce.neg_sim])
            {
                *acc += mb.scale * v;
            }
        }
        let [nce, sft, acc, pos, neg] = sums;
        tr.step(&[
            ("nce_loss", nce),
            ("sft_loss", sft),
            ("accuracy", acc),
            ("pos_sim", pos),
            ("neg_sim", neg),
        ])?;
        if tr.eval_due() {
            last_dev = tr.eval_dev_dense(&ds, cfg.raw.eval.query_view)?;
        }
        if tr.save_due() {
            tr.save()?;
        }
    }
    tr.finish(last_dev)
}

/// The documents of a batch: for each query index in `idx`, its group of `g` ([`group`]), flat
/// `[b·g]`. Errors when the corpus cannot fill a group.
pub(crate) fn batch_groups(
    queries: &[TrainQuery],
    pools: &[Vec<usize>],
    idx: &[usize],
    g: usize,
    n_docs: usize,
    rng: &mut impl Rng,
) -> Result<Vec<usize>> {
    let mut docs = Vec::with_capacity(idx.len() * g);
    for &i in idx {
        let grp = group(&queries[i], &pools[i], g, n_docs, rng);
        if grp.len() < g {
            return Err(Error::Runtime(format!(
                "query {}: only {} documents available for a group of {g}",
                queries[i].id,
                grp.len()
            )));
        }
        docs.extend(grp);
    }
    Ok(docs)
}

/// `<emb_token>` states `[n, d]` of documents `docs` (indices into `views`, one batch, with
/// autograd when `B` has it), and the number of tokens processed.
pub(crate) fn embed_docs<B: Backend>(
    model: &Decoder<B>,
    views: &[Vec<u32>],
    docs: &[usize],
    pad: u32,
    device: &B::Device,
) -> (Tensor<B, 2>, usize) {
    let seqs: Vec<Example> = docs
        .iter()
        .map(|&d| Example {
            ids: views[d].clone(),
            prompt_len: usize::MAX,
        })
        .collect();
    let rows: Vec<&Example> = seqs.iter().collect();
    let tokens = rows.iter().map(|e| e.ids.len()).sum();
    let db = full_batch::<B>(&rows, pad, device);
    let hidden = model.hidden(db.inputs, Some(db.attention));
    (Decoder::hidden_at(hidden, db.last), tokens)
}

/// Every document's view, tokenised once (a count of cut documents goes to `tag` as text).
pub(crate) fn doc_views<B: AutodiffBackend>(
    tr: &mut Trainer<B>,
    ds: &Dataset,
    m: &crate::config::ModelSection,
    tag: &str,
) -> Result<Vec<Vec<u32>>> {
    let mut views = Vec::with_capacity(ds.corpus.len());
    let mut truncated = 0;
    for i in 0..ds.corpus.len() {
        let (ids, cut) =
            tr.tok
                .doc_view(&ds.corpus.titles[i], &ds.corpus.texts[i], m.max_doc_tokens)?;
        truncated += cut as usize;
        views.push(ids);
    }
    if truncated > 0 {
        tr.sinks.text(
            tr.state.step,
            tag,
            &format!(
                "{truncated} of {} documents cut at model.max_doc_tokens = {}",
                ds.corpus.len(),
                m.max_doc_tokens
            ),
        )?;
    }
    Ok(views)
}

/// `[b, b·g]` mask of the batch's documents each query must not see: another group's copy of
/// one of its relevant (or excluded) documents is no negative. `idx` the batch's query indices,
/// `docs` their groups of `g` (the positive first).
pub(crate) fn false_negatives<B: Backend>(
    queries: &[TrainQuery],
    idx: &[usize],
    docs: &[usize],
    g: usize,
    device: &B::Device,
) -> Tensor<B, 2, burn::tensor::Bool> {
    let mut ignore = Vec::with_capacity(idx.len() * docs.len());
    for (r, &i) in idx.iter().enumerate() {
        let q = &queries[i];
        ignore.extend(
            docs.iter()
                .enumerate()
                .map(|(j, d)| j != r * g && (q.positives.contains(d) || q.excluded.contains(d))),
        );
    }
    Tensor::from_data(TensorData::new(ignore, [idx.len(), docs.len()]), device)
}

/// `runs/<name>/mined_negatives/step-NNNNNN.jsonl`.
fn mined_file(run_dir: &std::path::Path, step: u64) -> std::path::PathBuf {
    run_dir
        .join("mined_negatives")
        .join(format!("step-{step:06}.jsonl"))
}

/// Right-padded whole sequences (every id is an input, so `<emb_token>` is the last input):
/// inputs/attention `[b, s]`, next-token targets and trained mask `[b, s]` for the SFT term
/// (trained: target index ≥ prompt length and inside the sequence), and each row's last index `[b]`.
pub(crate) struct FullBatch<B: Backend> {
    pub(crate) inputs: Tensor<B, 2, Int>,
    pub(crate) attention: Tensor<B, 2, Int>,
    pub(crate) targets: Tensor<B, 2, Int>,
    pub(crate) trained: Tensor<B, 2, burn::tensor::Bool>,
    pub(crate) last: Tensor<B, 1, Int>,
}

pub(crate) fn full_batch<B: Backend>(
    rows: &[&Example],
    pad: u32,
    device: &B::Device,
) -> FullBatch<B> {
    let b = rows.len();
    let s = rows.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
    let (mut inputs, mut attention, mut targets, mut trained) = (vec![], vec![], vec![], vec![]);
    for e in rows {
        let n = e.ids.len();
        for i in 0..s {
            inputs.push(if i < n { e.ids[i] } else { pad } as i64);
            attention.push((i < n) as i64);
            targets.push(if i + 1 < n { e.ids[i + 1] } else { pad } as i64);
            trained.push(i + 1 < n && i + 1 >= e.prompt_len);
        }
    }
    let int = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, s]), device);
    let last: Vec<i64> = rows.iter().map(|e| e.ids.len() as i64 - 1).collect();
    FullBatch {
        inputs: int(inputs),
        attention: int(attention),
        targets: int(targets),
        trained: Tensor::from_data(TensorData::new(trained, [b, s]), device),
        last: Tensor::from_data(TensorData::new(last, [b]), device),
    }
}
