//! Batched sampling with a KV cache: the decode loop behind rollouts and `t1-train generate`.
//!
//! `n` prompts (for GRPO: B queries × G rollouts, repeated by the caller) are left-padded to a
//! common length, prefilled in one pass, then decoded one token per step for every row at once.
//! Each row keeps its own RoPE positions (counting its real tokens only), its own RNG stream and
//! its own stop state, so a row's rollout does not depend on which rows share its batch (up to
//! float rounding of batched matmuls).
//!
//! A row stops sampling on a stop token (`</think>`, EOS) or after `max_new_tokens`. When
//! [`Embed`] is set, the loop then *feeds* the row's closing tokens without sampling them —
//! `</think>` when the model did not write it, then `<emb_token>` — and keeps the last-layer
//! hidden state of the step that consumed `<emb_token>`: the rollout's query vector comes out of
//! the same decode loop, with no second forward pass (DESIGN §1).
//!
//! Sampling runs on the device ([`draw`]): each step uploads one uniform per row (from the row's
//! own ChaCha stream, drawn on the host) and reads back only `[n, 3]` values — each row's token,
//! its log-prob and the entropy — never the `[n, V]` logits. The order is Hugging Face's
//! `generate`: temperature → top-k → top-p, then an inverse-CDF draw in token-id order. The
//! log-prob returned for each generated token is `log_softmax(logits / temperature)[token]` over
//! the **full** vocabulary (before top-k/top-p truncation) — the same quantity the GRPO loss
//! recomputes, as TRL does. For greedy decoding the temperature is taken as 1. A repetition
//! penalty (HF's `RepetitionPenaltyLogitsProcessor`, before the temperature) changes which token
//! is chosen, not the log-prob and entropy returned: those of the model's own distribution, as
//! TRL's loss recomputes them.

use std::cell::Cell;
use std::collections::VecDeque;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::decoder::{Decoder, KvCache};
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    /// Highest logit (first one on ties, as `torch.argmax`).
    Greedy,
    /// Random draw from `softmax(logits / temperature)`, restricted to the `top_k` most likely
    /// tokens (when set) and then to the smallest set whose probability reaches `top_p`.
    Random {
        temperature: f32,
        top_k: Option<usize>,
        top_p: f32,
    },
}

impl Sampler {
    /// `temperature <= 0` means greedy, as on the command line.
    pub fn from_args(temperature: f32, top_k: Option<usize>, top_p: f32) -> Result<Self> {
        let usage = |flag: &str, m: String| Error::Config {
            location: format!("--{flag}"),
            message: m,
        };
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(usage("top-p", format!("must be in (0, 1], got {top_p}")));
        }
        if top_k == Some(0) {
            return Err(usage("top-k", "must be at least 1".into()));
        }
        // 0 means greedy; a negative or non-finite temperature means nothing
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(usage(
                "temperature",
                format!("must be ≥ 0 and finite (0 = greedy), got {temperature}"),
            ));
        }
        Ok(if temperature == 0.0 {
            Sampler::Greedy
        } else {
            Sampler::Random {
                temperature,
                top_k,
                top_p,
            }
        })
    }

    fn temperature(&self) -> f32 {
        match self {
            Sampler::Greedy => 1.0,
            Sampler::Random { temperature, .. } => *temperature,
        }
    }
}

/// The closing tokens fed after sampling stops, to read the query vector in the same loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Embed {
    /// `</think>`: fed when the row stopped without writing it.
    pub end_think: u32,
    /// `<emb_token>`: its last-layer hidden state is the rollout's embedding.
    pub emb: u32,
}

/// Everything the decode loop needs besides the model and the prompts.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampler: Sampler,
    /// Tokens sampled at most per row (≥ 1).
    pub max_new_tokens: usize,
    /// Tokens that end sampling when drawn (kept in the output): `</think>`, EOS.
    pub stop: Vec<u32>,
    /// Feed `</think>` (if missing) and `<emb_token>` after stopping and keep the hidden state.
    pub embed: Option<Embed>,
    /// Filler id for left padding and for rows that have finished (never attended to).
    pub pad: u32,
    /// Row `i` draws from ChaCha8 stream `first_stream + i` of this seed.
    pub seed: u64,
    pub first_stream: u64,
    /// Hugging Face's `repetition_penalty` (1 = off): before each draw, the logit of every token
    /// already in the row (its prompt and what it has sampled) is divided by it, or multiplied
    /// when negative. The returned log-probs and entropies stay those of the unpenalised model.
    pub repetition_penalty: f32,
}

/// Why a row stopped sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It drew this stop token.
    Token(u32),
    /// It reached `max_new_tokens` without a stop token (truncated).
    Length,
}

/// One generated sequence.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Sampled tokens, including the stop token when one was drawn.
    pub tokens: Vec<u32>,
    /// Sampling-time `log_softmax(logits / T)[token]` of each sampled token (same length).
    pub logprobs: Vec<f32>,
    /// Entropy of the full sampling distribution `softmax(logits / T)` at each sampled position
    /// (same length; before top-k/top-p, like the log-probs).
    pub entropies: Vec<f32>,
    pub stop: StopReason,
    /// Tokens fed after sampling without being sampled (`</think>` when missing, `<emb_token>`).
    pub forced: Vec<u32>,
    /// Last-layer hidden state `[d]` (after the final norm, not normalised) at `<emb_token>`.
    pub embedding: Option<Vec<f32>>,
}

impl Rollout {
    /// Hit `max_new_tokens` without drawing a stop token.
    pub fn truncated(&self) -> bool {
        self.stop == StopReason::Length
    }
}

/// Bisection steps of the top-k and top-p thresholds: the interval starts at most ~1e3 wide
/// (logits) or 1.1 (probabilities) and halves each step: after 48 steps ≈ 4e-12 and 4e-15
/// wide, below f32's spacing of logits and of probabilities above ≈ 1e-8 (a cut among smaller
/// probabilities may keep a few more tokens of negligible mass).
const BISECT_STEPS: usize = 48;

/// Each row's `(token, log_softmax(logits / T)[token], entropy of softmax(logits / T))` from
/// logits `[n, V]`, on the logits' device, as `[n, 3]` (the token as f32: exact below 2^24);
/// `u[i] ∈ [0, 1)` is row i's uniform (unused when greedy). Row i's result depends on row i's
/// logits and `u[i]` only.
///
/// - Greedy: the first maximum (as `torch.argmax`).
/// - Top-k keeps the tokens whose logit is ≥ the k-th largest (ties at the cut all kept, as
///   HF's `TopKLogitsWarper`); top-p then keeps the tokens whose renormalised probability is
///   ≥ the largest threshold whose kept mass reaches `top_p` (at least one token; tokens tied at
///   that threshold are all kept, so uniform logits keep every token where a sorted prefix would
///   stop at `top_p`). Both cuts are thresholds found by bisection
///   with tensor ops, so nothing is sorted (burn's sort runs on the host) and nothing leaves the
///   device.
/// - The draw: the first kept token (in id order) whose cumulative mass exceeds `u · total`,
///   the cumulative sums taken in blocks of ~√V (the block, then the token inside it), since
///   cubecl's `cumsum` costs O(length²) per row.
///
/// `penalty`: `(seen [n, V], r)` — the tokens already in each row and the repetition penalty;
/// the token is chosen from the penalised logits, the log-prob and entropy are the unpenalised
/// ones.
pub(crate) fn draw<B: Backend>(
    logits: Tensor<B, 2>,
    sampler: &Sampler,
    u: &[f32],
    penalty: Option<(Tensor<B, 2, Bool>, f32)>,
) -> Tensor<B, 2> {
    let [n, v] = logits.dims();
    let dev = logits.device();
    // x / 1 is x exactly: no pass over [n, V] at temperature 1 (greedy included)
    let t = sampler.temperature();
    let temper = |x: Tensor<B, 2>| if t == 1.0 { x } else { x.div_scalar(t) };
    // HF: a seen token's logit x becomes x / r, or x · r when negative, before the temperature
    let penalised = penalty.map(|(seen, r)| {
        let scaled = logits
            .clone()
            .div_scalar(r)
            .mask_where(logits.clone().lower_elem(0.0), logits.clone().mul_scalar(r));
        temper(logits.clone().mask_where(seen, scaled))
    });
    let z = temper(logits);
    let m = z.clone().max_dim(1); // [n, 1]
    let e = (z.clone() - m.clone().expand([n, v])).exp();
    let sum = e.clone().sum_dim(1);
    let lse = sum.clone().log() + m.clone();
    let p = e / sum.expand([n, v]);
    let entropy = (lse.clone() - (p.clone() * z.clone()).sum_dim(1)).clamp_min(0.0);
    // what the token is chosen from: the penalised logits and their max (their softmax only
    // when sampling)
    let pen = penalised.is_some();
    let (zc, mc) = match penalised {
        None => (z.clone(), m),
        Some(zp) => {
            let mp = zp.clone().max_dim(1);
            (zp, mp)
        }
    };
    let token = match sampler {
        Sampler::Greedy => iota::<B>(n, v, &dev)
            .mask_fill(zc.lower(mc.expand([n, v])), v as i64)
            .min_dim(1),
        Sampler::Random { top_k, top_p, .. } => {
            let mut q = if pen {
                let ep = (zc.clone() - mc.clone().expand([n, v])).exp();
                ep.clone() / ep.sum_dim(1).expand([n, v])
            } else {
                p
            };
            if let Some(k) = top_k.filter(|&k| k < v) {
                let lo = zc.clone().min_dim(1);
                let keep = zc
                    .clone()
                    .greater_equal(bisect(&zc, lo, mc + 1.0, k as f32, false));
                q = q.mask_fill(keep.bool_not(), 0.0);
            }
            if *top_p < 1.0 {
                q = q.clone() / q.sum_dim(1).expand([n, v]);
                let lo = Tensor::<B, 2>::zeros([n, 1], &dev);
                let hi = Tensor::<B, 2>::ones([n, 1], &dev) * 1.1;
                let cut = bisect(&q, lo, hi, *top_p, true);
                q = q.clone().mask_fill(q.lower(cut), 0.0);
            }
            let u = Tensor::<B, 2>::from_data(TensorData::new(u.to_vec(), [n, 1]), &dev);
            inverse_cdf(q, u)
        }
    };
    // the chosen token's log-prob z − lse, element for element what log-softmax then gather
    // gives, without the [n, V] log-softmax
    let logp = z.gather(1, token.clone()) - lse;
    Tensor::cat(vec![token.float(), logp, entropy], 1)
}

/// `[n, len]` rows of the indices `0..len`.
fn iota<B: Backend>(n: usize, len: usize, dev: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::<B, 1, Int>::arange(0..len as i64, dev)
        .reshape([1, len])
        .expand([n, len])
}

/// The largest threshold `τ` (to f32 precision) with `f(x, τ) ≥ goal` per row, given
/// `f(lo) ≥ goal > f(hi)`: `f` counts the entries `≥ τ`, or (`mass`) sums them.
fn bisect<B: Backend>(
    x: &Tensor<B, 2>,
    mut lo: Tensor<B, 2>,
    mut hi: Tensor<B, 2>,
    goal: f32,
    mass: bool,
) -> Tensor<B, 2> {
    let [n, v] = x.dims();
    for _ in 0..BISECT_STEPS {
        let mid = (lo.clone() + hi.clone()) * 0.5;
        let above = x.clone().greater_equal(mid.clone().expand([n, v]));
        let f = if mass {
            x.clone().mask_fill(above.bool_not(), 0.0).sum_dim(1)
        } else {
            above.float().sum_dim(1)
        };
        let ok = f.greater_equal_elem(goal);
        lo = lo.mask_where(ok.clone(), mid.clone());
        hi = mid.mask_where(ok, hi);
    }
    lo.expand([n, v])
}

/// Per row, the first index whose cumulative weight exceeds `u · Σ weights`, among the indices
/// of non-zero weight (`weights` `[n, V]` ≥ 0 with a positive sum), as `[n, 1]`. Blocks of `bs` weights: the block first, then the index inside it; each choice
/// is clamped to the last non-zero block / weight so rounding cannot pick a zero weight.
fn inverse_cdf<B: Backend>(weights: Tensor<B, 2>, u: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    let [n, v] = weights.dims();
    let dev = weights.device();
    let bs = ((v as f64).sqrt().ceil() as usize)
        .next_power_of_two()
        .max(1);
    let nb = v.div_ceil(bs);
    let last = |w: Tensor<B, 2>, len: usize| {
        iota::<B>(n, len, &dev)
            .mask_fill(w.lower_equal_elem(0.0), -1)
            .max_dim(1)
    };
    let padded = if nb * bs > v {
        Tensor::cat(vec![weights, Tensor::zeros([n, nb * bs - v], &dev)], 1)
    } else {
        weights
    };
    let blocks = padded
        .clone()
        .reshape([n, nb, bs])
        .sum_dim(2)
        .reshape([n, nb]);
    let target = u * blocks.clone().sum_dim(1); // [n, 1]
    let cdf = blocks.clone().cumsum(1);
    let b = cdf
        .lower_equal(target.clone().expand([n, nb]))
        .int()
        .sum_dim(1)
        .min_pair(last(blocks.clone(), nb)); // [n, 1]
    let before = iota::<B>(n, nb, &dev).lower(b.clone().expand([n, nb]));
    // ≥ 0: the masked sum may round above `cdf[b − 1]`; a negative rest would pick the block's
    // first entry even when its weight is zero
    let rest = (target - blocks.mask_fill(before.bool_not(), 0.0).sum_dim(1)).clamp_min(0.0);
    let cols = b.clone() * bs as i64 + iota::<B>(n, bs, &dev);
    let block = padded.gather(1, cols);
    let j = block
        .clone()
        .cumsum(1)
        .lower_equal(rest.expand([n, bs]))
        .int()
        .sum_dim(1)
        .min_pair(last(block, bs));
    b * bs as i64 + j
}

thread_local! {
    static HOST_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Bytes the decode loops of this thread have read back from the device for sampling so far:
/// `12 · n` per step (token, log-prob, entropy per row). The lavapipe test reads it to show that
/// no logits move.
pub fn sampling_bytes_read() -> u64 {
    HOST_BYTES.with(Cell::get)
}

/// Per-row decode state.
struct Row {
    rng: ChaCha8Rng,
    /// Next RoPE position.
    pos: i64,
    /// Tokens to feed before sampling again (the last draw, then forced closing tokens).
    pending: VecDeque<u32>,
    sampling: bool,
    done: bool,
    out: Rollout,
}

/// Generates one continuation per prompt (the caller repeats a prompt G times for a group).
/// Prompts must be non-empty. `progress` is called after each decode step with the number of
/// finished rows.
pub fn generate<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Rollout>> {
    let n = prompts.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    if opts.max_new_tokens == 0 {
        return Err(Error::Runtime("max_new_tokens must be at least 1".into()));
    }
    let penalty = opts.repetition_penalty;
    if !(penalty > 0.0 && penalty.is_finite()) {
        return Err(Error::Runtime(format!(
            "the repetition penalty must be finite and > 0, got {penalty}"
        )));
    }
    let vocab = model.config().vocab_size;
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Runtime(format!("prompt {i} is empty")));
    }
    let mut specials = opts.stop.clone();
    specials.push(opts.pad);
    if let Some(e) = opts.embed {
        specials.extend([e.end_think, e.emb]);
    }
    if let Some(t) = prompts
        .iter()
        .flatten()
        .chain(&specials)
        .find(|&&t| t as usize >= vocab)
    {
        return Err(Error::Runtime(format!(
            "token id {t} is outside the model's vocabulary of {vocab}"
        )));
    }
    let device = model.device();
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let forced_max = if opts.embed.is_some() { 2 } else { 0 };
    let capacity = p + opts.max_new_tokens + forced_max;

    // Each distinct prompt is prefilled once (stage 3 repeats a query's prompt for its G
    // rollouts); rows with the same prompt then get copies of its cache row. `first[u]` is the
    // first row with distinct prompt u, `share[i]` row i's distinct prompt.
    let mut first: Vec<usize> = Vec::new();
    let mut share: Vec<usize> = Vec::with_capacity(n);
    let mut seen: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let u = *seen.entry(prompt.as_slice()).or_insert_with(|| {
            first.push(i);
            first.len() - 1
        });
        share.push(u);
    }
    let u = first.len();

    let mut rows: Vec<Row> = Vec::with_capacity(n);
    for (i, prompt) in prompts.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        rng.set_stream(opts.first_stream + i as u64);
        rows.push(Row {
            rng,
            pos: prompt.len() as i64,
            pending: VecDeque::new(),
            sampling: true,
            done: false,
            out: Rollout {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                entropies: Vec::new(),
                stop: StopReason::Length,
                forced: Vec::new(),
                embedding: None,
            },
        });
    }
    // Prefill the distinct prompts (left-padded, positions counting real tokens from 0).
    let distinct: Vec<&[u32]> = first.iter().map(|&i| prompts[i].as_slice()).collect();
    let mut cache = KvCache::new(model, u, capacity);
    let hidden = model.prefill(&distinct, opts.pad, &mut cache)?; // [u, p, d]
    let d = hidden.dims()[2];
    let mut last = hidden.slice([0..u, p - 1..p, 0..d]); // [u, 1, d]
    if u < n {
        cache = cache.select_rows(&share);
        let sel = share.iter().map(|&x| x as i64).collect::<Vec<_>>();
        last = last.select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(sel, [n]), &device),
        );
    }
    let int2 =
        |v: Vec<i64>, s: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, s]), &device);
    let head = model.head_matrix(); // [d, V], made once (a tied head would be transposed per step)
    // the repetition penalty's tokens already in each row: its prompt, then each draw added
    let mut seen = (penalty != 1.0).then(|| {
        let mut m = vec![false; n * vocab];
        for (i, prompt) in prompts.iter().enumerate() {
            for &t in prompt {
                m[i * vocab + t as usize] = true;
            }
        }
        Tensor::<B, 2, Bool>::from_data(TensorData::new(m, [n, vocab]), &device)
    });
    let ids_of_vocab = seen.as_ref().map(|_| iota::<B>(n, vocab, &device));
    let mut fed: Vec<Option<u32>> = vec![None; n]; // what each row consumed in the last step

    loop {
        // 1. Read this step's outputs: embeddings, then draws for rows that are sampling.
        if let Some(e) = opts.embed {
            // only the forced <emb_token> closes a row: one the model drew itself while still
            // reasoning is an ordinary token
            let want: Vec<usize> = (0..n)
                .filter(|&i| fed[i] == Some(e.emb) && !rows[i].sampling)
                .collect();
            if !want.is_empty() {
                let sel = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(
                        want.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                        [want.len()],
                    ),
                    &device,
                );
                let h = last.clone().reshape([n, d]).select(0, sel); // [w, d]
                let h = h
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| Error::Runtime(format!("cannot read hidden states: {e:?}")))?;
                for (j, &i) in want.iter().enumerate() {
                    rows[i].out.embedding = Some(h[j * d..(j + 1) * d].to_vec());
                    rows[i].done = true;
                }
            }
        }
        let drawing: Vec<usize> = (0..n)
            .filter(|&i| rows[i].sampling && rows[i].pending.is_empty() && !rows[i].done)
            .collect();
        if !drawing.is_empty() {
            let logits = super::ops::matmul(last.clone().reshape([n, d]), head.clone()); // [n, V]
            let mut u = vec![0f32; n];
            if matches!(opts.sampler, Sampler::Random { .. }) {
                for &i in &drawing {
                    // in [0, 1) after rounding to f32 too
                    u[i] = (rows[i].rng.random::<f64>() as f32).min(1.0 - f32::EPSILON);
                }
            }
            let drawn = draw(
                logits,
                &opts.sampler,
                &u,
                seen.clone().map(|m| (m, penalty)),
            )
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Runtime(format!("cannot read the sampled tokens: {e:?}")))?;
            HOST_BYTES.with(|b| b.set(b.get() + 4 * drawn.len() as u64));
            if let (Some(m), Some(ids)) = (seen.take(), &ids_of_vocab) {
                // each drawing row's new token joins its seen set (−1 matches nothing)
                let mut t = vec![-1i64; n];
                for &i in &drawing {
                    t[i] = drawn[3 * i] as i64;
                }
                let hit = ids.clone().equal(int2(t, 1).expand([n, vocab]));
                seen = Some(m.bool_or(hit));
            }
            for &i in &drawing {
                let (t, lp, h) = (drawn[3 * i] as usize, drawn[3 * i + 1], drawn[3 * i + 2]);
                if t >= vocab || !(lp.is_finite() && h.is_finite()) {
                    return Err(Error::Runtime(format!(
                        "row {i}: non-finite logits at sampling (token {t}, log-prob {lp}, entropy {h})"
                    )));
                }
                let row = &mut rows[i];
                row.out.tokens.push(t as u32);
                row.out.logprobs.push(lp);
                row.out.entropies.push(h);
                let t = t as u32;
                let stopped = opts.stop.contains(&t);
                if stopped || row.out.tokens.len() >= opts.max_new_tokens {
                    row.sampling = false;
                    row.out.stop = if stopped {
                        StopReason::Token(t)
                    } else {
                        StopReason::Length
                    };
                    match opts.embed {
                        Some(e) => {
                            row.pending.push_back(t);
                            if t != e.end_think {
                                row.out.forced.push(e.end_think);
                            }
                            row.out.forced.push(e.emb);
                            row.pending.extend(row.out.forced.iter().copied());
                        }
                        None => row.done = true,
                    }
                } else {
                    row.pending.push_back(t);
                }
            }
        }
        let finished = rows.iter().filter(|r| r.done).count();
        progress(finished);
        if finished == n {
            break;
        }
        // 2. Feed one token per row (finished rows get masked filler).
        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut pad = Vec::with_capacity(n);
        for (i, row) in rows.iter_mut().enumerate() {
            let next = if row.done {
                None
            } else {
                row.pending.pop_front()
            };
            fed[i] = next;
            ids.push(next.unwrap_or(opts.pad) as i64);
            positions.push(row.pos);
            pad.push(next.is_none());
            if next.is_some() {
                row.pos += 1;
            }
        }
        last = model.forward_cached(int2(ids, 1), int2(positions, 1), &pad, &mut cache)?; // [n, 1, d]
    }
    Ok(rows.into_iter().map(|r| r.out).collect())
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    /// `draw` on rows of the same logits, one uniform each from a ChaCha stream: `[(token, logp, H)]`.
    fn draws(logits: &[f32], sampler: &Sampler, rows: usize) -> Vec<(usize, f32, f32)> {
        draw_rows(logits, sampler, rows, None)
    }

    /// `draw` with a repetition penalty `r` on the tokens `seen` of every row.
    fn penalised(
        logits: &[f32],
        sampler: &Sampler,
        rows: usize,
        seen: &[usize],
        r: f32,
    ) -> Vec<(usize, f32, f32)> {
        draw_rows(logits, sampler, rows, Some((seen, r)))
    }

    fn draw_rows(
        logits: &[f32],
        sampler: &Sampler,
        rows: usize,
        penalty: Option<(&[usize], f32)>,
    ) -> Vec<(usize, f32, f32)> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let u: Vec<f32> = (0..rows).map(|_| rng.random::<f64>() as f32).collect();
        let v = logits.len();
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(logits.repeat(rows), [rows, v]), &dev);
        let penalty = penalty.map(|(seen, r)| {
            let mask: Vec<bool> = (0..v).map(|t| seen.contains(&t)).collect();
            let m = TensorData::new(mask.repeat(rows), [rows, v]);
            (Tensor::<Flex, 2, Bool>::from_data(m, &dev), r)
        });
        let out = draw(x, sampler, &u, penalty)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        out.chunks(3).map(|c| (c[0] as usize, c[1], c[2])).collect()
    }

    #[test]
    fn the_repetition_penalty_chooses_from_hf_penalised_logits_and_returns_the_model_logprob() {
        let lsm = |x: &[f32], i: usize| {
            let lse = x.iter().map(|v| v.exp()).sum::<f32>().ln();
            x[i] - lse
        };
        // positive: 2.0 / 1.25 = 1.6 falls below 1.9, so token 1
        let x = [2.0f32, 1.9, -1.0];
        let (t, lp, h) = penalised(&x, &Sampler::Greedy, 1, &[0], 1.25)[0];
        assert_eq!(t, 1);
        assert!(
            (lp - lsm(&x, 1)).abs() < 1e-6,
            "{lp}: the unpenalised log-prob"
        );
        let (_, _, h0) = draws(&x, &Sampler::Greedy, 1)[0];
        assert!(
            (h - h0).abs() < 1e-6,
            "the unpenalised entropy: {h} vs {h0}"
        );
        // penalising an unchosen token changes nothing; r = 1 is the plain draw
        assert_eq!(penalised(&x, &Sampler::Greedy, 1, &[2], 1.25)[0].0, 0);
        assert_eq!(penalised(&x, &Sampler::Greedy, 1, &[0], 1.0)[0].0, 0);
        // negative logits are multiplied: −1.0 · 1.25 = −1.25 falls below −1.1
        assert_eq!(
            penalised(&[-1.0, -1.1], &Sampler::Greedy, 1, &[0], 1.25)[0].0,
            1
        );
        assert_eq!(
            penalised(&[-1.0, -1.1], &Sampler::Greedy, 1, &[1], 1.25)[0].0,
            0
        );
        // r < 1 favours the seen token: 1.9 / 0.9 ≈ 2.11 beats 2.0
        assert_eq!(penalised(&x, &Sampler::Greedy, 1, &[1], 0.9)[0].0, 1);
        // sampling draws from softmax(penalised / T): logits [ln 4, ln 2, ln 2] with token 0
        // penalised by r = 2 are [ln 2, ln 2, ln 2], uniform at any temperature (unpenalised,
        // token 0 would take 1/2 at T = 1 and 2/3 at T = 0.5); the log-probs stay the model's
        let l = [4f32.ln(), 2f32.ln(), 2f32.ln()];
        let n = 30_000;
        for temperature in [1.0, 0.5] {
            let mut c = [0usize; 3];
            for (t, lp, _) in penalised(&l, &random(temperature, None, 1.0), n, &[0], 2.0) {
                c[t] += 1;
                let z: Vec<f32> = l.iter().map(|v| v / temperature).collect();
                assert!((lp - lsm(&z, t)).abs() < 1e-5);
            }
            for k in c {
                assert!(
                    (k as f64 / n as f64 - 1.0 / 3.0).abs() < 0.015,
                    "T {temperature}: {c:?}"
                );
            }
        }
        // top-k acts on the penalised logits: token 0 (4 → 2 after r = 2) drops out of the top 1
        let c = penalised(&[4.0, 3.0, 1.0], &random(1.0, Some(1), 1.0), 200, &[0], 2.0);
        assert!(c.iter().all(|&(t, _, _)| t == 1), "{c:?}");
    }

    fn counts(logits: &[f32], sampler: &Sampler, rows: usize) -> Vec<usize> {
        let mut c = vec![0; logits.len()];
        for (t, _, _) in draws(logits, sampler, rows) {
            c[t] += 1;
        }
        c
    }

    fn random(temperature: f32, top_k: Option<usize>, top_p: f32) -> Sampler {
        Sampler::Random {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(draws(&[0.1, 3.0, -1.0, 3.0], &Sampler::Greedy, 2)[1].0, 1);
        assert_eq!(draws(&[5.0, 3.0, 5.0], &Sampler::Greedy, 1)[0].0, 0);
        assert_eq!(draws(&[-2.0, -3.0, 7.5], &Sampler::Greedy, 1)[0].0, 2);
    }

    #[test]
    fn frequencies_follow_temperature_top_k_and_top_p() {
        // probabilities at T=1: [0.5, 0.25, 0.125, 0.125]
        let logits = [2f32.ln() * 3.0, 2f32.ln() * 2.0, 2f32.ln(), 2f32.ln()];
        let n = 40_000;
        let c = counts(&logits, &random(1.0, None, 1.0), n);
        for (got, want) in c.iter().zip([0.5, 0.25, 0.125, 0.125]) {
            let f = *got as f64 / n as f64;
            assert!((f - want).abs() < 0.01, "{c:?}");
        }
        // top_k = 2 renormalises over the two most likely: [2/3, 1/3, 0, 0]
        let c = counts(&logits, &random(1.0, Some(2), 1.0), n);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!((c[0] as f64 / n as f64 - 2.0 / 3.0).abs() < 0.01, "{c:?}");
        // top_k = 3 keeps both tokens tied at the third place (HF's `≥ k-th value`)
        let c = counts(&logits, &random(1.0, Some(3), 1.0), n);
        assert!(c[2] > 0 && c[3] > 0, "{c:?}");
        // top_p = 0.75 keeps exactly {0, 1} (0.5 + 0.25 reaches it)
        let c = counts(&logits, &random(1.0, None, 0.75), n);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!((c[0] as f64 / n as f64 - 2.0 / 3.0).abs() < 0.01, "{c:?}");
        // top_p below the top token's mass is greedy
        assert_eq!(counts(&logits, &random(1.0, None, 0.3), 1000)[0], 1000);
        // top_k then top_p: top-2 renormalised is [2/3, 1/3]; top_p 0.6 keeps token 0 only
        assert_eq!(counts(&logits, &random(1.0, Some(2), 0.6), 1000)[0], 1000);
        // temperature 0.5 squares the ratios: [16, 4, 1, 1] / 22
        let c = counts(&logits, &random(0.5, None, 1.0), n);
        assert!((c[0] as f64 / n as f64 - 16.0 / 22.0).abs() < 0.01, "{c:?}");
    }

    /// Over a vocabulary of several inverse-CDF blocks (and a padded last block), each token's
    /// frequency follows its probability, and zero-probability tokens are never drawn.
    #[test]
    fn blocked_draw_follows_the_distribution() {
        let v = 300; // blocks of 32: 9 full, one of 12
        let logits: Vec<f32> = (0..v)
            .map(|i| {
                if i % 7 == 3 {
                    -1e4
                } else {
                    ((i * 37) % 11) as f32 * 0.2
                }
            })
            .collect();
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let n = 60_000;
        let c = counts(&logits, &random(1.0, None, 1.0), n);
        for (i, (&got, &x)) in c.iter().zip(&logits).enumerate() {
            let want = (x as f64).exp() / z;
            let f = got as f64 / n as f64;
            if i % 7 == 3 {
                assert_eq!(got, 0, "token {i} has probability ~0");
            } else {
                assert!(
                    (f - want).abs() < 4.0 * (want / n as f64).sqrt() + 1e-4,
                    "token {i}: {f} vs {want}"
                );
            }
        }
    }

    #[test]
    fn logprob_is_the_tempered_log_softmax_over_the_full_vocabulary() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&x| (x as f64 / 2.0).exp()).sum();
        for (t, lp, _) in draws(&logits, &random(2.0, Some(2), 1.0), 50) {
            let want = ((logits[t] as f64 / 2.0).exp() / z).ln();
            assert!((lp as f64 - want).abs() < 1e-6, "token {t}: {lp} vs {want}");
        }
    }

    #[test]
    fn entropy_is_that_of_the_tempered_softmax() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = logits.iter().map(|&x| (x as f64 / 0.7).exp()).sum();
        let want: f64 = logits
            .iter()
            .map(|&x| (x as f64 / 0.7).exp() / z)
            .map(|p| -p * p.ln())
            .sum();
        assert!((draws(&logits, &random(0.7, None, 1.0), 1)[0].2 as f64 - want).abs() < 1e-6);
        // uniform over 4 → ln 4; one-hot-like → ≈ 0
        assert!((draws(&[0.0; 4], &Sampler::Greedy, 1)[0].2 as f64 - 4f64.ln()).abs() < 1e-6);
        assert!(draws(&[100.0, 0.0, 0.0], &Sampler::Greedy, 1)[0].2 < 1e-6);
    }
}
