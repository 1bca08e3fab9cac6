//! LoRA adapters on the decoder's linear layers, as PEFT defines them (Hu et al. 2021):
//! `y = x·W + b + (α / r) · (x·A)·B`, with `A` `[d_in, r]` drawn like PEFT's default
//! (`kaiming_uniform_(a = √5)` on its `[r, d_in]` `lora_A.weight`: U(−1/√d_in, 1/√d_in)) and `B`
//! `[r, d_out]` zero, so a fresh adapter leaves the model unchanged. [`Decoder::with_lora`]
//! freezes every base parameter (no gradient, no optimizer state) and attaches adapters to the
//! target modules; [`Decoder::merge_lora`] folds them into the base weights (`W + (α/r)·A·B`).
//!
//! Layout: burn's `Linear` keeps `W` as `[d_in, d_out]` (HF's transposed), and `A`, `B` follow
//! it; PEFT's `lora_A.weight` / `lora_B.weight` are `Aᵀ` / `Bᵀ`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::config::LoraTarget as Target;

impl Target {
    /// The HF module path inside a layer (`self_attn.q_proj`, `mlp.down_proj`).
    pub fn hf_path(self) -> String {
        let block = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        };
        format!("{block}.{}", self.hf_name())
    }
}

/// What [`Decoder::with_lora`] attaches: rank `r`, `alpha` (the update is scaled by `α / r`,
/// PEFT's default; `α / √r` with `use_rslora`), the target modules, and the token ids whose
/// embedding rows (and, on an untied model, LM-head rows) train in full beside the adapters
/// (PEFT's `trainable_token_indices`; empty: none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub targets: Vec<Target>,
    pub tokens: Vec<u32>,
}

impl LoraSpec {
    /// The spec of `[lora]` for a model with tokenizer `tok` (validated at load: every target
    /// name is known).
    pub fn from_section(l: &crate::config::LoraSection, tok: &super::T1Tokenizer) -> Self {
        Self {
            rank: l.rank,
            alpha: l.alpha,
            use_rslora: l.use_rslora,
            targets: l
                .target_modules
                .iter()
                .filter_map(|n| Target::from_hf_name(n))
                .collect(),
            tokens: if l.train_new_tokens {
                vec![tok.think, tok.end_think, tok.emb]
            } else {
                Vec::new()
            },
        }
    }

    /// The factor on `(x·A)·B`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// One adapter: `A` `[d_in, r]`, `B` `[r, d_out]`, the scale `α / r`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    #[module(skip)]
    scale: f32,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter for a `[d_in, d_out]` layer: `A` from `rng` (PEFT's bound 1/√d_in), `B`
    /// zero. Drawn on the host so every backend starts from the same numbers.
    fn new(
        d_in: usize,
        d_out: usize,
        spec: &LoraSpec,
        rng: &mut ChaCha8Rng,
        device: &B::Device,
    ) -> Self {
        let r = spec.rank;
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> = (0..d_in * r)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Lora {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)),
            b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            scale: spec.scale() as f32,
        }
    }

    /// An adapter from given factors (`a` `[d_in, r]`, `b` `[r, d_out]`), e.g. read from a PEFT
    /// file.
    pub fn from_factors(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f32) -> Self {
        Lora {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale,
        }
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// `(α / r) · (x·A)·B` for rows `x` `[m, d_in]` → `[m, d_out]`.
    pub(super) fn delta(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let xa = super::ops::matmul_rows(x, self.a.val());
        super::ops::matmul_rows(xa, self.b.val()).mul_scalar(self.scale)
    }

    /// The update as a weight `[d_in, d_out]`: `(α / r) · A·B`.
    pub fn weight_delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }
}

/// Trainable rows of a frozen vocabulary (PEFT's `TrainableTokensLayer`): the full values of the
/// input-embedding rows of `ids` (`embed` `[n, d]`) and, on an untied model, of their LM-head rows
/// (`head` `[n, d]`; a tied head follows `embed`). They replace the base rows wherever the model
/// reads them — embedding lookups, logits, the soft-token table — without a copy of the `[V, d]`
/// tables: a lookup swaps the `n` rows in, logits get `n` corrected columns.
///
/// This is how the tokens T1 adds (`<think>`, `</think>`, `<emb_token>`) train while the base is
/// frozen: a resized base gives them an average row, and no adapter on the projections can make
/// `</think>` or `<emb_token>` tokens of their own; their rows are `3·d` numbers (`6·d` untied).
#[derive(Module, Debug)]
pub struct TokenRows<B: Backend> {
    pub embed: Param<Tensor<B, 2>>,
    pub head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    ids: Vec<u32>,
}

impl<B: Backend> TokenRows<B> {
    /// Rows for `ids` with the given values (`embed`, `head` `[n, d]`).
    pub fn from_values(ids: Vec<u32>, embed: Tensor<B, 2>, head: Option<Tensor<B, 2>>) -> Self {
        TokenRows {
            embed: Param::from_tensor(embed),
            head: head.map(Param::from_tensor),
            ids,
        }
    }

    /// The token ids, in the order of the rows.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The ids as an index tensor `[n]`.
    pub(super) fn index(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let v: Vec<i64> = self.ids.iter().map(|&i| i as i64).collect();
        Tensor::from_data(TensorData::new(v, [self.ids.len()]), device)
    }

    /// Embeddings `x` `[b, s, d]` of `ids` `[b, s]` with the rows of these tokens swapped in.
    pub(super) fn embed(&self, ids: Tensor<B, 2, Int>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let n = self.ids.len();
        let device = x.device();
        // slot k where the id is the k-th token, n elsewhere (the zero row below)
        let mut slot = Tensor::<B, 2, Int>::full([b, s], n as i64, &device);
        for (k, &id) in self.ids.iter().enumerate() {
            slot = slot.mask_fill(ids.clone().equal_elem(id as i64), k as i64);
        }
        let slot = slot.reshape([b * s]);
        let rows = Tensor::cat(vec![self.embed.val(), Tensor::zeros([1, d], &device)], 0);
        let swapped = rows.select(0, slot.clone()); // [b·s, d], zero where not a token of these
        let keep = slot.equal_elem(n as i64).float().reshape([b * s, 1]);
        (x.reshape([b * s, d]) * keep + swapped).reshape([b, s, d])
    }
}

use super::decoder::Decoder;

/// The dtype a frozen base is held in on `device` (`lora.base_dtype`): `want` where the backend
/// supports it, f16 in place of a missing bf16 (said on stderr), an error when it has neither.
pub fn half_dtype<B: Backend>(want: FloatDType, device: &B::Device) -> Result<FloatDType, String> {
    use burn::tensor::DType;
    if B::supports_dtype(device, want.into()) {
        return Ok(want);
    }
    if want == FloatDType::BF16 && B::supports_dtype(device, DType::F16) {
        eprintln!(
            "lora.base_dtype = \"bf16\": this device has no bf16, the frozen base is held in f16"
        );
        return Ok(FloatDType::F16);
    }
    Err(format!(
        "this device supports neither {want:?} nor F16 for the frozen base; use \"f32\""
    ))
}

impl<B: Backend> Decoder<B> {
    /// This model with every parameter frozen (no gradient, so no optimizer state) and a fresh
    /// adapter on each target module of every layer, drawn from `seed` in layer order, then
    /// target order (`Target::ALL`'s). Adapters already present are kept frozen too. The rows of
    /// `spec.tokens` become [`TokenRows`] starting from their current values (PEFT's
    /// initialisation), so the adapted model computes what the base did.
    pub fn with_lora(self, spec: &LoraSpec, seed: u64) -> crate::Result<Self> {
        let device = self.device();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut model = self.no_grad();
        let mut targets = spec.targets.clone();
        targets.sort();
        targets.dedup();
        for layer in model.layers_mut() {
            for &t in &targets {
                let (d_in, d_out) = {
                    let w = layer.linear(t).weight.val();
                    let [i, o] = w.dims();
                    (i, o)
                };
                *layer.lora_mut(t) = Some(Lora::new(d_in, d_out, spec, &mut rng, &device));
            }
        }
        if !spec.tokens.is_empty() {
            model.check_token_ids(&spec.tokens)?;
            let (embed, head) = model.base_token_rows(&spec.tokens);
            // fresh leaves that train (the base stays frozen)
            let leaf = |t: Tensor<B, 2>| t.detach().require_grad();
            model.token_rows = Some(TokenRows::from_values(
                spec.tokens.clone(),
                leaf(embed),
                head.map(leaf),
            ));
        }
        Ok(model)
    }

    /// Token ids for [`TokenRows`]: in the vocabulary, none twice.
    pub(super) fn check_token_ids(&self, ids: &[u32]) -> crate::Result<()> {
        let v = self.config().vocab_size;
        let mut seen = std::collections::BTreeSet::new();
        for &id in ids {
            if id as usize >= v || !seen.insert(id) {
                return Err(crate::Error::Runtime(format!(
                    "trainable token {id}: {} (vocabulary of {v})",
                    if id as usize >= v {
                        "outside the vocabulary"
                    } else {
                        "listed twice"
                    }
                )));
            }
        }
        Ok(())
    }

    /// The base rows of token `ids`: embeddings `[n, d]` and, untied, LM-head rows `[n, d]`.
    pub(super) fn base_token_rows(&self, ids: &[u32]) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let device = self.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [ids.len()],
            ),
            &device,
        );
        let embed = self.model.embed_tokens.weight.val().select(0, idx.clone());
        let head = self
            .lm_head
            .as_ref()
            .map(|h| h.weight.val().select(1, idx).transpose()); // [d, V] → [n, d]
        (embed, head)
    }

    /// This model with every adapter folded into its base weight (`W + (α/r)·A·B`, the token
    /// rows written into the tables) and removed: a plain decoder that computes what the adapted
    /// one did. Each merged weight keeps its parameter id and gradient flag (frozen, after
    /// [`Decoder::with_lora`]).
    pub fn merge_lora(mut self) -> Self {
        for layer in self.layers_mut() {
            for t in Target::ALL {
                if let Some(l) = layer.lora_mut(t).take() {
                    let delta = l.weight_delta().detach();
                    let lin = layer.linear_mut(t);
                    lin.weight = lin.weight.clone().map(|w| {
                        let trainable = w.is_require_grad();
                        // a half-precision frozen base (`with_base_dtype`) merges in f32
                        (w.detach().cast(delta.dtype()) + delta).set_require_grad(trainable)
                    });
                }
            }
        }
        if let Some(rows) = self.token_rows.take() {
            // the rows written in exactly, as PEFT's index_copy does: zeroed (x + −x = 0), then
            // the values added
            let device = self.device();
            let idx = rows.index(&device);
            let put = |w: Tensor<B, 2>, dim: usize, values: Tensor<B, 2>| {
                let trainable = w.is_require_grad();
                let w = w.detach();
                let old = w.clone().select(dim, idx.clone()).neg();
                w.select_assign(dim, idx.clone(), old, IndexingUpdateOp::Add)
                    .select_assign(dim, idx.clone(), values.detach(), IndexingUpdateOp::Add)
                    .set_require_grad(trainable)
            };
            let w = &mut self.model.embed_tokens.weight;
            *w = w.clone().map(|w| put(w, 0, rows.embed.val()));
            if let (Some(lm), Some(vals)) = (&mut self.lm_head, rows.head) {
                lm.weight = lm.weight.clone().map(|w| put(w, 1, vals.val().transpose()));
            }
        }
        self
    }

    /// This model with the frozen weight of every decoder-layer projection (q, k, v, o, gate,
    /// up, down) held in `dtype` (`lora.base_dtype`: bf16, or f16) — half the bytes of the
    /// bulk of the base. [`super::ops::linear_rows`] then multiplies in that dtype; biases, norms,
    /// the embedding table and the LM head stay f32, as do adapters, token rows, gradients and
    /// optimizer state. A trainable projection (full fine-tuning) is refused: its weight is what
    /// AdamW updates and must stay f32.
    pub fn with_base_dtype(mut self, dtype: FloatDType) -> crate::Result<Self> {
        for (i, layer) in self.layers_mut().iter_mut().enumerate() {
            for t in Target::ALL {
                let lin = layer.linear_mut(t);
                if lin.weight.val().is_require_grad() {
                    return Err(crate::Error::Runtime(format!(
                        "layer {i} {}: a trainable weight cannot be held in {dtype:?} (a \
                         half-precision base needs the base frozen, i.e. lora.enabled = true)",
                        t.hf_path()
                    )));
                }
                lin.weight = lin.weight.clone().map(|w| w.cast(dtype));
            }
        }
        Ok(self)
    }

    /// Whether the model carries an adapter (on a projection, or trainable token rows).
    pub fn has_lora(&self) -> bool {
        self.token_rows.is_some()
            || self
                .model
                .layers
                .iter()
                .any(|l| Target::ALL.into_iter().any(|t| l.lora(t).is_some()))
    }

    /// The base model under the adapters: this one with every adapter and token row turned off,
    /// sharing its (frozen) tensors — no copy of the weights. With LoRA, GRPO's KL reference
    /// (what TRL's `disable_adapter()` gives with PEFT).
    pub fn base_view(&self) -> Self {
        let mut m = self.clone();
        m.token_rows = None;
        for layer in m.layers_mut() {
            for t in Target::ALL {
                *layer.lora_mut(t) = None;
            }
        }
        m
    }

    /// This model with every parameter trainable again (the inverse of `no_grad`): a merged
    /// model that a full fine-tuning stage starts from.
    pub fn trainable(self) -> Self {
        struct Trainable;
        impl<B: Backend> burn::module::ModuleMapper<B> for Trainable {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                param.set_require_grad(true)
            }
        }
        self.map(&mut Trainable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DecoderConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Int;

    type AD = Autodiff<Flex>;

    /// Largest absolute difference of two equally long slices.
    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    fn spec() -> LoraSpec {
        LoraSpec {
            rank: 4,
            alpha: 8.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
            tokens: Vec::new(),
        }
    }

    fn ids() -> Tensor<AD, 2, Int> {
        Tensor::from_data(
            TensorData::new(
                (0..14).map(|i| (i * 7 + 3) % 64).collect::<Vec<i64>>(),
                [2, 7],
            ),
            &Default::default(),
        )
    }

    fn tiny() -> Decoder<AD> {
        DecoderConfig::tiny(64)
            .init_seeded(3, &Default::default())
            .unwrap()
    }

    fn logits(m: &Decoder<AD>) -> Vec<f32> {
        m.forward(ids(), None).0.into_data().to_vec().unwrap()
    }

    /// Every adapter's B set to small random numbers (a trained adapter), the rest unchanged.
    fn perturbed(m: Decoder<AD>) -> Decoder<AD> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut m = m;
        for layer in m.layers_mut() {
            for t in Target::ALL {
                if let Some(l) = layer.lora_mut(t) {
                    let [r, o] = l.b.val().dims();
                    let v: Vec<f32> = (0..r * o).map(|_| rng.random_range(-0.3..0.3)).collect();
                    l.b = Param::from_tensor(Tensor::from_data(
                        TensorData::new(v, [r, o]),
                        &Default::default(),
                    ));
                }
            }
        }
        m
    }

    #[test]
    fn fresh_adapters_change_nothing_and_merging_is_exact() {
        let base = tiny();
        let want = logits(&base);
        let adapted = base.with_lora(&spec(), 1).unwrap();
        assert!(adapted.has_lora());
        assert_eq!(
            logits(&adapted),
            want,
            "B = 0: the adapted model is the base"
        );
        let trained = perturbed(adapted);
        let got = logits(&trained);
        let moved = max_diff(&got, &want);
        assert!(moved > 1e-3, "a non-zero B changes the logits ({moved})");
        let dir = tempfile::tempdir().unwrap();
        let err = crate::model::save_hf(&trained, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("LoRA adapters"), "{err}");
        let merged = trained.merge_lora();
        crate::model::save_hf(&merged, dir.path()).unwrap();
        assert!(!merged.has_lora());
        let d = max_diff(&logits(&merged), &got);
        assert!(d < 1e-5, "merged logits differ by {d}");
    }

    /// Only the adapters get gradients; the base weights, norms and embeddings none. The
    /// gradients of A and B match central finite differences of the loss.
    #[test]
    fn only_adapters_train_and_their_gradients_are_right() {
        let model = perturbed(tiny().with_lora(&spec(), 1).unwrap());
        let loss = |m: &Decoder<AD>| {
            let (l, _) = m.forward(ids(), None);
            (l.clone() * l).mean()
        };
        let grads = loss(&model).backward();
        let layer = &model.model.layers[0];
        assert!(layer.self_attn.q_proj.weight.val().grad(&grads).is_none());
        assert!(model.model.embed_tokens.weight.val().grad(&grads).is_none());
        assert!(layer.input_layernorm.gamma.val().grad(&grads).is_none());
        for t in [Target::Q, Target::Down] {
            let l = layer.lora(t).as_ref().unwrap();
            for (name, p) in [("A", &l.a), ("B", &l.b)] {
                let g: Vec<f32> = p.val().grad(&grads).unwrap().into_data().to_vec().unwrap();
                let v: Vec<f32> = p.val().into_data().to_vec().unwrap();
                let dims = p.val().dims();
                for &i in &[0usize, 5, v.len() - 1] {
                    let eps = 1e-2f32;
                    let at = |x: f32| {
                        let mut w = v.clone();
                        w[i] = x;
                        let mut m = model.clone();
                        let l = m.model.layers[0].lora_mut(t).as_mut().unwrap();
                        let new = Param::from_tensor(Tensor::from_data(
                            TensorData::new(w, dims),
                            &Default::default(),
                        ));
                        if name == "A" {
                            l.a = new
                        } else {
                            l.b = new
                        }
                        loss(&m).into_scalar() as f64
                    };
                    let fd = (at(v[i] + eps) - at(v[i] - eps)) / (2.0 * eps as f64);
                    let d = (fd - g[i] as f64).abs();
                    assert!(
                        d <= 2e-3 * fd.abs().max(g[i].abs() as f64) + 1e-5,
                        "{t:?} {name}[{i}]: autodiff {} vs finite differences {fd}",
                        g[i]
                    );
                }
            }
        }
    }

    /// Trainable token rows on a tied and an untied model: the adapted model starts equal to the
    /// base; after the rows move, the lookup, the logits and the fused and generic log-prob
    /// paths agree, only the rows (and adapters) get gradients, and those match finite
    /// differences; merging writes the rows into the tables.
    #[test]
    fn token_rows_train_and_merge() {
        use crate::model::cpu::{Kernels, scoped};
        for tied in [true, false] {
            let mut c = DecoderConfig::tiny(64);
            c.tie_word_embeddings = tied;
            let base: Decoder<AD> = c.init_seeded(3, &Default::default()).unwrap();
            let want = logits(&base);
            let spec = LoraSpec {
                tokens: vec![10, 3, 63],
                ..spec()
            };
            let d = c.hidden_size;
            let mut m = base.with_lora(&spec, 1).unwrap();
            assert_eq!(logits(&m), want, "tied {tied}: fresh rows are the base's");
            // move the rows (a trained state)
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let rows = m.token_rows.as_mut().unwrap();
            assert_eq!(
                rows.head.is_some(),
                !tied,
                "an untied head's rows train too"
            );
            let mut shift = |p: &mut Param<Tensor<AD, 2>>| {
                let v: Vec<f32> = (0..3 * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                *p = Param::from_tensor(
                    Tensor::from_data(TensorData::new(v, [3, d]), &Default::default())
                        .require_grad(),
                );
            };
            shift(&mut rows.embed);
            if let Some(h) = rows.head.as_mut() {
                shift(h);
            }
            let ids = ids(); // token 3 and 10 are inputs, 3 / 10 / 63 logit columns
            let targets = ids.clone().slice([0..2, 1..7]);
            let loss = |m: &Decoder<AD>, k: Kernels| {
                scoped(k, || {
                    let h = m.hidden(ids.clone().slice([0..2, 0..6]), None);
                    m.token_logprobs(h, targets.clone(), 4).mean()
                })
            };
            let (lf, lg) = (
                loss(&m, Kernels::Fused).into_scalar(),
                loss(&m, Kernels::Generic).into_scalar(),
            );
            assert!(
                (lf - lg).abs() < 1e-5,
                "tied {tied}: fused {lf} vs generic {lg}"
            );
            // the same log-probs from the full logits
            let full = {
                let (lg, _) = m.forward(ids.clone().slice([0..2, 0..6]), None);
                let lp = burn::tensor::activation::log_softmax(lg, 2);
                lp.gather(2, targets.clone().unsqueeze_dim(2))
                    .mean()
                    .into_scalar()
            };
            assert!(
                (full - lf).abs() < 1e-5,
                "tied {tied}: logits give {full}, log-probs {lf}"
            );
            // each backward on a graph of its own: burn merges graphs that share
            // parameter leaves, and one backward then consumes the other's steps
            for (path, k) in [("fused", Kernels::Fused), ("generic", Kernels::Generic)] {
                let grads = loss(&m, k).backward();
                assert!(m.model.embed_tokens.weight.val().grad(&grads).is_none());
                let rows = m.token_rows.as_ref().unwrap();
                let params = std::iter::once(&rows.embed).chain(rows.head.as_ref());
                for (which, p) in params.enumerate() {
                    let g: Vec<f32> = p.val().grad(&grads).unwrap().into_data().to_vec().unwrap();
                    let v: Vec<f32> = p.val().into_data().to_vec().unwrap();
                    for i in [0usize, d + 7, 3 * d - 1] {
                        let at = |x: f32| {
                            let mut w = v.clone();
                            w[i] = x;
                            let mut m2 = m.clone();
                            let r = m2.token_rows.as_mut().unwrap();
                            let t =
                                Tensor::from_data(TensorData::new(w, [3, d]), &Default::default());
                            if which == 0 {
                                r.embed = Param::from_tensor(t);
                            } else {
                                r.head = Some(Param::from_tensor(t));
                            }
                            loss(&m2, Kernels::Generic).into_scalar() as f64
                        };
                        let eps = 1e-2f32;
                        let fd = (at(v[i] + eps) - at(v[i] - eps)) / (2.0 * eps as f64);
                        let d = (fd - g[i] as f64).abs();
                        assert!(
                            d <= 2e-3 * fd.abs().max(g[i].abs() as f64) + 1e-5,
                            "tied {tied}, {path}, rows {which}[{i}]: autodiff {} vs finite differences {fd}",
                            g[i]
                        );
                    }
                }
            }
            let got = logits(&m);
            let rows_were = m.token_rows.as_ref().unwrap().embed.val();
            let merged = m.merge_lora();
            assert!(!merged.has_lora());
            let d = max_diff(&logits(&merged), &got);
            assert!(d < 1e-4, "tied {tied}: merged logits differ by {d}");
            let idx = Tensor::<AD, 1, Int>::from_data(
                TensorData::new(vec![10i64, 3, 63], [3]),
                &Default::default(),
            );
            let table = merged.model.embed_tokens.weight.val().select(0, idx);
            assert_eq!(
                table.into_data().to_vec::<f32>().unwrap(),
                rows_were.into_data().to_vec::<f32>().unwrap(),
                "tied {tied}: the rows are written into the table"
            );
        }
    }
}
