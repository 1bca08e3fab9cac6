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
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The linear layers an adapter can sit on, by their HF (and PEFT `target_modules`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The HF module name (`q_proj`, …, `down_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The target of an HF module name, or `None`.
    pub fn from_hf_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.hf_name() == name)
    }

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
/// PEFT's default; `α / √r` with `use_rslora`), and the target modules.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub targets: Vec<Target>,
}

impl LoraSpec {
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

use super::decoder::Decoder;

impl<B: Backend> Decoder<B> {
    /// This model with every parameter frozen (no gradient, so no optimizer state) and a fresh
    /// adapter on each target module of every layer, drawn from `seed` in layer order, then
    /// target order (`Target::ALL`'s). Adapters already present are kept frozen too.
    pub fn with_lora(self, spec: &LoraSpec, seed: u64) -> Self {
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
        model
    }

    /// This model with every adapter folded into its base weight (`W + (α/r)·A·B`) and removed:
    /// a plain decoder that computes what the adapted one did. Each merged weight keeps its
    /// parameter id and gradient flag (frozen, after [`Decoder::with_lora`]).
    pub fn merge_lora(mut self) -> Self {
        for layer in self.layers_mut() {
            for t in Target::ALL {
                if let Some(l) = layer.lora_mut(t).take() {
                    let delta = l.weight_delta().detach();
                    let lin = layer.linear_mut(t);
                    lin.weight = lin.weight.clone().map(|w| {
                        let trainable = w.is_require_grad();
                        (w.detach() + delta).set_require_grad(trainable)
                    });
                }
            }
        }
        self
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.model
            .layers
            .iter()
            .any(|l| Target::ALL.into_iter().any(|t| l.lora(t).is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DecoderConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Int;

    type AD = Autodiff<Flex>;

    fn spec() -> LoraSpec {
        LoraSpec {
            rank: 4,
            alpha: 8.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
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
        let adapted = base.with_lora(&spec(), 1);
        assert!(adapted.has_lora());
        assert_eq!(
            logits(&adapted),
            want,
            "B = 0: the adapted model is the base"
        );
        let trained = perturbed(adapted);
        let got = logits(&trained);
        let moved = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-3, "a non-zero B changes the logits ({moved})");
        let dir = tempfile::tempdir().unwrap();
        let err = crate::model::save_hf(&trained, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("LoRA adapters"), "{err}");
        let merged = trained.merge_lora();
        crate::model::save_hf(&merged, dir.path()).unwrap();
        assert!(!merged.has_lora());
        let d = logits(&merged)
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "merged logits differ by {d}");
    }

    /// Only the adapters get gradients; the base weights, norms and embeddings none. The
    /// gradients of A and B match central finite differences of the loss.
    #[test]
    fn only_adapters_train_and_their_gradients_are_right() {
        let model = perturbed(tiny().with_lora(&spec(), 1));
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
}
