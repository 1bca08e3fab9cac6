//! RMSNorm, the SwiGLU gate and RoPE as single element-wise ops on the CPU backend, parallel over rows,
//! each with its own autodiff backward.
//!
//! burn builds both from tensor ops: `RmsNorm` is square → mean → add → sqrt → div → mul, `silu(a)
//! · b` is sigmoid → mul → mul. On burn-flex every one of those is a separate pass over the
//! activations on the calling thread only, and under autodiff each keeps its inputs and runs one
//! or two more passes in backward. In a SmolLM2 forward+backward the two cores sat half idle
//! outside the GEMMs (≈ 1.2 of 2 cores used). Here each is one pass forward and one backward,
//! split over rows on rayon:
//! - [`rms_norm`]: `y = x / rms(x) · γ` with `rms(x) = sqrt(mean(x²) + ε)` over the last dim;
//!   backward `dx = (dy·γ − x̂ · mean(dy·γ·x̂)) / rms`, `dγ = Σ_rows dy·x̂` (`x̂ = x / rms`); keeps
//!   `x`, `γ` and one `1 / rms` per row. Computed in HF's order (`γ · (x · rsqrt(…))`, the mean of
//!   squares accumulated in f64), which keeps SmolLM2's logits within the transformers test's
//!   1e-4 (burn's order, `x / rms · γ` with an f32 sum, landed at 1.1e-4).
//! - [`swiglu`]: `y = silu(a) · b` (`a` the gate, `b` the up projection); backward
//!   `da = dy · b · σ(a)(1 + a(1 − σ(a)))`, `db = dy · silu(a)`; keeps `a` and `b`.
//! - [`rope`]: rotary embedding of `[b, s, n, k]` heads, written straight into the `[b, n, s, k]`
//!   layout attention reads. burn's version (`x·cos + (x·R)·sin` with per-head copies of the
//!   angles, then a transpose that burn-flex copies element by element through its strided
//!   iterator) was four ops and a strided copy forward, and backward ran its multiplies on the
//!   strided gradient.
//!
//! Each returns `None` where it does not apply (GPU backends, f16, mismatched shapes): the caller
//! runs burn's version. Sums run in a different order from burn's, so results agree to f32
//! rounding, not bit for bit (tests compare values and gradients with burn's ops).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::Backend;
use burn::tensor::Tensor;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::gemm::{f32_tensor, filled, unfilled};
use super::{AdPrim, Inputs, back, dense, elems, prim};

/// Elements one rayon task handles at least (smaller work stays on one thread).
const GRAIN: usize = 16 * 1024;

/// `x / sqrt(mean(x²) + eps) · γ` over the last dimension of `x` `[.., d]`, `gamma` `[d]` →
/// the shape of `x`. `None` where the fused op does not apply.
pub fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    let d = *x.dims().last()?;
    if d == 0 || gamma.dims() != [d] {
        return None;
    }
    match Inputs::of([prim(x)?, prim(gamma)?])? {
        Inputs::Plain([x, g]) => {
            let (y, _) = norm_forward(&dense(&x), &dense(&g), eps);
            back::<B, D>(Box::new(y))
        }
        Inputs::Tracked([x, g]) => {
            let (xs, gs) = (dense(&x.primitive), dense(&g.primitive));
            let (y, inv_rms) = norm_forward(&xs, &gs, eps);
            let out: AdPrim = match RmsNormOp
                .prepare::<NoCheckpointing>([x.node.clone(), g.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((xs, gs, inv_rms), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            back::<B, D>(Box::new(out))
        }
    }
}

/// `silu(a) · b` element-wise for `a`, `b` of one shape → that shape. `None` where the fused op
/// does not apply.
pub fn swiglu<B: Backend, const D: usize>(
    a: &Tensor<B, D>,
    b: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    if a.dims() != b.dims() {
        return None;
    }
    match Inputs::of([prim(a)?, prim(b)?])? {
        Inputs::Plain([a, b]) => back::<B, D>(Box::new(swiglu_forward(&dense(&a), &dense(&b)))),
        Inputs::Tracked([a, b]) => {
            let (av, bv) = (dense(&a.primitive), dense(&b.primitive));
            let y = swiglu_forward(&av, &bv);
            let out: AdPrim = match SwigluOp
                .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((av, bv), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            back::<B, D>(Box::new(out))
        }
    }
}

/// Rotary position embedding (HF's `rotate_half` convention) of `x` `[b, s, n, k]` with `cos`,
/// `sin` `[b, s, 1, k]` → `[b, n, s, k]`, contiguous with the heads first as attention reads it:
/// `y[j] = x[j]·cos[j] + rot(x)[j]·sin[j]`, `rot(x) = cat(−x[k/2..], x[..k/2])`. Backward (to `x`
/// only; the angles are constants): `dx[i] = dy[i]·cos[i] ∓ dy[i ± k/2]·sin[i ± k/2]`. `None` where
/// the fused op does not apply.
pub fn rope<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let [b, s, _, k] = x.dims();
    if k % 2 != 0 || cos.dims() != [b, s, 1, k] || sin.dims() != [b, s, 1, k] {
        return None;
    }
    match Inputs::of([prim(x)?, prim(cos)?, prim(sin)?])? {
        Inputs::Plain([x, c, sn]) => {
            back::<B, 4>(Box::new(rope_forward(&dense(&x), &dense(&c), &dense(&sn))))
        }
        Inputs::Tracked([x, c, sn]) => {
            let (c, sn) = (dense(&c.primitive), dense(&sn.primitive));
            let xs = dense(&x.primitive);
            let y = rope_forward(&xs, &c, &sn);
            let out: AdPrim = match RopeOp
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((shape(&xs), c, sn), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            back::<B, 4>(Box::new(out))
        }
    }
}

/// Whether the fused ops apply to tensors like `t` (the CPU backend, with or without autodiff,
/// f32).
pub fn applies<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    prim(t).and_then(|p| Inputs::of([p])).is_some()
}

/// The shape of `t`.
fn shape(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// Rows per task for rows of `d` elements.
fn rows_per_task(d: usize) -> usize {
    GRAIN.div_ceil(d.max(1))
}

/// RMSNorm forward over contiguous `x` `[.., d]`, `gamma` `[d]` → (`y`, `1 / rms` per row).
fn norm_forward(x: &FlexTensor, gamma: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let (xv, g) = (elems(x), elems(gamma));
    let d = g.len();
    let n = xv.len() / d;
    let mut y = unfilled(xv.len());
    let mut inv_rms = vec![0f32; n];
    let per = rows_per_task(d);
    y.par_chunks_mut(per * d)
        .zip(inv_rms.par_chunks_mut(per))
        .zip(xv.par_chunks(per * d))
        .for_each(|((ys, rs), xs)| {
            for ((yr, r), xr) in ys.chunks_mut(d).zip(rs.iter_mut()).zip(xs.chunks(d)) {
                // HF's order: γ · (x · rsqrt(mean(x²) + ε)), the mean accumulated in f64
                let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
                *r = (1.0 / (ss / d as f64 + eps as f32 as f64).sqrt()) as f32;
                for ((o, &v), &gj) in yr.iter_mut().zip(xr).zip(g) {
                    o.write(gj * (v * *r));
                }
            }
        });
    // SAFETY: every row of every chunk was written above.
    (f32_tensor(unsafe { filled(y) }, shape(x)), inv_rms)
}

/// `silu(a) · b` over contiguous tensors of one shape.
fn swiglu_forward(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (av, bv) = (elems(a), elems(b));
    let mut y = unfilled(av.len());
    y.par_chunks_mut(GRAIN)
        .zip(av.par_chunks(GRAIN).zip(bv.par_chunks(GRAIN)))
        .for_each(|(ys, (aa, bb))| {
            for ((o, &x), &u) in ys.iter_mut().zip(aa).zip(bb) {
                o.write(x / (1.0 + (-x).exp()) * u);
            }
        });
    // SAFETY: every chunk was written above.
    f32_tensor(unsafe { filled(y) }, shape(a))
}

/// RoPE forward: contiguous `x` `[b, s, n, k]`, `cos`, `sin` `[b, s, 1, k]` → `[b, n, s, k]`.
fn rope_forward(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> FlexTensor {
    let [b, s, n, k] = shape(x)[..] else {
        unreachable!("rope input is 4-D")
    };
    let (xv, cv, sv) = (elems(x), elems(cos), elems(sin));
    let h = k / 2;
    let mut y = unfilled(xv.len());
    // one task per (batch row, head): its [s, k] block of the output
    y.par_chunks_mut(s * k).enumerate().for_each(|(bn, out)| {
        let (bi, ni) = (bn / n, bn % n);
        for (si, o) in out.chunks_mut(k).enumerate() {
            let xr = &xv[((bi * s + si) * n + ni) * k..][..k];
            let (c, sn) = (&cv[(bi * s + si) * k..][..k], &sv[(bi * s + si) * k..][..k]);
            for j in 0..h {
                o[j].write(xr[j] * c[j] - xr[j + h] * sn[j]);
                o[j + h].write(xr[j + h] * c[j + h] + xr[j] * sn[j + h]);
            }
        }
    });
    // SAFETY: every block, row and column was written above.
    f32_tensor(unsafe { filled(y) }, vec![b, n, s, k])
}

#[derive(Debug)]
struct RopeOp;

impl Backward<Flex, 1> for RopeOp {
    /// The input's shape `[b, s, n, k]` and the (contiguous) `cos`, `sin` `[b, s, 1, k]`.
    type State = (Vec<usize>, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = dense(&grads.consume::<Flex>(&ops.node));
        let (xshape, cos, sin) = ops.state;
        let [Some(p)] = ops.parents else { return };
        let [_, s, n, k] = xshape[..] else {
            unreachable!("rope input is 4-D")
        };
        let (dyv, cv, sv) = (elems(&dy), elems(&cos), elems(&sin));
        let h = k / 2;
        let mut dx = unfilled(dyv.len());
        // one task per (batch row, position): its [n, k] block of dx
        dx.par_chunks_mut(n * k).enumerate().for_each(|(bs, out)| {
            let (bi, si) = (bs / s, bs % s);
            let (c, sn) = (&cv[bs * k..][..k], &sv[bs * k..][..k]);
            for (ni, o) in out.chunks_mut(k).enumerate() {
                let g = &dyv[((bi * n + ni) * s + si) * k..][..k];
                for j in 0..h {
                    o[j].write(g[j] * c[j] + g[j + h] * sn[j + h]);
                    o[j + h].write(g[j + h] * c[j + h] - g[j] * sn[j]);
                }
            }
        });
        // SAFETY: every block, head and column was written above.
        grads.register::<Flex>(p.id, f32_tensor(unsafe { filled(dx) }, xshape));
    }
}

#[derive(Debug)]
struct RmsNormOp;

impl Backward<Flex, 2> for RmsNormOp {
    /// The forward's `x` `[.., d]`, `γ` `[d]` (both contiguous) and `1 / rms` per row.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = dense(&grads.consume::<Flex>(&ops.node));
        let (x, gamma, inv_rms) = ops.state;
        let (xv, g, dyv) = (elems(&x), elems(&gamma), elems(&dy));
        let d = g.len();
        let per = rows_per_task(d);
        // both gradients are computed (a parent without one is rare: frozen norms, inputs)
        let mut dx = unfilled(xv.len());
        // per task: its rows of dx, and its partial Σ_rows dy·x̂ for dγ
        let partials: Vec<Vec<f32>> = xv
            .par_chunks(per * d)
            .zip(dyv.par_chunks(per * d))
            .zip(inv_rms.par_chunks(per))
            .zip(dx.par_chunks_mut(per * d))
            .map(|(((xs, dys), rs), dxs)| {
                let mut dg = vec![0f32; d];
                let rows = xs
                    .chunks(d)
                    .zip(dys.chunks(d))
                    .zip(rs)
                    .zip(dxs.chunks_mut(d));
                for (((xr, dyr), &inv), dxr) in rows {
                    // mean_j(dy_j γ_j x̂_j)
                    let mut dot = 0f32;
                    for (((acc, &v), &u), &gj) in dg.iter_mut().zip(xr).zip(dyr).zip(g) {
                        *acc += u * v * inv;
                        dot += u * gj * v;
                    }
                    let c = dot * inv * inv / d as f32;
                    for (((o, &u), &gj), &v) in dxr.iter_mut().zip(dyr).zip(g).zip(xr) {
                        o.write((u * gj - v * c) * inv);
                    }
                }
                dg
            })
            .collect();
        let [xp, gp] = ops.parents;
        if let Some(p) = xp {
            // SAFETY: every row of every chunk was written above.
            grads.register::<Flex>(p.id, f32_tensor(unsafe { filled(dx) }, shape(&x)));
        }
        if let Some(p) = gp {
            let mut dg = vec![0f32; d];
            for part in &partials {
                for (acc, &v) in dg.iter_mut().zip(part) {
                    *acc += v;
                }
            }
            grads.register::<Flex>(p.id, f32_tensor(dg, vec![d]));
        }
    }
}

#[derive(Debug)]
struct SwigluOp;

impl Backward<Flex, 2> for SwigluOp {
    /// The forward's gate `a` and up projection `b` (contiguous, one shape).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = dense(&grads.consume::<Flex>(&ops.node));
        let (a, b) = ops.state;
        let (av, bv, dyv) = (elems(&a), elems(&b), elems(&dy));
        let (mut da, mut db) = (unfilled(av.len()), unfilled(av.len()));
        av.par_chunks(GRAIN)
            .zip(bv.par_chunks(GRAIN))
            .zip(dyv.par_chunks(GRAIN))
            .zip(da.par_chunks_mut(GRAIN).zip(db.par_chunks_mut(GRAIN)))
            .for_each(|(((aa, bb), dys), (das, dbs))| {
                let elems = aa.iter().zip(bb).zip(dys).zip(das.iter_mut().zip(dbs));
                for (((&x, &u), &gy), (oa, ob)) in elems {
                    let s = 1.0 / (1.0 + (-x).exp());
                    oa.write(gy * u * s * (1.0 + x * (1.0 - s)));
                    ob.write(gy * x * s);
                }
            });
        let [ap, bp] = ops.parents;
        if let Some(p) = ap {
            // SAFETY: every chunk was written above.
            grads.register::<Flex>(p.id, f32_tensor(unsafe { filled(da) }, shape(&a)));
        }
        if let Some(p) = bp {
            // SAFETY: every chunk was written above.
            grads.register::<Flex>(p.id, f32_tensor(unsafe { filled(db) }, shape(&a)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{AD, close, random, twin};
    use super::*;
    use burn::tensor::activation::silu;

    /// Values and both gradients against burn's `RmsNorm`, on rows shorter and longer than one
    /// task, a transposed (non-contiguous) input, and without autodiff.
    #[test]
    fn rms_norm_is_burns_with_gradients() {
        for (shape, transposed) in [
            ([3, 5, 8], false),
            ([2, 300, 96], false),
            ([4, 64, 40], true),
        ] {
            let x = random::<AD, 3>(shape);
            let x = match transposed {
                // same shape, strided: [a, c, b] swapped back to [a, b, c]
                true => random::<AD, 3>([shape[0], shape[2], shape[1]]).swap_dims(1, 2),
                false => x,
            }
            .require_grad();
            // a non-trivial γ, a leaf that requires grad
            let gamma = (random::<AD, 1>([shape[2]]) * 0.3 + 1.0).require_grad();
            let (xr, gr) = (twin(&x), twin(&gamma));
            let norm = burn::nn::RmsNorm {
                gamma: burn::module::Param::from_tensor(gr.clone()),
                epsilon: 1e-5,
            };
            let up = random::<AD, 3>(shape);
            let got = rms_norm(&x, &gamma, 1e-5).expect("applies on Autodiff<Flex>");
            let want = norm.forward(xr.clone());
            close(got.clone(), want.clone());
            let g1 = (got * up.clone()).sum().backward();
            let g2 = (want * up).sum().backward();
            close(x.grad(&g1).unwrap(), xr.grad(&g2).unwrap());
            close(gamma.grad(&g1).unwrap(), gr.grad(&g2).unwrap());
        }
        let (x, gamma) = (random::<Flex, 2>([7, 33]), random::<Flex, 1>([33]));
        let norm = burn::nn::RmsNorm {
            gamma: burn::module::Param::from_tensor(gamma.clone()),
            epsilon: 1e-6,
        };
        close(
            rms_norm(&x, &gamma, 1e-6).expect("applies on Flex"),
            norm.forward(x),
        );
    }

    /// Values and both gradients against burn's `silu(a) · b`, on one task and many, with
    /// large gate values (σ saturates) and without autodiff.
    #[test]
    fn swiglu_is_burns_with_gradients() {
        for shape in [[3, 7], [64, 1500]] {
            let a = (random::<AD, 2>(shape) * 6.0).require_grad();
            let b = random::<AD, 2>(shape).require_grad();
            let up = random::<AD, 2>(shape);
            let (ar, br) = (twin(&a), twin(&b));
            let got = swiglu(&a, &b).expect("applies on Autodiff<Flex>");
            let want = silu(ar.clone()) * br.clone();
            close(got.clone(), want.clone());
            let g1 = (got * up.clone()).sum().backward();
            let g2 = (want * up).sum().backward();
            close(a.grad(&g1).unwrap(), ar.grad(&g2).unwrap());
            close(b.grad(&g1).unwrap(), br.grad(&g2).unwrap());
        }
        let (a, b) = (random::<Flex, 3>([2, 5, 9]), random::<Flex, 3>([2, 5, 9]));
        close(swiglu(&a, &b).expect("applies on Flex"), silu(a) * b);
    }

    /// HF's `rotate_half` RoPE with tensor ops, then heads first.
    fn rope_reference<B: Backend>(
        x: Tensor<B, 4>,
        cos: Tensor<B, 4>,
        sin: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let k = x.dims()[3];
        let (x1, x2) = (
            x.clone().narrow(3, 0, k / 2),
            x.clone().narrow(3, k / 2, k / 2),
        );
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        (x * cos + rotated * sin).swap_dims(1, 2)
    }

    /// Values and the gradient against HF's formula with tensor ops, for real angles of
    /// different positions per row, with and without autodiff.
    #[test]
    fn rope_is_hfs_rotate_half_with_gradient() {
        let ([b, s, n, k], dev) = ([2, 5, 3, 8], Default::default());
        let angles = (random::<AD, 3>([b, s, k / 2]) * 3.0)
            .repeat_dim(2, 2)
            .unsqueeze_dim::<4>(2);
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        let x = random::<AD, 4>([b, s, n, k]).require_grad();
        let up = random::<AD, 4>([b, n, s, k]);
        let xr = twin(&x);
        let got = rope(&x, &cos, &sin).expect("applies on Autodiff<Flex>");
        assert_eq!(got.dims(), [b, n, s, k]);
        let want = rope_reference(xr.clone(), cos.clone(), sin.clone());
        close(got.clone(), want.clone());
        let g1 = (got * up.clone()).sum().backward();
        let g2 = (want * up).sum().backward();
        close(x.grad(&g1).unwrap(), xr.grad(&g2).unwrap());
        let plain = |t: Tensor<AD, 4>| Tensor::<Flex, 4>::from_data(t.into_data(), &dev);
        let (x, cos, sin) = (plain(x), plain(cos), plain(sin));
        close(
            rope(&x, &cos, &sin).expect("applies on Flex"),
            rope_reference(x, cos, sin),
        );
    }

    #[test]
    fn mismatched_shapes_fall_back() {
        let (a, b) = (random::<Flex, 2>([2, 3]), random::<Flex, 2>([3, 2]));
        assert!(swiglu(&a, &b).is_none());
        assert!(rms_norm(&a, &random::<Flex, 1>([2]), 1e-6).is_none());
    }
}
