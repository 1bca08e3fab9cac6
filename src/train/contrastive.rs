//! What the two contrastive stages share (stage 2 and LaSER's latent stage): the training
//! queries with their relevant and excluded documents, each query's group of one relevant
//! document and hard negatives, the documents' `<emb_token>` vectors, the in-batch false
//! negatives left out of each softmax, and right-padded whole-sequence batches.

use std::collections::HashSet;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::IndexedRandom;

use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::load::model_section;
use crate::model::{Decoder, T1Tokenizer};
use crate::train::common::Trainer;
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

/// Data-parallel contrastive batches (Tevatron's and sentence-transformers' gathered in-batch
/// negatives): this worker's rows `own` `[b, d]` among every worker's, `[b · workers, d]` in rank
/// order, where only this worker's block carries gradient. Every worker then computes the
/// whole batch's loss; the sum of their gradients (the step's all-reduce) is that loss's
/// gradient, since each worker differentiates it through its own rows alone. One process:
/// `own` itself.
pub(crate) fn gathered<B: AutodiffBackend>(
    own: Tensor<B, 2>,
    what: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let world = crate::dist::world();
    if !world.is_distributed() {
        return Ok(own);
    }
    let [b, d] = own.dims();
    let mine = own
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Runtime(format!("gathering {what}: {e:?}")))?;
    let all = world.all_gather::<B::InnerBackend>(what, &mine, device)?;
    let all = Tensor::<B, 2>::from_data(TensorData::new(all, [b * world.size, d]), device);
    let at = world.block(b);
    let mut parts = Vec::with_capacity(3);
    if at.start > 0 {
        parts.push(all.clone().slice([0..at.start]));
    }
    parts.push(own);
    if at.end < b * world.size {
        parts.push(all.slice([at.end..b * world.size]));
    }
    Ok(Tensor::cat(parts, 0))
}

/// [`gathered`] for `[b, k, d]` rows (the latent stage's trajectories).
pub(crate) fn gathered3<B: AutodiffBackend>(
    own: Tensor<B, 3>,
    what: &str,
    device: &B::Device,
) -> Result<Tensor<B, 3>> {
    let [b, k, d] = own.dims();
    let all = gathered(own.reshape([b * k, d]), what, device)?;
    let n = all.dims()[0] / k;
    Ok(all.reshape([n, k, d]))
}

/// The tokens [`full_batch`] trains the SFT term on for `e` (targets at index ≥ its prompt
/// length inside the sequence): a data-parallel worker divides its SFT sum by the whole
/// batch's count.
pub(crate) fn sft_tokens(e: &Example) -> usize {
    (1..e.ids.len()).filter(|&j| j >= e.prompt_len).count()
}

/// This worker's share of a data-parallel contrastive micro-batch: the batch's query indices
/// and document groups (every worker draws the whole batch, so data order and groups stay
/// shared), and the block of queries and documents it embeds.
pub(crate) struct Shard {
    /// Query indices of the whole batch (`batch_size × workers`).
    pub(crate) idx: Vec<usize>,
    /// Their groups, flat (`idx.len() × g`).
    pub(crate) docs: Vec<usize>,
    /// This worker's queries among `idx`, and its documents among `docs`.
    pub(crate) queries: std::ops::Range<usize>,
    pub(crate) groups: std::ops::Range<usize>,
}

impl Shard {
    pub(crate) fn draw<B: AutodiffBackend>(
        tr: &mut Trainer<B>,
        queries: &[TrainQuery],
        pools: &[Vec<usize>],
        g: usize,
        n_docs: usize,
    ) -> Result<Shard> {
        let world = crate::dist::world();
        let b = tr.cfg.raw.train.batch_size;
        let idx = tr.next_examples(queries.len(), b * world.size);
        let docs = batch_groups(queries, pools, &idx, g, n_docs, &mut tr.rng)?;
        let own = world.block(b);
        Ok(Shard {
            idx,
            docs,
            groups: own.start * g..own.end * g,
            queries: own,
        })
    }

    /// This worker's query indices.
    pub(crate) fn own_idx(&self) -> &[usize] {
        &self.idx[self.queries.clone()]
    }

    pub(crate) fn own_docs(&self) -> &[usize] {
        &self.docs[self.groups.clone()]
    }
}
