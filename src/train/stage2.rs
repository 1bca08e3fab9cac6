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

use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::{Config, QueryView};
use crate::data::{Dataset, Query};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::index::DocIndex;
use crate::loss::{info_nce, sft_loss};
use crate::model::{Decoder, T1Tokenizer};

use crate::eval::dense::query_vectors;
use crate::model::load::model_section;
use crate::train::common::StageSummary;
use crate::train::common::{Goal, Trainer};
use crate::train::contrastive::{
    Shard, TrainQuery, doc_views, embed_docs, false_negatives, file_negatives, full_batch,
    gathered, sft_tokens, train_queries,
};
use crate::train::micro::StepPlan;
use crate::train::stage1::Example;

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
    let index = DocIndex::build_shared(model, tok, &ds.corpus, m.max_doc_tokens, batch)?;
    let all: Vec<&Query> = queries
        .iter()
        .map(|q| {
            ds.query(&q.id)
                .expect("train queries come from the dataset")
        })
        .collect();
    let latent = crate::model::latent::LatentOptions::from_section(&cfg.raw.latent); // unused by the gold-reasoning view
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
            if crate::dist::world().is_main() {
                write_mined(&mined_path(tr.state.step), &ds, &queries, &pools)?;
            }
        }
        let mut sums = [0.0f64; 5];
        for mb in &plan.micro {
            let g = s2.group_size;
            // data-parallel: every worker draws the whole batch, embeds its block, gathers the rest
            let sh = Shard::draw(&mut tr, &queries, &pools, g, ds.corpus.len())?;
            let q_rows: Vec<&Example> = sh.own_idx().iter().map(|&i| &queries[i].view).collect();
            tr.tokens += q_rows.iter().map(|e| e.ids.len()).sum::<usize>();
            let (d_vec, d_tokens) = embed_docs(&tr.model, &doc_views, sh.own_docs(), pad, device);
            tr.tokens += d_tokens;
            let d_vec = gathered(d_vec, "the batch's document vectors", device)?; // [n·g, d]

            let model = &tr.model;
            // queries: state at <emb_token> (the last token), SFT from the same forward pass
            let qb = full_batch::<B>(&q_rows, pad, device);
            let s = qb.inputs.dims()[1];
            let q_hidden = model.hidden(qb.inputs, Some(qb.attention));
            let q_vec = Decoder::hidden_at(q_hidden.clone(), qb.last); // [b, d]
            let q_vec = gathered(q_vec, "the batch's query vectors", device)?; // [n, d]
            // another query's copy of one of this query's relevant (or excluded) documents is no
            // negative: leave it out of this query's softmax
            let ignore = false_negatives::<B>(&queries, &sh.idx, &sh.docs, g, device);
            let nce = info_nce(q_vec, d_vec, g, s2.temperature, s2.symmetric, Some(ignore));
            let nce_value = nce.loss.clone().into_scalar().elem::<f64>();
            let workers = crate::dist::world().size as f64;
            // every worker holds the whole batch's InfoNCE: each logs its 1/workers share
            let mut logged = nce_value / workers;
            let mut loss = nce.loss.clone();
            let mut sft_value = 0.0;
            if s2.sft_weight > 0.0 {
                // this worker's tokens' NLL over the whole batch's trained tokens
                let all: usize = sh.idx.iter().map(|&i| sft_tokens(&queries[i].view)).sum();
                let lp = model.token_logprobs(q_hidden, qb.targets, s);
                let sft = sft_loss(lp, qb.trained);
                let share = sft.tokens as f64 / all.max(1) as f64;
                let sft_share = sft.loss * share;
                sft_value = sft_share.clone().into_scalar().elem::<f64>();
                logged += s2.sft_weight * sft_value;
                loss = loss + sft_share * s2.sft_weight;
            }
            tr.backward_logged(mb, loss, None, logged);
            // the batch's figures (every worker's the same) and this worker's SFT share
            for (acc, v) in
                sums.iter_mut()
                    .zip([nce_value, sft_value, nce.accuracy, nce.pos_sim, nce.neg_sim])
            {
                *acc += mb.scale * v;
            }
        }
        let [nce, sft, acc, pos, neg] = sums;
        tr.step_parts(
            &[
                ("nce_loss", nce),
                ("accuracy", acc),
                ("pos_sim", pos),
                ("neg_sim", neg),
            ],
            &[("sft_loss", sft)],
        )?;
        if tr.eval_due() {
            last_dev = tr.eval_dev_dense(&ds, cfg.raw.eval.query_view)?;
        }
        if tr.save_due() {
            tr.save()?;
        }
    }
    tr.finish(last_dev)
}

/// `runs/<name>/mined_negatives/step-NNNNNN.jsonl`.
fn mined_file(run_dir: &std::path::Path, step: u64) -> std::path::PathBuf {
    run_dir
        .join("mined_negatives")
        .join(format!("step-{step:06}.jsonl"))
}
