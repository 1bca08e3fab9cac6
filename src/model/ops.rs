//! Every op of the decoder in one place: the generic implementation — burn's tensor ops, what the
//! CUDA and wgpu backends run — behind the CPU backend's kernel where one applies ([`cpu`]: each
//! of its entry points returns `None` elsewhere, and with `T1_KERNELS=generic`). `decoder.rs`
//! (the architecture) and the decode loop call only these.
//!
//! Shapes: `b` batch, `s` query positions, `t` key positions, `h` query heads, `g` key/value
//! heads, `r = h / g`, `k` head dim, `V` vocabulary.

use burn::nn::{Linear, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::cpu;
use super::lora::Lora;

/// RoPE factors of one forward. On the CPU backend each rotation is one fused op
/// ([`cpu::rope`]) that also writes the heads-first layout attention reads. Elsewhere the
/// factors are laid out so every layer's rotation is contiguous element-wise work plus one small
/// matmul (burn-flex runs broadcasts over middle dims and non-contiguous views element by element;
/// these shapes take its SIMD paths): `x·cos + rotate_half(x)·sin` with `rotate_half(x) = x·R`,
/// `R` `[k, k]` the signed permutation of HF's `rotate_half` (`cat([-x2, x1])`), on `x`
/// `[b, s, n, k]`, then swapped to `[b, n, s, k]`.
pub(super) struct Rope<B: Backend> {
    /// `[b, s, 1, k]`.
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    /// The tensor-op version's factors, made only where the fused op does not apply.
    unfused: Option<Unfused<B>>,
}

struct Unfused<B: Backend> {
    /// `[b, s, h, k]` (query heads) and `[b, s, g, k]` (key heads), materialised once per forward.
    cos_q: Tensor<B, 4>,
    sin_q: Tensor<B, 4>,
    cos_k: Tensor<B, 4>,
    sin_k: Tensor<B, 4>,
    rot: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// From `cos`, `sin` `[b, s, 1, k]`, for `h` query and `g` key heads.
    pub(super) fn new(cos: Tensor<B, 4>, sin: Tensor<B, 4>, h: usize, g: usize) -> Self {
        let unfused = (!cpu::applies(&cos)).then(|| Unfused::new(&cos, &sin, h, g));
        Rope { cos, sin, unfused }
    }

    /// Rotates queries `[b, s, h, k]` → `[b, h, s, k]`.
    pub(super) fn queries(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.unfused {
            Some(u) => u.rotate(x, &u.cos_q, &u.sin_q),
            None => self.fused(x),
        }
    }

    /// Rotates keys `[b, s, g, k]` → `[b, g, s, k]`.
    pub(super) fn keys(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.unfused {
            Some(u) => u.rotate(x, &u.cos_k, &u.sin_k),
            None => self.fused(x),
        }
    }

    fn fused(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match cpu::rope(&x, &self.cos, &self.sin) {
            Some(y) => y,
            // activations of another dtype than the angles: the tensor-op version
            None => {
                let n = x.dims()[2];
                let u = Unfused::new(&self.cos, &self.sin, n, n);
                u.rotate(x, &u.cos_q, &u.sin_q)
            }
        }
    }
}

impl<B: Backend> Unfused<B> {
    fn new(cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, h: usize, g: usize) -> Self {
        let k = cos.dims()[3];
        let mut r = vec![0f32; k * k];
        for j in 0..k / 2 {
            r[(j + k / 2) * k + j] = -1.0; // out[j] = −x[j + k/2]
            r[j * k + j + k / 2] = 1.0; // out[j + k/2] = x[j]
        }
        Unfused {
            rot: Tensor::from_data(burn::tensor::TensorData::new(r, [k, k]), &cos.device()),
            cos_q: cos.clone().repeat_dim(2, h),
            sin_q: sin.clone().repeat_dim(2, h),
            cos_k: cos.clone().repeat_dim(2, g),
            sin_k: sin.clone().repeat_dim(2, g),
        }
    }

    fn rotate(&self, x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, n, k] = x.dims();
        let rotated = x.clone().reshape([b * s * n, k]).matmul(self.rot.clone());
        (x * cos.clone() + rotated.reshape([b, s, n, k]) * sin.clone()).swap_dims(1, 2)
    }
}

/// A forward's attention mask `[b, 1, 1, s, t]` (true = hidden), in the form each attention path
/// reads: on the host for the CPU backend's attention ([`cpu::attention`]), and for burn's ops in the
/// scores' own layout `[b, g, r, s, t]`, materialised once for all layers on first use (burn-flex
/// applies a mask broadcast over the head dims element by element, its strided path, in every
/// layer's forward and backward; a same-shape mask takes its SIMD path).
pub(super) struct AttnMask<B: Backend> {
    host: Option<cpu::Mask>,
    mask: Tensor<B, 5, Bool>,
    expanded: std::cell::OnceCell<Tensor<B, 5, Bool>>,
}

impl<B: Backend> AttnMask<B> {
    /// For a forward over activations like `x`.
    pub(super) fn new<const D: usize>(mask: Tensor<B, 5, Bool>, x: &Tensor<B, D>) -> Self {
        let host = cpu::applies(x).then(|| cpu::Mask::of(&mask)).flatten();
        AttnMask {
            host,
            mask,
            expanded: std::cell::OnceCell::new(),
        }
    }

    /// `[b, g, r, s, t]` for `g` key/value heads of `r` query heads each.
    fn expanded(&self, g: usize, r: usize) -> Tensor<B, 5, Bool> {
        self.expanded
            .get_or_init(|| {
                let [b, _, _, s, t] = self.mask.dims();
                let full = self.mask.clone().expand([b, g, r, s, t]);
                Tensor::from_data(full.into_data(), &self.mask.device())
            })
            .clone()
    }
}

/// A linear layer over `[b, s, d_in]` as one `[b·s, d_in] × [d_in, d_out]` matmul → `[b, s, d_out]`.
/// burn's `Linear` on a 3-D input broadcasts the weight and runs one GEMM per batch row, which
/// re-packs the weight b times (at decode, s = 1: b matrix-vector products instead of one GEMM).
pub(super) fn linear<B: Backend>(
    layer: &Linear<B>,
    lora: &Option<Lora<B>>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, s, d] = x.dims();
    let y = linear_rows(layer, lora, x.reshape([b * s, d]));
    let n = y.dims()[1];
    y.reshape([b, s, n])
}

/// A linear layer over rows `[m, d_in]` → `[m, d_out]`. At decode (few rows, CPU backend, no
/// autodiff) the matmul is [`cpu::decode_matmul`]'s streaming kernel; otherwise on the CPU
/// backend [`cpu::linear`] (gemm into unfilled buffers, own backward); elsewhere burn's `Linear`,
/// or [`half_linear`] when the weight is a half-precision frozen base (`lora.base_dtype`).
/// With a LoRA adapter, its update `(α/r)·(x·A)·B` is added to the base layer's output.
pub(super) fn linear_rows<B: Backend>(
    layer: &Linear<B>,
    lora: &Option<Lora<B>>,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let delta = lora.as_ref().map(|l| l.delta(x.clone()));
    let w = layer.weight.val();
    let y = match cpu::decode_matmul(&x, &w).or_else(|| cpu::linear(&x, &w)) {
        Some(y) => match &layer.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        },
        None if w.dtype() != x.dtype() => half_linear(layer, x),
        None => layer.forward(x),
    };
    match delta {
        Some(d) => y + d,
        None => y,
    }
}

/// A linear layer whose weight is held in half precision (bf16 / f16; a frozen base under LoRA)
/// on f32 rows `x`: the product runs in the weight's dtype, as PyTorch's autocast runs a bf16
/// base — `y = (cast(x) · W)` cast back, plus the f32 bias. Casting the weight up instead would
/// make the autodiff graph keep an f32 copy of every weight for the backward (its `dx = dy·Wᵀ`),
/// undoing the saving; this way the graph keeps the half weight itself, and `dx` flows back
/// through the casts.
fn half_linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let w = layer.weight.val();
    let (half, full) = (w.dtype(), x.dtype());
    let y = x.cast(half).matmul(w).cast(full);
    match &layer.bias {
        Some(bias) => y + bias.val().cast(full).unsqueeze(),
        None => y,
    }
}

/// `x` `[m, k]` · `w` `[k, n]` for a LoRA factor: the CPU backend's linear kernel where it
/// applies, burn's matmul elsewhere.
pub(super) fn matmul_rows<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    match cpu::decode_matmul(&x, &w).or_else(|| cpu::linear(&x, &w)) {
        Some(y) => y,
        None => x.matmul(w),
    }
}

/// RMSNorm over the last dimension: one fused op on the CPU backend ([`cpu::rms_norm`]),
/// burn's `RmsNorm` elsewhere.
pub(super) fn rms_norm<B: Backend, const D: usize>(
    layer: &RmsNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match cpu::rms_norm(&x, &layer.gamma.val(), layer.epsilon) {
        Some(y) => y,
        None => layer.forward(x),
    }
}

/// `x` `[m, k]` × `w` `[k, n]` → `[m, n]` for the decode loop (the LM head each step): the
/// streaming kernel where it applies ([`cpu::decode_matmul`]), `x.matmul(w)` elsewhere.
pub(crate) fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    match cpu::decode_matmul(&x, &w) {
        Some(y) => y,
        None => x.matmul(w),
    }
}

/// The SwiGLU gate `silu(gate) · up` (same shapes): one fused op on the CPU backend
/// ([`cpu::swiglu`]), two tensor ops elsewhere.
pub(super) fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    match cpu::swiglu(&gate, &up) {
        Some(y) => y,
        None => silu(gate) * up,
    }
}

/// Masked scaled-dot-product attention with the heads merged: `q` `[b, h, s, k]`, `key`, `v`
/// `[b, g, t, k]`, `mask` the forward's mask → `[b, s, h·k]`. One op on the CPU backend
/// ([`cpu::attention`]); elsewhere grouped attention without repeating K/V (the `r` query heads
/// of group `g` share its keys): `softmax(q·kᵀ / √k, masked) · v`.
pub(super) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    key: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttnMask<B>,
) -> Tensor<B, 3> {
    let ([b, h, s, k], [_, g, t, _]) = (q.dims(), key.dims());
    let r = h / g;
    let scale = 1.0 / (k as f32).sqrt();
    let fused = mask
        .host
        .as_ref()
        .and_then(|m| cpu::attention(&q, &key, &v, m, scale));
    if let Some(out) = fused {
        return out;
    }
    let q = q.reshape([b, g, r * s, k]);
    let scores = q.matmul(key.swap_dims(2, 3)) / (k as f64).sqrt(); // [b, g, r*s, t]
    let scores = scores
        .reshape([b, g, r, s, t])
        .mask_fill(mask.expanded(g, r), f32::NEG_INFINITY);
    let probs = softmax(scores, 4).reshape([b, g, r * s, t]);
    let out = probs.matmul(v); // [b, g, r*s, k]
    out.reshape([b, h, s, k])
        .swap_dims(1, 2)
        .reshape([b, s, h * k])
}

/// Log-probabilities of `targets` `[b, s]` under the logits of `hidden` `[b, s, d]` → (`[b, s]`,
/// `[b, s]` flags: the target is the arg-max), for an LM head with rows `head_rows` `[V, d]`
/// (`logits = hidden · head_rowsᵀ`, which `logits` computes for a `[b, c, d]` slice).
///
/// On the CPU backend (with or without autodiff) one fused op ([`cpu::token_logprobs`]): while
/// all positions' logits fit its budget they are one buffer, the only `[b·s, V]` tensor kept for
/// backward; past it they are computed in chunks and backward recomputes them. Elsewhere tensor
/// ops `chunk` positions at a time, so only a `[b, chunk, V]` slice of logits exists at once in
/// inference (under autodiff each chunk is kept for backward, but no log-softmax copy is made):
/// `logit[target] − logsumexp(logits)`, the max shift detached.
pub(super) fn token_logprobs<B: Backend>(
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    head_rows: &Tensor<B, 2>,
    logits: impl Fn(Tensor<B, 3>) -> Tensor<B, 3>,
    chunk: usize,
) -> (Tensor<B, 2>, Tensor<B, 2, Bool>) {
    let [b, s, d] = hidden.dims();
    let flat = hidden.clone().reshape([b * s, d]);
    let ids = targets.clone().reshape([b * s]);
    if let Some((lp, hits)) = cpu::token_logprobs(&flat, head_rows, &ids) {
        let hits = Tensor::from_data(TensorData::new(hits, [b, s]), &lp.device());
        return (lp.reshape([b, s]), hits);
    }
    let chunk = chunk.max(1);
    // Chunks are cut from `[b, s, 1]` targets and joined as `[b, s, 1]`, squeezed once: a
    // `[b, 1]` column sliced from a `[b, s]` tensor and then unsqueezed (or a squeeze's backward
    // on such a slice of the gradient) reads the wrong elements on the cubecl backends (burn-std
    // 0.21's `split_strides` takes the unit dim's stride; tracel-ai/burn#5071), which corrupted
    // a last chunk of width 1 on wgpu.
    let targets = targets.unsqueeze_dim::<3>(2); // [b, s, 1]
    let (lps, hits): (Vec<Tensor<B, 3>>, Vec<Tensor<B, 3, Bool>>) = (0..s)
        .step_by(chunk)
        .map(|lo| {
            let hi = (lo + chunk).min(s);
            let logits = logits(hidden.clone().slice([0..b, lo..hi, 0..d])); // [b, c, V]
            let tgt = targets.clone().slice([0..b, lo..hi, 0..1]); // [b, c, 1]
            let picked = logits.clone().gather(2, tgt.clone()); // [b, c, 1]
            let hit = logits.clone().detach().argmax(2).equal(tgt); // [b, c, 1]
            // logsumexp with a detached max shift (any constant shift gives the same value and gradient)
            let m = logits.clone().max_dim(2).detach(); // [b, c, 1]
            let lse = (logits - m.clone()).exp().sum_dim(2).log() + m; // [b, c, 1]
            (picked - lse, hit)
        })
        .unzip();
    (
        Tensor::cat(lps, 1).squeeze_dim::<2>(2),
        Tensor::cat(hits, 1).squeeze_dim::<2>(2),
    )
}
