//! Dense retrieval evaluation: query vectors under each query view (gold or bare reasoning, the
//! model's own greedy reasoning, LaSER's latent steps), ranked against a document index and
//! scored exactly as trec_eval. Used by `eval`, `search`, the stages' dev evaluation and the
//! curriculum's report.

use std::collections::HashMap;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Report, Run, evaluate};
use crate::config::{Config, ModelSection, QueryView};
use crate::data::{Dataset, Query};
use crate::error::{Error, Result};
use crate::index::{DocIndex, embed_last};
use crate::model::generate::{Embed, GenerateOptions, Sampler, generate};
use crate::model::latent::{LatentOptions, latent_vectors};
use crate::model::load::model_section;
use crate::model::{Decoder, T1Tokenizer};

/// Query-view token ids for `view` (not `Generated`): prompt + reasoning (gold or empty) +
/// `</think><emb_token>`.
pub fn query_view_ids(
    tok: &T1Tokenizer,
    q: &Query,
    view: QueryView,
    m: &ModelSection,
) -> Result<Vec<u32>> {
    let reasoning = match view {
        QueryView::GoldReasoning => q.reasoning.as_deref().unwrap_or(""),
        _ => "",
    };
    Ok(tok
        .query_with_reasoning(
            &q.text,
            reasoning,
            m.max_query_tokens,
            m.max_reasoning_tokens,
        )?
        .0)
}

/// Query vectors `[q, d]` (not normalised) for `queries` under `view`; `Generated` decodes
/// greedily with the KV cache and reads `<emb_token>` in the same loop, and also returns the
/// decoded reasoning (one per query); `Mixed` adds the unit-length bare and generated vectors
/// (and returns the reasoning too); `Latent` runs the `latent` view's K steps after the prompt
/// (`model::latent`).
pub fn query_vectors<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    queries: &[&Query],
    view: QueryView,
    m: &ModelSection,
    latent: &LatentOptions,
    batch_size: usize,
) -> Result<(Tensor<B, 2>, Option<Vec<String>>)> {
    if view == QueryView::Latent {
        let prompts = queries
            .iter()
            .map(|q| tok.query_prompt(&q.text, m.max_query_tokens))
            .collect::<Result<Vec<_>>>()?;
        return Ok((
            latent_vectors(model, &prompts, tok.pad, latent, batch_size)?,
            None,
        ));
    }
    if view == QueryView::Mixed {
        let (own, reasoning) = query_vectors(
            model,
            tok,
            queries,
            QueryView::Generated,
            m,
            latent,
            batch_size,
        )?;
        let (bare, _) = query_vectors(model, tok, queries, QueryView::Bare, m, latent, batch_size)?;
        return Ok((mixed_vectors(bare, own), reasoning));
    }
    if view != QueryView::Generated {
        let seqs = queries
            .iter()
            .map(|q| query_view_ids(tok, q, view, m))
            .collect::<Result<Vec<_>>>()?;
        return Ok((embed_last(model, &seqs, batch_size, tok.pad, |_| {}), None));
    }
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let (vectors, reasoning) = greedy_reasoning(
        model,
        tok,
        &texts,
        m.max_query_tokens,
        m.max_reasoning_tokens,
        m.repetition_penalty,
        batch_size,
    )?;
    Ok((vectors, Some(reasoning)))
}

/// The `mixed` view from the bare and own-reasoning vectors `[q, d]`: each row scaled to unit
/// length, then added.
pub fn mixed_vectors<B: Backend>(bare: Tensor<B, 2>, own: Tensor<B, 2>) -> Tensor<B, 2> {
    crate::index::l2_normalize(bare) + crate::index::l2_normalize(own)
}

/// The model's greedy reasoning for each query text (query view, KV cache, `batch_size` at a
/// time) with the `<emb_token>` state read in the same loop: vectors `[q, d]` (not normalised)
/// and the decoded reasoning (special tokens dropped).
pub fn greedy_reasoning<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    texts: &[&str],
    max_query_tokens: usize,
    max_reasoning_tokens: usize,
    repetition_penalty: f32,
    batch_size: usize,
) -> Result<(Tensor<B, 2>, Vec<String>)> {
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: max_reasoning_tokens,
        stop: tok.eos.into_iter().chain([tok.end_think]).collect(),
        embed: Some(Embed {
            end_think: tok.end_think,
            emb: tok.emb,
        }),
        pad: tok.pad,
        seed: 0,
        first_stream: 0,
        repetition_penalty: repetition_penalty,
    };
    let d = model.config().hidden_size;
    let mut flat = Vec::with_capacity(texts.len() * d);
    let mut reasoning = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|t| tok.query_prompt(t, max_query_tokens))
            .collect::<Result<Vec<_>>>()?;
        for r in generate(model, &prompts, &opts, |_| {})? {
            reasoning.push(tok.decode(&r.tokens, false)?);
            flat.extend(
                r.embedding
                    .ok_or_else(|| Error::Runtime("rollout without embedding".into()))?,
            );
        }
    }
    Ok((
        Tensor::from_data(
            burn::tensor::TensorData::new(flat, [texts.len(), d]),
            &model.device(),
        ),
        reasoning,
    ))
}

/// Dense retrieval on `split`: documents through the document view, queries through `view`,
/// cosine scores, `excluded_ids` removed, trec_eval-exact metrics. Returns the report, the run
/// and, for the `generated` view, the greedy reasoning of each of the split's queries (in
/// `Dataset::split_queries` order).
pub fn dense_eval<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    ds: &Dataset,
    split: &str,
    view: QueryView,
    cfg: &Config,
) -> Result<(Report, Run, Option<Vec<String>>)> {
    let m = model_section(cfg)?;
    let batch = cfg.raw.train.eval_batch_size;
    let index = DocIndex::build(model, tok, &ds.corpus, m.max_doc_tokens, batch, |_| {})?;
    let queries = ds.split_queries(split)?;
    let (qv, reasoning) = query_vectors(
        model,
        tok,
        &queries,
        view,
        m,
        &crate::model::latent::LatentOptions::from_section(&cfg.raw.latent),
        batch,
    )?;
    let (report, run) = rank_and_score(&index, qv, ds, split, &queries, cfg)?;
    Ok((report, run, reasoning))
}

/// Ranks the corpus of `index` for query vectors `qv` `[q, d]` (the split's `queries`, in
/// order), `excluded_ids` removed, `eval.depth` kept, and scores the run exactly as trec_eval.
pub fn rank_and_score<B: Backend>(
    index: &DocIndex<B>,
    qv: Tensor<B, 2>,
    ds: &Dataset,
    split: &str,
    queries: &[&Query],
    cfg: &Config,
) -> Result<(Report, Run)> {
    let batch = cfg.raw.train.eval_batch_size;
    // excluded documents leave each query's ranking here, so the run keeps `depth` real hits
    let excluded_idx: Vec<std::collections::HashSet<usize>> =
        queries.iter().map(|q| ds.excluded(q)).collect();
    let depth = cfg.raw.eval.depth.min(ds.corpus.len());
    let top = crate::index::top_k(index, qv, &ds.corpus.ids, depth, batch, &excluded_idx)?;
    let mut run = Run::new();
    for (q, hits) in queries.iter().zip(top) {
        let hits: Vec<(String, f64)> = hits
            .into_iter()
            .map(|(i, s)| (ds.corpus.ids[i].clone(), s as f64))
            .collect();
        run.insert(q.id.clone(), hits);
    }
    let excluded: HashMap<String, Vec<String>> = queries
        .iter()
        .filter(|q| !q.excluded_ids.is_empty())
        .map(|q| (q.id.clone(), q.excluded_ids.clone()))
        .collect();
    Ok((evaluate(ds.split(split)?, &run, &excluded), run))
}
