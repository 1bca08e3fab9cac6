//! Rollouts (DESIGN §1, stage 3): B queries → G sampled reasoning rollouts each, with the
//! query vector of every rollout read from `<emb_token>` in the same decode loop. No scoring here:
//! the index ranks, the rewards judge.
//!
//! Layout: rollout `i·G + j` is the j-th sample of query i (rows of a group are consecutive, as
//! `advantage::group_advantages` expects). Each row draws from its own ChaCha stream of `seed`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::data::Query;
use crate::error::{Error, Result};
use crate::model::generate::{Embed, GenerateOptions, Rollout, Sampler, StopReason, generate};
use crate::model::{Decoder, T1Tokenizer};

/// B × G rollouts.
pub struct RolloutBatch<B: Backend> {
    /// Prompt ids of every rollout `[B·G][..]`.
    pub prompts: Vec<Vec<u32>>,
    /// The sampled rollouts `[B·G]` (tokens, sampling log-probs, stop reason, forced tokens).
    pub rollouts: Vec<Rollout>,
    /// `<emb_token>` states `[B·G, d]` (not normalised).
    pub embeddings: Tensor<B, 2>,
    /// Decoded reasoning `[B·G]` (special tokens dropped).
    pub texts: Vec<String>,
    /// Closed `</think>` itself (not EOS, not truncated) `[B·G]`.
    pub format_ok: Vec<bool>,
    pub group: usize,
}

/// How rollouts are drawn.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// G: rollouts per query.
    pub group: usize,
    pub sampler: Sampler,
    pub max_query_tokens: usize,
    pub max_new_tokens: usize,
    /// Row i draws from ChaCha stream i of this seed (a fresh seed per step from the run's RNG).
    pub seed: u64,
}

/// Samples `group` rollouts for each query: the query view's prompt, sampling until `</think>`
/// (or EOS, or `max_new_tokens`), then `</think><emb_token>` fed to read the query vector.
pub fn sample<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    queries: &[&Query],
    o: &RolloutOptions,
) -> Result<RolloutBatch<B>> {
    let (group, max_query_tokens, max_new_tokens) = (o.group, o.max_query_tokens, o.max_new_tokens);
    if group == 0 {
        return Err(Error::Runtime("a group needs at least one rollout".into()));
    }
    let mut prompts = Vec::with_capacity(queries.len() * group);
    for q in queries {
        let p = tok.query_prompt(&q.text, max_query_tokens)?;
        prompts.extend(std::iter::repeat_n(p, group));
    }
    let opts = GenerateOptions {
        sampler: o.sampler.clone(),
        max_new_tokens,
        stop: tok.eos.into_iter().chain([tok.end_think]).collect(),
        embed: Some(Embed {
            end_think: tok.end_think,
            emb: tok.emb,
        }),
        pad: tok.pad,
        seed: o.seed,
    };
    let rollouts = generate(model, &prompts, &opts, |_| {})?;
    let d = model.config().hidden_size;
    let mut flat = Vec::with_capacity(rollouts.len() * d);
    let mut texts = Vec::with_capacity(rollouts.len());
    let mut format_ok = Vec::with_capacity(rollouts.len());
    for r in &rollouts {
        let e = r
            .embedding
            .as_ref()
            .ok_or_else(|| Error::Runtime("rollout without an <emb_token> state".into()))?;
        flat.extend_from_slice(e);
        texts.push(tok.decode(&r.tokens, false)?);
        format_ok.push(r.stop == StopReason::Token(tok.end_think));
    }
    let n = rollouts.len();
    Ok(RolloutBatch {
        prompts,
        rollouts,
        embeddings: Tensor::from_data(TensorData::new(flat, [n, d]), &model.device()),
        texts,
        format_ok,
        group,
    })
}
