//! Rollouts (DESIGN §1, stage 3): B queries → G sampled reasoning rollouts each, with the
//! query vector of every rollout read from `<emb_token>` in the same decode loop. No scoring here:
//! the index ranks, the rewards judge.
//!
//! Layout: rollout `i·G + j` is the j-th sample of query i (rows of a group are consecutive, as
//! `advantage::group_advantages` expects). Each row draws from its own ChaCha stream of `seed`.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

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
    /// G: rollouts per query, the one place the layout's group size lives.
    pub group: usize,
}

impl<B: Backend> RolloutBatch<B> {
    /// B·G.
    pub fn len(&self) -> usize {
        self.rollouts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rollouts.is_empty()
    }

    /// The query (index into the sampled queries) rollout `i` answers.
    pub fn query_of(&self, i: usize) -> usize {
        i / self.group
    }

    /// Rollout `i`'s place within its query's group (`0..G`).
    pub fn member_of(&self, i: usize) -> usize {
        i % self.group
    }

    /// The rows of query `q`'s group.
    pub fn group_rows(&self, q: usize) -> std::ops::Range<usize> {
        q * self.group..(q + 1) * self.group
    }
}

/// How rollouts are drawn.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// G: rollouts per query.
    pub group: usize,
    pub sampler: Sampler,
    pub max_query_tokens: usize,
    pub max_new_tokens: usize,
    /// Row i draws from ChaCha stream `first_stream + i` of this seed (a fresh seed per step
    /// from the run's RNG; `first_stream` is this data-parallel worker's first row in the step).
    pub seed: u64,
    pub first_stream: u64,
    /// `model.repetition_penalty` (1 = off).
    pub repetition_penalty: f32,
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
        first_stream: o.first_stream,
        repetition_penalty: o.repetition_penalty,
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

/// Whether rollout `r` takes part in the loss: all do, except truncated ones when
/// `mask_truncated` (they are then masked out of every loss term and statistic).
pub fn is_live(r: &Rollout, mask_truncated: bool) -> bool {
    !(mask_truncated && r.truncated())
}

/// The completion tokens of rollout `r` that get a loss (all of a live rollout's, none else).
pub fn loss_tokens(r: &Rollout, mask_truncated: bool) -> usize {
    if is_live(r, mask_truncated) {
        r.tokens.len()
    } else {
        0
    }
}

/// Right-padded prompt + completion + forced (`</think>`, `<emb_token>`) sequences of some
/// rollouts, as the policy update reads them. Only target positions from `first` on are kept
/// (`first` + 1 = the shortest prompt): the log-probs, and so the `[b, ·, V]` logits, are computed
/// for completion positions only, as TRL's `logits_to_keep`.
pub struct Completions<B: Backend> {
    /// Every token, `[b, s]` (the last real one, `<emb_token>`, is read for its state).
    pub inputs: Tensor<B, 2, Int>,
    /// 1 on real tokens `[b, s]`.
    pub attention: Tensor<B, 2, Int>,
    /// First kept target position (inputs `first..s` predict `targets`).
    pub first: usize,
    /// Next tokens of positions `first..s` `[b, s − first]`.
    pub targets: Tensor<B, 2, Int>,
    /// 1.0 at kept positions whose target is a sampled completion token (0 for masked rows) `[b, s − first]`.
    pub mask: Tensor<B, 2>,
    /// Sampling-time log-probs at those positions (0 elsewhere) `[b, s − first]`.
    pub sampled: Tensor<B, 2>,
    /// Completion tokens that count (Σ mask).
    pub tokens: f64,
    /// Position of each row's `<emb_token>` `[b]`.
    pub emb_pos: Tensor<B, 1, Int>,
    /// Rows that take part in the loss (not masked as truncated).
    pub live: Vec<bool>,
}

impl<B: AutodiffBackend> Completions<B> {
    /// The same tensors on the inner (non-autodiff) backend, for the frozen reference.
    pub fn inner(&self) -> Completions<B::InnerBackend> {
        Completions {
            inputs: self.inputs.clone().inner(),
            attention: self.attention.clone().inner(),
            first: self.first,
            targets: self.targets.clone().inner(),
            mask: self.mask.clone().inner(),
            sampled: self.sampled.clone().inner(),
            tokens: self.tokens,
            emb_pos: self.emb_pos.clone().inner(),
            live: self.live.clone(),
        }
    }
}

/// The training tensors of rollouts `rows` (indices into `prompts`/`rollouts`), right-padded
/// with `pad`; `mask_truncated` zeroes the mask of rows that hit `max_new_tokens`.
pub fn completions<B: Backend>(
    prompts: &[Vec<u32>],
    rollouts: &[Rollout],
    rows: &[usize],
    pad: u32,
    mask_truncated: bool,
    device: &B::Device,
) -> Completions<B> {
    let seqs: Vec<Vec<u32>> = rows
        .iter()
        .map(|&i| {
            let r = &rollouts[i];
            [prompts[i].as_slice(), &r.tokens, &r.forced].concat()
        })
        .collect();
    let b = rows.len();
    // every token is an input (the last, <emb_token>, for its state); targets are shifted by one
    let s = seqs.iter().map(|q| q.len()).max().unwrap_or(1).max(1);
    // target position pos predicts token pos + 1: completions start at pos = prompt − 1
    let first = rows
        .iter()
        .map(|&i| prompts[i].len().saturating_sub(1))
        .min()
        .unwrap_or(0)
        .min(s - 1);
    let kept = s - first;
    let mut inputs = Vec::with_capacity(b * s);
    let mut attention = Vec::with_capacity(b * s);
    let (mut targets, mut mask, mut sampled) = (
        Vec::with_capacity(b * kept),
        Vec::with_capacity(b * kept),
        Vec::with_capacity(b * kept),
    );
    let mut tokens = 0.0;
    let mut emb_pos = Vec::with_capacity(b);
    let mut lives = Vec::with_capacity(b);
    for (r, &i) in rows.iter().enumerate() {
        let q = &seqs[r];
        let p = prompts[i].len();
        let ro = &rollouts[i];
        let live = is_live(ro, mask_truncated);
        emb_pos.push(q.len() as i64 - 1);
        lives.push(live);
        for pos in 0..s {
            inputs.push(if pos < q.len() { q[pos] } else { pad } as i64);
            attention.push((pos < q.len()) as i64);
        }
        for pos in first..s {
            let real = pos + 1 < q.len();
            targets.push(if real { q[pos + 1] } else { pad } as i64);
            // target pos + 1 is completion token (pos + 1 − p)
            let c = (pos + 1)
                .checked_sub(p)
                .filter(|&c| real && c < ro.tokens.len());
            let on = c.is_some() && live;
            mask.push(if on { 1.0f32 } else { 0.0 });
            sampled.push(c.map_or(0.0, |c| ro.logprobs[c]));
            tokens += on as u32 as f64;
        }
    }
    let int =
        |v: Vec<i64>, w: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, w]), device);
    let float = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [b, kept]), device);
    Completions {
        inputs: int(inputs, s),
        attention: int(attention, s),
        first,
        targets: int(targets, kept),
        mask: float(mask),
        sampled: float(sampled),
        tokens,
        emb_pos: Tensor::from_data(TensorData::new(emb_pos, [b]), device),
        live: lives,
    }
}

/// Log-probs `[b, s − first]` of the kept targets at temperature `t` (logits / t = (h / t)·W), and
/// the `<emb_token>` states `[b, d]`, from one forward of `model`.
pub fn logprobs<B: Backend>(
    model: &Decoder<B>,
    c: &Completions<B>,
    t: f32,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hidden = model.hidden(c.inputs.clone(), Some(c.attention.clone())); // [b, s, d]
    let [b, s, d] = hidden.dims();
    let emb = Decoder::hidden_at(hidden.clone(), c.emb_pos.clone());
    let kept = hidden.slice([0..b, c.first..s, 0..d]); // [b, s − first, d]
    (
        model.token_logprobs(kept / t as f64, c.targets.clone(), s - c.first),
        emb,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DecoderConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;

    type AD = Autodiff<Flex>;

    /// The update's forward over right-padded prompt + completion rows, kept from the shortest
    /// prompt on, gives back the decode loop's sampling log-probs at every masked position (so the
    /// `first` offset, the shift and the padding line up), at a temperature ≠ 1; rows of other
    /// lengths pad, and a truncated row is masked out when asked.
    #[test]
    fn completion_logprobs_match_the_sampling_logprobs() {
        let device = Default::default();
        let model: Decoder<AD> = DecoderConfig::tiny(48).init(&device);
        let prompts: Vec<Vec<u32>> = vec![
            vec![5, 6, 7, 8, 9, 10],
            vec![5, 6, 7, 8, 9, 10],
            vec![11, 12, 13],
            vec![14, 15, 16, 17],
        ];
        let t = 0.7;
        let opts = GenerateOptions {
            sampler: Sampler::Random {
                temperature: t,
                top_k: None,
                top_p: 1.0,
            },
            max_new_tokens: 6,
            stop: vec![3, 4],
            embed: Some(Embed {
                end_think: 1,
                emb: 2,
            }),
            pad: 0,
            seed: 9,
            first_stream: 0,
            repetition_penalty: 1.0,
        };
        let rollouts = generate(&model.valid(), &prompts, &opts, |_| {}).unwrap();
        let rows: Vec<usize> = (0..prompts.len()).collect();
        for mask_truncated in [false, true] {
            let c = completions::<AD>(&prompts, &rollouts, &rows, 0, mask_truncated, &device);
            assert_eq!(c.first, 2, "shortest prompt is 3 tokens");
            let (lp, emb) = logprobs(&model, &c, t);
            assert_eq!(emb.dims(), [4, model.config().hidden_size]);
            let lp = lp.into_data().to_vec::<f32>().unwrap();
            let mask = c.mask.clone().into_data().to_vec::<f32>().unwrap();
            let sampled = c.sampled.clone().into_data().to_vec::<f32>().unwrap();
            let w = c.targets.dims()[1];
            let mut on = 0;
            for (r, ro) in rollouts.iter().enumerate() {
                let row_on: usize = (0..w).filter(|&j| mask[r * w + j] > 0.0).count();
                let expect = if mask_truncated && ro.truncated() {
                    0
                } else {
                    ro.tokens.len()
                };
                assert_eq!(row_on, expect, "row {r}");
                for j in (0..w).filter(|&j| mask[r * w + j] > 0.0) {
                    let (a, b) = (lp[r * w + j], sampled[r * w + j]);
                    assert!((a - b).abs() < 1e-4, "row {r} pos {j}: {a} vs {b}");
                    on += 1;
                }
            }
            assert_eq!(c.tokens, on as f64);
        }
    }
}
