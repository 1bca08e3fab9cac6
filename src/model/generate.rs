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
//! Sampling runs on the host from each step's logits (one `[n, V]` transfer per step): the
//! temperature → top-k → top-p order of Hugging Face's `generate`, an inverse-CDF draw from a
//! per-row ChaCha stream. The log-prob returned for each generated token is
//! `log_softmax(logits / temperature)[token]` over the **full** vocabulary (before top-k/top-p
//! truncation) — the same quantity the GRPO loss recomputes, as TRL does. For greedy decoding the
//! temperature is taken as 1.

use std::collections::VecDeque;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
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
    /// Row `i` draws from ChaCha8 stream `i` of this seed.
    pub seed: u64,
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

/// Index of the largest value (first on ties).
fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// `log_softmax(logits / t)[token]` and the entropy `−Σ p log p` of `softmax(logits / t)`, in
/// f64: with `z = logits / t`, `m = max z`, `Z = Σ e^(z−m)`, `lse = m + ln Z` and
/// `H = lse − Σ e^(z−m)·z / Z`.
fn logprob_entropy(logits: &[f32], t: f32, token: usize) -> (f32, f32) {
    let t = t as f64;
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    let (mut z, mut zx) = (0.0f64, 0.0f64);
    for &x in logits {
        let v = x as f64 / t;
        let e = (v - m).exp();
        z += e;
        zx += e * v;
    }
    let lse = z.ln() + m;
    (
        (logits[token] as f64 / t - lse) as f32,
        (lse - zx / z) as f32,
    )
}

/// Draws a token from one row of logits `[V]`.
pub fn sample_token(logits: &[f32], sampler: &Sampler, rng: &mut impl Rng) -> usize {
    let (temperature, top_k, top_p) = match sampler {
        Sampler::Greedy => return argmax(logits),
        Sampler::Random {
            temperature,
            top_k,
            top_p,
        } => (*temperature as f64, *top_k, *top_p as f64),
    };
    // Candidates: the top k by logit (all without top_k). Only nucleus sampling needs them
    // sorted (by logit, descending; stable: lower id first on ties); sorting the whole
    // vocabulary for every draw cost ~1 s per 256 draws on a 49k vocabulary.
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    if let Some(k) = top_k.filter(|&k| k < logits.len()) {
        idx.select_nth_unstable_by(k - 1, by_logit);
        idx.truncate(k);
    }
    if top_p < 1.0 {
        idx.sort_by(|a, b| by_logit(a, b).then(a.cmp(b)));
    }
    let m = idx
        .iter()
        .fold(f64::NEG_INFINITY, |m, &i| m.max(logits[i] as f64))
        / temperature;
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (logits[i] as f64 / temperature - m).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= top_p {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (n, p) in probs.iter().enumerate() {
        if u < *p {
            return idx[n];
        }
        u -= p;
    }
    idx[probs.len() - 1]
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
    let temperature = opts.sampler.temperature();

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
        rng.set_stream(i as u64);
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
            let logits = logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| Error::Runtime(format!("cannot read logits: {e:?}")))?;
            for &i in &drawing {
                let row_logits = &logits[i * vocab..(i + 1) * vocab];
                let row = &mut rows[i];
                let t = sample_token(row_logits, &opts.sampler, &mut row.rng);
                row.out.tokens.push(t as u32);
                let (lp, h) = logprob_entropy(row_logits, temperature, t);
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
    use super::*;

    fn counts(logits: &[f32], sampler: &Sampler, draws: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut c = vec![0; logits.len()];
        for _ in 0..draws {
            c[sample_token(logits, sampler, &mut rng)] += 1;
        }
        c
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            sample_token(&[0.1, 3.0, 3.0], &Sampler::Greedy, &mut rng),
            1
        );
    }

    #[test]
    fn frequencies_follow_temperature_top_k_and_top_p() {
        // probabilities at T=1: [0.5, 0.25, 0.125, 0.125]
        let logits = [2f32.ln() * 3.0, 2f32.ln() * 2.0, 2f32.ln(), 2f32.ln()];
        let n = 40_000;
        let free = Sampler::Random {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
        };
        let c = counts(&logits, &free, n);
        for (got, want) in c.iter().zip([0.5, 0.25, 0.125, 0.125]) {
            let f = *got as f64 / n as f64;
            assert!((f - want).abs() < 0.01, "{c:?}");
        }
        // top_k = 2 renormalises over the two most likely: [2/3, 1/3, 0, 0]
        let k2 = Sampler::Random {
            temperature: 1.0,
            top_k: Some(2),
            top_p: 1.0,
        };
        let c = counts(&logits, &k2, n);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        assert!((c[0] as f64 / n as f64 - 2.0 / 3.0).abs() < 0.01, "{c:?}");
        // top_p = 0.75 keeps exactly {0, 1} (0.5 + 0.25 reaches it)
        let p = Sampler::Random {
            temperature: 1.0,
            top_k: None,
            top_p: 0.75,
        };
        let c = counts(&logits, &p, n);
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        // top_p below the top token's mass is greedy
        let p = Sampler::Random {
            temperature: 1.0,
            top_k: None,
            top_p: 0.3,
        };
        assert_eq!(counts(&logits, &p, 1000)[0], 1000);
        // temperature 0.5 squares the ratios: [16, 4, 1, 1] / 22
        let cold = Sampler::Random {
            temperature: 0.5,
            top_k: None,
            top_p: 1.0,
        };
        let c = counts(&logits, &cold, n);
        assert!((c[0] as f64 / n as f64 - 16.0 / 22.0).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn logprob_is_the_tempered_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&x| (x as f64 / 2.0).exp()).sum();
        let want = (1.0f64 / 2.0).exp() / z;
        assert!((logprob_entropy(&logits, 2.0, 0).0 as f64 - want.ln()).abs() < 1e-6);
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
        assert!((logprob_entropy(&logits, 0.7, 2).1 as f64 - want).abs() < 1e-6);
        // uniform over 4 → ln 4; one-hot-like → ≈ 0
        assert!((logprob_entropy(&[0.0; 4], 1.0, 0).1 as f64 - 4f64.ln()).abs() < 1e-6);
        assert!(logprob_entropy(&[100.0, 0.0, 0.0], 1.0, 0).1 < 1e-30);
    }
}
