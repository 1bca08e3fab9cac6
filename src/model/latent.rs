//! LaSER's latent query view (DESIGN §1): after the query prompt (which ends with `<think>`),
//! K latent steps instead of decoded reasoning. Step k's input embedding is made from step
//! k − 1's last-layer state `h` (step 0 = the prompt's last position):
//!
//! - `soft_token`: `softmax(logits(h) / τ) · E`, E = the input embedding table `[V, d]` — an
//!   expected token embedding, so the input stays in the space the model was trained on;
//! - `hidden`: `h` itself (Coconut-style continuous thought).
//!
//! The K last-layer states `[b, K, d]` are the latent trajectory; the query vector is their mean
//! (or the last one), L2-normalised by whoever scores it. No token is sampled, so one query costs
//! one prefill plus K single-position steps against the KV cache — against a prefill plus up to
//! `max_reasoning_tokens` steps for explicit reasoning. Everything here is differentiable under
//! autodiff (the training objective in `train/latent.rs` backpropagates through all K steps).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

pub use crate::config::LatentFeed;
pub use crate::config::LatentPooling;
use crate::error::{Error, Result};
use crate::model::{Decoder, KvCache};

/// The inference-time settings of the latent view (from the config's `[latent]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentOptions {
    /// K.
    pub steps: usize,
    pub feed: LatentFeed,
    /// τ of the soft token's softmax.
    pub soft_temperature: f64,
    pub pooling: LatentPooling,
}

impl LatentOptions {
    /// The inference-time part of `[latent]` (what a latent query vector needs).
    pub fn from_section(l: &crate::config::LatentSection) -> Self {
        Self {
            steps: l.steps,
            feed: l.feed,
            soft_temperature: l.soft_temperature,
            pooling: l.pooling,
        }
    }
}

/// The K latent states `[b, K, d]` after each prompt (`prompts` left-padded with `pad`; each
/// must be non-empty). Row i's latent step k sits at RoPE position `len(prompt_i) + k`.
pub fn latent_states<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    pad: u32,
    opts: &LatentOptions,
) -> Result<Tensor<B, 3>> {
    let n = prompts.len();
    let device = model.device();
    let d = model.config().hidden_size;
    if n == 0 {
        return Ok(Tensor::zeros([0, opts.steps, d], &device));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Runtime(format!("latent view: prompt {i} is empty")));
    }
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = KvCache::new(model, n, p + opts.steps);
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let hidden = model.prefill(&rows, pad, &mut cache)?; // [n, p, d]
    let int2 =
        |v: Vec<i64>, s: usize| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [n, s]), &device);
    let mut last = hidden.slice([0..n, p - 1..p, 0..d]); // [n, 1, d]
    let table = match opts.feed {
        LatentFeed::SoftToken => Some(model.embedding_table()), // [V, d]
        LatentFeed::Hidden => None,
    };
    let real = vec![false; n];
    let mut states = Vec::with_capacity(opts.steps);
    for k in 0..opts.steps {
        let x = match &table {
            Some(e) => {
                let probs = softmax(model.logits(last) / opts.soft_temperature, 2); // [n, 1, V]
                let v = probs.dims()[2];
                probs.reshape([n, v]).matmul(e.clone()).reshape([n, 1, d])
            }
            None => last,
        };
        let pos: Vec<i64> = prompts.iter().map(|q| (q.len() + k) as i64).collect();
        last = model.forward_cached_embeds(x, int2(pos, 1), &real, &mut cache)?; // [n, 1, d]
        states.push(last.clone());
    }
    Ok(Tensor::cat(states, 1))
}

/// The query vector `[b, d]` (not normalised) from latent states `[b, K, d]`.
pub fn pool<B: Backend>(states: Tensor<B, 3>, pooling: LatentPooling) -> Tensor<B, 2> {
    let [b, k, d] = states.dims();
    match pooling {
        LatentPooling::Mean => states.mean_dim(1).reshape([b, d]),
        LatentPooling::Last => states.slice([0..b, k - 1..k, 0..d]).reshape([b, d]),
    }
}

/// Latent query vectors `[n, d]` (not normalised), `batch_size` prompts at a time, in input order.
pub fn latent_vectors<B: Backend>(
    model: &Decoder<B>,
    prompts: &[Vec<u32>],
    pad: u32,
    opts: &LatentOptions,
    batch_size: usize,
) -> Result<Tensor<B, 2>> {
    let d = model.config().hidden_size;
    if prompts.is_empty() {
        return Ok(Tensor::zeros([0, d], &model.device()));
    }
    let parts = prompts
        .chunks(batch_size.max(1))
        .map(|chunk| Ok(pool(latent_states(model, chunk, pad, opts)?, opts.pooling)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(parts, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DecoderConfig;
    use burn::backend::Flex;

    type B = Flex;

    fn tiny() -> Decoder<B> {
        DecoderConfig::tiny(40).init::<B>(&Default::default())
    }

    fn opts(feed: LatentFeed) -> LatentOptions {
        LatentOptions {
            steps: 3,
            feed,
            soft_temperature: 0.7,
            pooling: LatentPooling::Mean,
        }
    }

    /// The cached latent loop equals running the whole sequence (prompt + the fed embeddings)
    /// through the uncached forward, one step at a time: positions, masks and the soft token
    /// are what the module doc says.
    #[test]
    fn latent_steps_match_a_full_recomputation() {
        let model = tiny();
        let device = Default::default();
        let prompt: Vec<u32> = vec![3, 7, 11, 2, 9];
        let d = model.config().hidden_size;
        for feed in [LatentFeed::SoftToken, LatentFeed::Hidden] {
            let o = opts(feed);
            let got = latent_states(&model, &[prompt.clone()], 0, &o).unwrap(); // [1, 3, 16]
            // reference: grow the embedding sequence and run the plain causal forward each time
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(
                    prompt.iter().map(|&t| t as i64).collect(),
                    [1, prompt.len()],
                ),
                &device,
            );
            let mut x = model.embed(ids);
            let full = |x: Tensor<B, 3>| {
                let s = x.dims()[1];
                let mut cache = KvCache::new(&model, 1, s);
                let pos = Tensor::<B, 1, Int>::arange(0..s as i64, &device).reshape([1, s]);
                model
                    .forward_cached_embeds(x, pos, &vec![false; s], &mut cache)
                    .unwrap()
            };
            for _ in 0..o.steps {
                let h = full(x.clone());
                let s = h.dims()[1];
                let last = h.slice([0..1, s - 1..s, 0..d]);
                let next = match feed {
                    LatentFeed::SoftToken => {
                        let p = softmax(model.logits(last) / 0.7, 2).reshape([1, 40]);
                        p.matmul(model.embedding_table()).reshape([1, 1, d])
                    }
                    LatentFeed::Hidden => last,
                };
                x = Tensor::cat(vec![x, next], 1);
            }
            // latent state k = the output at the position of the k-th fed input
            let h = full(x);
            let s = h.dims()[1];
            let want = h.slice([0..1, s - o.steps..s, 0..d]);
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{feed:?}: max |Δ| = {diff}");
        }
    }

    /// Left padding changes nothing: a short prompt batched with a long one gets the same
    /// latent vector as alone.
    #[test]
    fn batching_with_left_padding_is_exact() {
        let model = tiny();
        let o = opts(LatentFeed::SoftToken);
        let a: Vec<u32> = vec![5, 6];
        let b: Vec<u32> = vec![1, 2, 3, 4, 8, 9, 10];
        let alone = latent_vectors(&model, &[a.clone()], 0, &o, 1).unwrap();
        let both = latent_vectors(&model, &[b, a], 0, &o, 2).unwrap();
        let d = model.config().hidden_size;
        let diff = (both.slice([1..2, 0..d]) - alone).abs().max().into_scalar();
        assert!(diff < 1e-4, "max |Δ| = {diff}");
    }

    #[test]
    fn pooling_mean_and_last() {
        let device = Default::default();
        let s = Tensor::<B, 3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 3, 2]),
            &device,
        );
        let mean: Vec<f32> = pool(s.clone(), LatentPooling::Mean)
            .into_data()
            .to_vec()
            .unwrap();
        let last: Vec<f32> = pool(s, LatentPooling::Last).into_data().to_vec().unwrap();
        assert_eq!(mean, vec![3.0, 4.0]);
        assert_eq!(last, vec![5.0, 6.0]);
    }
}
