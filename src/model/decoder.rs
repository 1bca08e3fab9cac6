//! The decoder: Llama / Qwen2 / Qwen3 in burn, generic over `B: Backend`.
//!
//! Field names mirror Hugging Face's module tree (`model.layers.N.self_attn.q_proj`, …), so HF
//! checkpoints map onto it with burn-store's PyTorch adapter alone (Linear weights transposed,
//! RMSNorm `weight` ↔ `gamma`); see `weights.rs`.
//!
//! Shapes: `b` batch, `s` query positions in this call, `t` key positions (cache + s), `d` hidden,
//! `h` query heads, `g` key/value heads, `r = h / g`, `k` head dim, `V` vocabulary.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};

use super::config::{DecoderConfig, Family};
use super::lora::{Lora, Target, TokenRows};
use super::ops::{self, AttnMask, Rope, linear as proj, linear_rows as rows, rms_norm as norm};

/// Grouped-query self-attention with HF (rotate-half) RoPE and optional per-head q/k RMSNorm.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Qwen3 only: RMSNorm over each query head before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    /// Qwen3 only: RMSNorm over each key head before RoPE.
    pub k_norm: Option<RmsNorm<B>>,
    /// LoRA adapters on the projections (`lora.rs`; absent in a plain model).
    pub q_lora: Option<Lora<B>>,
    pub k_lora: Option<Lora<B>>,
    pub v_lora: Option<Lora<B>>,
    pub o_lora: Option<Lora<B>>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    /// LoRA adapters on the projections (`lora.rs`; absent in a plain model).
    pub gate_lora: Option<Lora<B>>,
    pub up_lora: Option<Lora<B>>,
    pub down_lora: Option<Lora<B>>,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

/// Embeddings, blocks and the final norm (HF's `model.` prefix).
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<Layer<B>>,
    pub norm: RmsNorm<B>,
}

/// A causal LM: the backbone plus an LM head (absent when tied to the embeddings).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub model: Backbone<B>,
    pub lm_head: Option<Linear<B>>,
    /// Trainable rows of the vocabulary beside LoRA adapters (`lora.rs`; absent in a plain model).
    pub token_rows: Option<TokenRows<B>>,
    #[module(skip)]
    config: DecoderConfig,
    /// RoPE inverse frequencies `[k / 2]` (scaling applied), kept as plain numbers.
    #[module(skip)]
    inv_freq: Vec<f32>,
    /// Per-layer activation checkpointing (`train.gradient_checkpointing`): set, a training
    /// forward keeps only each layer's input and [`Decoder::backward`] recomputes the layers.
    #[module(skip)]
    pub recompute: Option<super::recompute::Recompute>,
}

/// [`DecoderConfig::init_seeded`]'s second pass: each parameter init drew from
/// normal(0, `initializer_range`) (the weights, biases and embeddings) drawn again from `rng`;
/// those init set to ones (the norms' scales) kept.
struct Redraw {
    rng: rand_flex::rngs::StdRng,
    normal: Distribution,
}

impl<B: Backend> burn::module::ModuleMapper<B> for Redraw {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let values = t.to_data().to_vec::<f32>().unwrap_or_default();
            if values.iter().all(|v| *v == 1.0) {
                return t;
            }
            let data = TensorData::random::<f32, _, _>(t.shape(), self.normal, &mut self.rng);
            Tensor::from_data(data, &t.device())
        })
    }
}

fn linear<B: Backend>(
    c: &DecoderConfig,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: c.initializer_range,
        })
        .init(device)
}

fn rms<B: Backend>(d: usize, eps: f64, device: &B::Device) -> RmsNorm<B> {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

impl DecoderConfig {
    /// A decoder initialised from `seed` the same way on every backend and in every stage: drawn
    /// on the CPU backend (burn's random streams differ between backends), every parameter at
    /// once in module order (burn initialises parameters lazily, at first use, so a second model
    /// made before the first one's use — stage 3's reference — used to shift the draws), then
    /// moved to `device`. A preset starts from the same weights on CPU, CUDA and wgpu.
    pub fn init_seeded<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> crate::error::Result<Decoder<B>> {
        use burn::backend::Flex;
        use burn::module::Module;
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        use rand_flex::SeedableRng;
        let cpu = Default::default();
        // burn-flex's random stream is one per process, so a draw on another thread (another
        // model, a test's random tensor) could land between this model's draws. The shapes
        // come from init; every random parameter is then drawn again, in module order, from a
        // private copy of the generator burn-flex seeds (rand 0.10's StdRng): the same values
        // as seeding burn-flex and drawing alone, whatever other threads draw. burn-flex is still
        // seeded: Redraw reads each parameter (to keep the norms' ones), which draws it from the
        // shared stream as before, so that stream is left where the old code left it.
        Flex::seed(&cpu, seed);
        let mut redraw = Redraw {
            rng: rand_flex::rngs::StdRng::seed_from_u64(seed),
            normal: Distribution::Normal(0.0, self.initializer_range),
        };
        let drawn = self.init::<Flex>(&cpu).map(&mut redraw);
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        // burn's backend-independent record format, in memory
        let moved = |e: burn::record::RecorderError| {
            crate::error::Error::Runtime(format!(
                "cannot move the initial weights to the device: {e}"
            ))
        };
        let bytes = Recorder::<Flex>::record(&recorder, drawn.into_record(), ()).map_err(moved)?;
        let record = Recorder::<B>::load(&recorder, bytes, device).map_err(moved)?;
        Ok(self.init::<B>(device).load_record(record))
    }

    /// A freshly initialised decoder (normal(0, `initializer_range`) weights, unit norms).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Decoder<B> {
        let (d, k) = (self.hidden_size, self.head_dim);
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                self_attn: Attention {
                    q_proj: linear(self, d, self.num_attention_heads * k, self.qkv_bias, device),
                    k_proj: linear(self, d, self.num_key_value_heads * k, self.qkv_bias, device),
                    v_proj: linear(self, d, self.num_key_value_heads * k, self.qkv_bias, device),
                    o_proj: linear(self, self.num_attention_heads * k, d, self.o_bias, device),
                    q_norm: (self.family == Family::Qwen3)
                        .then(|| rms(k, self.rms_norm_eps, device)),
                    k_norm: (self.family == Family::Qwen3)
                        .then(|| rms(k, self.rms_norm_eps, device)),
                    q_lora: None,
                    k_lora: None,
                    v_lora: None,
                    o_lora: None,
                    n_heads: self.num_attention_heads,
                    n_kv_heads: self.num_key_value_heads,
                    head_dim: k,
                },
                mlp: Mlp {
                    gate_proj: linear(self, d, self.intermediate_size, self.mlp_bias, device),
                    up_proj: linear(self, d, self.intermediate_size, self.mlp_bias, device),
                    down_proj: linear(self, self.intermediate_size, d, self.mlp_bias, device),
                    gate_lora: None,
                    up_lora: None,
                    down_lora: None,
                },
                input_layernorm: rms(d, self.rms_norm_eps, device),
                post_attention_layernorm: rms(d, self.rms_norm_eps, device),
            })
            .collect();
        Decoder {
            model: Backbone {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, d)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: self.initializer_range,
                    })
                    .init(device),
                layers,
                norm: rms(d, self.rms_norm_eps, device),
            },
            lm_head: (!self.tie_word_embeddings)
                .then(|| linear(self, d, self.vocab_size, false, device)),
            token_rows: None,
            recompute: None,
            inv_freq: self.inv_freq().into_iter().map(|f| f as f32).collect(),
            config: self.clone(),
        }
    }
}

/// Key/value buffers of one layer `[b, g, capacity, k]`.
#[derive(Debug, Clone)]
pub(super) struct LayerKv<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

/// Key/value cache for incremental decoding: per layer, buffers of `capacity` positions that
/// the decode loop fills left to right (all rows share the column index; left padding is masked).
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKv<B>>,
    /// Columns filled so far.
    len: usize,
    capacity: usize,
    batch: usize,
    /// `[batch * capacity]`, true where a column holds padding (never attended to by real tokens).
    pad: Vec<bool>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` rows of at most `capacity` tokens each.
    pub fn new(model: &Decoder<B>, batch: usize, capacity: usize) -> Self {
        let c = model.config();
        let device = model.device();
        let shape = [batch, c.num_key_value_heads, capacity, c.head_dim];
        let layers = (0..c.num_hidden_layers)
            .map(|_| LayerKv {
                k: Tensor::zeros(shape, &device),
                v: Tensor::zeros(shape, &device),
            })
            .collect();
        KvCache {
            layers,
            len: 0,
            capacity,
            batch,
            pad: vec![false; batch * capacity],
        }
    }

    /// Columns filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A cache whose row `i` is a copy of this cache's row `rows[i]` (keys, values, padding
    /// flags): one prefill of a prompt shared by several rows, e.g. a query's G rollouts.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let device = self
            .layers
            .first()
            .map(|l| l.k.device())
            .unwrap_or_default();
        let idx = Tensor::<B, 1, Int>::from_data(
            burn::tensor::TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        let layers = self
            .layers
            .iter()
            .map(|l| LayerKv {
                k: l.k.clone().select(0, idx.clone()),
                v: l.v.clone().select(0, idx.clone()),
            })
            .collect();
        let cap = self.capacity;
        let pad = rows
            .iter()
            .flat_map(|&r| self.pad[r * cap..(r + 1) * cap].iter().copied())
            .collect();
        KvCache {
            layers,
            len: self.len,
            capacity: cap,
            batch: rows.len(),
            pad,
        }
    }
}

impl<B: Backend> Layer<B> {
    /// One decoder block: `x + attn(norm(x))`, then `+ mlp(norm(·))`; with `kv` the attention
    /// reads and extends that layer's cache.
    pub(super) fn block(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
        kv: Option<(LayerKv<B>, usize)>,
    ) -> (Tensor<B, 3>, Option<LayerKv<B>>) {
        let (a, kv) =
            self.self_attn
                .forward(norm(&self.input_layernorm, x.clone()), rope, mask, kv);
        let x_mid = x + a;
        let out = x_mid.clone()
            + self
                .mlp
                .forward(norm(&self.post_attention_layernorm, x_mid));
        (out, kv)
    }
}

impl<B: Backend> Attention<B> {
    /// `x` `[b, s, d]`, `rope` the forward's RoPE factors, `mask` `[b, g, r, s, t]` (true = masked) → `[b, s, d]`.
    ///
    /// With `cache = Some((kv, start))` the new keys/values are written to columns
    /// `start..start + s` of the layer's buffers and attention reads columns `0..start + s`
    /// (so `t = start + s`); without it `t = s`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &AttnMask<B>,
        cache: Option<(LayerKv<B>, usize)>,
    ) -> (Tensor<B, 3>, Option<LayerKv<B>>) {
        let [b, s, _] = x.dims();
        let (h, g, k) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // per-head norm and RoPE on the contiguous [b, s, n, k] layout, then [b, n, s, k]
        let heads = |t: Tensor<B, 3>, n: usize, head_norm: &Option<RmsNorm<B>>| {
            let t = t.reshape([b, s, n, k]);
            match head_norm {
                Some(nrm) => norm(nrm, t),
                None => t,
            }
        };
        let q = heads(proj(&self.q_proj, &self.q_lora, x.clone()), h, &self.q_norm);
        let q = rope.queries(q);
        let key = heads(proj(&self.k_proj, &self.k_lora, x.clone()), g, &self.k_norm);
        let key = rope.keys(key);
        let v = heads(proj(&self.v_proj, &self.v_lora, x), g, &None).swap_dims(1, 2);
        let (key, v, kept) = match cache {
            Some((kv, start)) => {
                let end = start + s;
                // The buffers are owned here (moved out of the cache), so slice_assign can
                // write in place instead of copying the whole buffer.
                let kb = kv.k.slice_assign([0..b, 0..g, start..end, 0..k], key);
                let vb = kv.v.slice_assign([0..b, 0..g, start..end, 0..k], v);
                let key = kb.clone().slice([0..b, 0..g, 0..end, 0..k]);
                let v = vb.clone().slice([0..b, 0..g, 0..end, 0..k]);
                (key, v, Some(LayerKv { k: kb, v: vb }))
            }
            None => (key, v, None),
        };
        let o = ops::attention(q, key, v, mask);
        (proj(&self.o_proj, &self.o_lora, o), kept)
    }
}

impl<B: Backend> Mlp<B> {
    /// `[b, s, d]` → `[b, s, d]`, as 2-D matmuls over the `b·s` rows (see [`proj`]).
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let x = x.reshape([b * s, d]);
        let gate = rows(&self.gate_proj, &self.gate_lora, x.clone());
        let up = rows(&self.up_proj, &self.up_lora, x);
        rows(&self.down_proj, &self.down_lora, ops::swiglu(gate, up)).reshape([b, s, d])
    }
}

impl<B: Backend> Layer<B> {
    /// The linear layer a LoRA target names.
    pub fn linear(&self, t: Target) -> &Linear<B> {
        match t {
            Target::Q => &self.self_attn.q_proj,
            Target::K => &self.self_attn.k_proj,
            Target::V => &self.self_attn.v_proj,
            Target::O => &self.self_attn.o_proj,
            Target::Gate => &self.mlp.gate_proj,
            Target::Up => &self.mlp.up_proj,
            Target::Down => &self.mlp.down_proj,
        }
    }

    pub fn linear_mut(&mut self, t: Target) -> &mut Linear<B> {
        match t {
            Target::Q => &mut self.self_attn.q_proj,
            Target::K => &mut self.self_attn.k_proj,
            Target::V => &mut self.self_attn.v_proj,
            Target::O => &mut self.self_attn.o_proj,
            Target::Gate => &mut self.mlp.gate_proj,
            Target::Up => &mut self.mlp.up_proj,
            Target::Down => &mut self.mlp.down_proj,
        }
    }

    /// The adapter on a target, if any.
    pub fn lora(&self, t: Target) -> &Option<Lora<B>> {
        match t {
            Target::Q => &self.self_attn.q_lora,
            Target::K => &self.self_attn.k_lora,
            Target::V => &self.self_attn.v_lora,
            Target::O => &self.self_attn.o_lora,
            Target::Gate => &self.mlp.gate_lora,
            Target::Up => &self.mlp.up_lora,
            Target::Down => &self.mlp.down_lora,
        }
    }

    pub fn lora_mut(&mut self, t: Target) -> &mut Option<Lora<B>> {
        match t {
            Target::Q => &mut self.self_attn.q_lora,
            Target::K => &mut self.self_attn.k_lora,
            Target::V => &mut self.self_attn.v_lora,
            Target::O => &mut self.self_attn.o_lora,
            Target::Gate => &mut self.mlp.gate_lora,
            Target::Up => &mut self.mlp.up_lora,
            Target::Down => &mut self.mlp.down_lora,
        }
    }
}

impl<B: Backend> Decoder<B> {
    /// The decoder blocks, for attaching or merging adapters (`lora.rs`).
    pub(super) fn layers_mut(&mut self) -> &mut [Layer<B>] {
        &mut self.model.layers
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.weight.val().device()
    }

    /// `cos`, `sin` `[b, s, 1, k]` for absolute positions `[b, s]`.
    fn rope(&self, positions: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, s] = positions.dims();
        let half = self.inv_freq.len();
        let inv = Tensor::<B, 1>::from_floats(self.inv_freq.as_slice(), &positions.device())
            .reshape([1, 1, half]);
        let angles = positions.float().reshape([b, s, 1]) * inv; // [b, s, k/2]
        let emb = Tensor::cat(vec![angles.clone(), angles], 2).unsqueeze_dim::<4>(2); // [b, s, 1, k]
        (emb.clone().cos(), emb.sin())
    }

    /// Last-layer hidden states (after the final norm) `[b, s, d]`.
    ///
    /// `ids` `[b, s]`; `positions` `[b, s]` absolute RoPE positions (left-padded rows start later);
    /// `key_padding` `[b, s]`, true where a token is padding: no real token attends to it.
    /// Attention is causal over the sequence index.
    pub fn hidden_states(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        key_padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let (cos, sin) = self.rope(positions);
        // causal: key index j > query index i is masked
        let qi = Tensor::<B, 1, Int>::arange(0..s as i64, &device)
            .reshape([s, 1])
            .expand([s, s]);
        let kj = Tensor::<B, 1, Int>::arange(0..s as i64, &device)
            .reshape([1, s])
            .expand([s, s]);
        let causal = kj
            .clone()
            .greater(qi.clone())
            .reshape([1, s, s])
            .expand([b, s, s]);
        let mask = match key_padding {
            // A padded key is masked, except on the diagonal: a padding query then still sees
            // itself, so no row is fully masked (no NaN) and real rows never see padding.
            Some(pad) => {
                let off_diag = kj.not_equal(qi).reshape([1, s, s]).expand([b, s, s]);
                let pad = pad.reshape([b, 1, s]).expand([b, s, s]).bool_and(off_diag);
                causal.bool_or(pad)
            }
            None => causal,
        };
        let mask = mask.reshape([b, 1, 1, s, s]);
        if let Some(rec) = &self.recompute
            && super::recompute::tracks_grad::<B>(&device)
        {
            return self.layers_recorded(ids, cos, sin, mask, rec);
        }
        self.layers(self.embed(ids), cos, sin, mask, None)
    }

    /// [`Self::layers`] checkpointed (`model::recompute`): the blocks run untracked, each one's
    /// input kept; the last output becomes a leaf the (tracked) final norm reads, and
    /// [`Decoder::backward`] replays the blocks and the embedding lookup of `ids`.
    fn layers_recorded(
        &self,
        ids: Tensor<B, 2, Int>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        mask: Tensor<B, 5, Bool>,
        rec: &super::recompute::Recompute,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let frozen = self.clone().no_grad();
        let mut x = frozen.embed(ids.clone());
        let rope = Rope::new(cos, sin, c.num_attention_heads, c.num_key_value_heads);
        let mask = AttnMask::new(mask, &x);
        let mut inputs = Vec::with_capacity(frozen.model.layers.len());
        for layer in &frozen.model.layers {
            inputs.push(x.clone());
            x = layer.block(x, &rope, &mask, None).0;
        }
        let leaf = x.require_grad();
        rec.record(super::recompute::Tape {
            rope,
            mask,
            ids,
            inputs,
            leaf: leaf.clone(),
        });
        norm(&self.model.norm, leaf)
    }

    /// Input embeddings `[b, s, d]` of token ids `[b, s]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.model.embed_tokens.forward(ids.clone());
        match &self.token_rows {
            Some(rows) => rows.embed(ids, x),
            None => x,
        }
    }

    /// The input embedding table E `[V, d]` (with trainable token rows: a table with their rows
    /// written in, differentiable in them).
    pub fn embedding_table(&self) -> Tensor<B, 2> {
        let w = self.model.embed_tokens.weight.val();
        match &self.token_rows {
            Some(rows) => {
                let idx = rows.index(&w.device());
                let delta = rows.embed.val() - w.clone().select(0, idx.clone());
                w.select_assign(0, idx, delta, IndexingUpdateOp::Add)
            }
            None => w,
        }
    }

    /// With trainable token rows that change the LM head: the token indices `[n]` and the change
    /// of their head rows, `[n, d]` (new − base; differentiable in the new rows).
    fn head_row_delta(&self) -> Option<(Tensor<B, 1, Int>, Tensor<B, 2>)> {
        let rows = self.token_rows.as_ref()?;
        let values = match (&self.lm_head, &rows.head) {
            (None, _) => rows.embed.val(), // tied: the head is the embedding table
            (Some(_), Some(h)) => h.val(),
            (Some(_), None) => return None, // untied, only the input rows train
        };
        let idx = rows.index(&values.device());
        let base = self.base_head_rows().select(0, idx.clone()).detach();
        Some((idx, values - base))
    }

    /// Blocks → final norm over input embeddings `x` `[b, s, d]`. With a cache, each layer's keys/values are written at
    /// column `cache.len` onwards and the cache length advances by `s`.
    fn layers(
        &self,
        mut x: Tensor<B, 3>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
        mask: Tensor<B, 5, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let s = x.dims()[1];
        let mut kvs = cache
            .as_mut()
            .map(|c| std::mem::take(&mut c.layers).into_iter());
        let start = cache.as_ref().map_or(0, |c| c.len);
        let mut kept = Vec::new();
        let c = &self.config;
        let rope = Rope::new(cos, sin, c.num_attention_heads, c.num_key_value_heads);
        let mask = AttnMask::new(mask, &x);
        for layer in &self.model.layers {
            let kv = kvs.as_mut().and_then(|it| it.next()).map(|kv| (kv, start));
            let (out, kv) = layer.block(x, &rope, &mask, kv);
            kept.extend(kv);
            x = out;
        }
        if let Some(c) = cache {
            c.layers = kept;
            c.len += s;
        }
        norm(&self.model.norm, x)
    }

    /// Incremental forward against a KV cache: `ids`, `positions` `[b, s]` are the next `s`
    /// tokens of every row (RoPE positions per row), `pad` `[b * s]` marks which of them are
    /// padding. Returns last-layer hidden states `[b, s, d]` (after the final norm). Attention
    /// is causal over cache columns; padding columns are seen by no other token.
    ///
    /// Errors when the cache would overflow or the batch does not match.
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        pad: &[bool],
        cache: &mut KvCache<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.forward_cached_embeds(self.embed(ids), positions, pad, cache)
    }

    /// Prefills an empty `cache` with `prompts` (each non-empty), left-padded with `pad` to the
    /// longest, positions counting each prompt's real tokens from 0. Returns the hidden states
    /// `[n, p, d]`; every row's last prompt token is at column `p − 1`.
    pub fn prefill(
        &self,
        prompts: &[&[u32]],
        pad: u32,
        cache: &mut KvCache<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let n = prompts.len();
        let p = prompts.iter().map(|q| q.len()).max().unwrap_or(0);
        let (mut ids, mut positions, mut flags) = (
            Vec::with_capacity(n * p),
            Vec::with_capacity(n * p),
            Vec::with_capacity(n * p),
        );
        for prompt in prompts {
            let lead = p - prompt.len();
            ids.extend(std::iter::repeat_n(pad as i64, lead));
            ids.extend(prompt.iter().map(|&t| t as i64));
            positions.extend(std::iter::repeat_n(0i64, lead));
            positions.extend(0..prompt.len() as i64);
            flags.extend(std::iter::repeat_n(true, lead));
            flags.extend(std::iter::repeat_n(false, prompt.len()));
        }
        let device = self.device();
        let int2 = |v: Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(burn::tensor::TensorData::new(v, [n, p]), &device)
        };
        self.forward_cached(int2(ids), int2(positions), &flags, cache)
    }

    /// [`Self::forward_cached`] from input embeddings `x` `[b, s, d]` instead of token ids (soft
    /// tokens or fed-back hidden states: the latent view). Differentiable under autodiff.
    pub fn forward_cached_embeds(
        &self,
        x: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        pad: &[bool],
        cache: &mut KvCache<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let [b, s, _] = x.dims();
        let start = cache.len;
        let t = start + s;
        if b != cache.batch || t > cache.capacity || pad.len() != b * s {
            return Err(crate::Error::Runtime(format!(
                "KV cache misuse: batch {b} (cache {}), {t} positions (capacity {}), pad flags {} (need {})",
                cache.batch,
                cache.capacity,
                pad.len(),
                b * s
            )));
        }
        for row in 0..b {
            for i in 0..s {
                cache.pad[row * cache.capacity + start + i] = pad[row * s + i];
            }
        }
        // mask[row, i, j]: key column j is hidden from query i (column start + i) when it is in
        // the future, or when it is padding (except a token's own column, so no row is empty).
        let mut mask = Vec::with_capacity(b * s * t);
        for row in 0..b {
            let row_pad = &cache.pad[row * cache.capacity..row * cache.capacity + t];
            for i in 0..s {
                let me = start + i;
                mask.extend((0..t).map(|j| j > me || (row_pad[j] && j != me)));
            }
        }
        let device = x.device();
        let mask = Tensor::<B, 1, Bool>::from_data(
            burn::tensor::TensorData::new(mask, [b * s * t]),
            &device,
        )
        .reshape([b, 1, 1, s, t]);
        let (cos, sin) = self.rope(positions);
        Ok(self.layers(x, cos, sin, mask, Some(cache)))
    }

    /// Logits `[b, s, V]` from hidden states `[b, s, d]` (tied head: the embedding matrix).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = hidden.dims();
        let logits = match &self.lm_head {
            Some(head) => proj(head, &None, hidden.clone()),
            None => {
                let w = self.model.embed_tokens.weight.val(); // [V, d]
                let v = w.dims()[0];
                hidden
                    .clone()
                    .reshape([b * s, d])
                    .matmul(w.transpose())
                    .reshape([b, s, v])
            }
        };
        match self.head_row_delta() {
            // trainable token rows: their n columns corrected, h · (new − base)ᵀ added
            Some((idx, delta)) => {
                let v = logits.dims()[2];
                let fix = hidden.reshape([b * s, d]).matmul(delta.transpose()); // [b·s, n]
                logits
                    .reshape([b * s, v])
                    .select_assign(1, idx, fix, IndexingUpdateOp::Add)
                    .reshape([b, s, v])
            }
            None => logits,
        }
    }

    /// Log-probabilities of `targets` `[b, s]` under the logits of `hidden` `[b, s, d]` → `[b, s]`:
    /// `logit[target] − logsumexp(logits)`, without materialising all `[b, s, V]` logits at once
    /// (`chunk` positions at a time on the generic path; see [`ops::token_logprobs`]).
    pub fn token_logprobs(
        &self,
        hidden: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        chunk: usize,
    ) -> Tensor<B, 2> {
        self.token_logprobs_hits(hidden, targets, chunk).0
    }

    /// [`Self::token_logprobs`] plus `[b, s]` flags: whether the target is the arg-max token
    /// (token accuracy), from the same logits.
    pub fn token_logprobs_hits(
        &self,
        hidden: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        chunk: usize,
    ) -> (Tensor<B, 2>, Tensor<B, 2, Bool>) {
        let logits = |h| self.logits(h);
        let mut rows = self.base_head_rows();
        if let Some((idx, delta)) = self.head_row_delta() {
            // the fused CPU op takes the head as one table: the token rows written in (a copy,
            // differentiable in them); elsewhere `logits` corrects n columns and no copy is made
            if super::cpu::applies(&hidden) {
                rows = rows.select_assign(0, idx, delta, IndexingUpdateOp::Add);
            }
        }
        ops::token_logprobs(hidden, targets, &rows, logits, chunk)
    }

    /// The base LM head as `[V, d]` rows (the tied embeddings, or the untied head transposed — a
    /// view, not a copy), trainable token rows not applied: `logits = hidden · rowsᵀ`.
    fn base_head_rows(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// Hidden states at one position per row: `hidden` `[b, s, d]`, `positions` `[b]` → `[b, d]`
    /// (e.g. the `<emb_token>` state of each sequence).
    pub fn hidden_at(hidden: Tensor<B, 3>, positions: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let [b, _, d] = hidden.dims();
        let idx = positions.reshape([b, 1, 1]).expand([b, 1, d]);
        hidden.gather(1, idx).reshape([b, d])
    }

    /// The LM head as a contiguous `[d, V]` matrix (the transposed embeddings when tied), for
    /// decode loops that apply it every step.
    pub fn head_matrix(&self) -> Tensor<B, 2> {
        let w = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => {
                let w = self.model.embed_tokens.weight.val().transpose();
                Tensor::from_data(w.into_data(), &self.device())
            }
        };
        match self.head_row_delta() {
            Some((idx, delta)) => w.select_assign(1, idx, delta.transpose(), IndexingUpdateOp::Add),
            None => w,
        }
    }

    /// HF-style forward of right-padded (or unpadded) rows: `attention_mask` `[b, s]` is 1 for
    /// real tokens; positions count real tokens from 0. Returns (logits `[b, s, V]`, hidden `[b, s, d]`).
    /// Training losses that need only some positions' log-probs use [`Decoder::hidden`] and
    /// [`Decoder::token_logprobs`] instead: the full `[b, s, V]` logits are never materialised.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let hidden = self.hidden(ids, attention_mask);
        (self.logits(hidden.clone()), hidden)
    }

    /// [`Decoder::forward`] without the LM head: last-layer hidden states `[b, s, d]` (after the
    /// final norm) of right-padded rows, `attention_mask` `[b, s]` 1 on real tokens.
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let (positions, pad) = match attention_mask {
            Some(m) => {
                // positions = cumsum(mask) - 1, clamped at 0 (as transformers does for left padding)
                let pos = (m.clone().cumsum(1) - 1).clamp_min(0);
                (pos, Some(m.equal_elem(0)))
            }
            None => (
                Tensor::<B, 1, Int>::arange(0..s as i64, &device)
                    .reshape([1, s])
                    .expand([b, s]),
                None,
            ),
        };
        self.hidden_states(ids, positions, pad)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    /// Grows the vocabulary to `new_vocab` rows (for added special tokens). New embedding rows
    /// (and new untied LM-head columns) are the mean of the existing ones, so new tokens start as
    /// an "average" token instead of noise. Shrinking is refused (it would drop trained rows).
    pub fn resize_vocab(mut self, new_vocab: usize) -> crate::Result<Self> {
        let old = self.config.vocab_size;
        if new_vocab < old {
            return Err(crate::Error::Runtime(format!(
                "cannot shrink the vocabulary from {old} to {new_vocab}"
            )));
        }
        if new_vocab == old {
            return Ok(self);
        }
        let extra = new_vocab - old;
        let grow = |w: Tensor<B, 2>, dim: usize| -> Tensor<B, 2> {
            let mean = w.clone().mean_dim(dim); // [1, d] or [d, 1]
            let rows = mean.repeat_dim(dim, extra);
            // detached: a new leaf parameter (under autodiff a graph node cannot become a Param)
            Tensor::cat(vec![w, rows], dim).detach()
        };
        let emb = self.model.embed_tokens.weight.val();
        self.model.embed_tokens.weight = Param::from_tensor(grow(emb, 0)); // [V', d]
        if let Some(head) = &mut self.lm_head {
            head.weight = Param::from_tensor(grow(head.weight.val(), 1)); // [d, V']
        }
        self.config.vocab_size = new_vocab;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// burn-flex has one random stream per process: a test (or anything) drawing on another
    /// thread while a preset is drawn must not change the preset's weights.
    #[test]
    fn init_seeded_is_the_same_while_other_threads_draw() {
        let c = DecoderConfig::tiny(64);
        // every parameter's values in module order (a record would also hold the random ids)
        struct Values(Vec<f32>);
        impl burn::module::ModuleVisitor<Flex> for Values {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
                self.0
                    .extend(param.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        let bytes = |m: Decoder<Flex>| {
            let mut v = Values(Vec::new());
            m.visit(&mut v);
            v.0
        };
        let dev = Default::default();
        let want = bytes(c.init_seeded::<Flex>(5, &dev).unwrap());
        let stop = AtomicBool::new(false);
        let same: Vec<bool> = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let t = Tensor::<Flex, 1>::random([16], Distribution::Default, &dev);
                    let _ = t.into_data();
                }
            });
            let same = (0..20)
                .map(|_| bytes(c.init_seeded::<Flex>(5, &dev).unwrap()) == want)
                .collect();
            stop.store(true, Ordering::Relaxed);
            same
        });
        assert!(
            same.iter().all(|s| *s),
            "draws that matched the seed's: {same:?}"
        );
    }
}
