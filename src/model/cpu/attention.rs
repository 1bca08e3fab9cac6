//! Masked scaled-dot-product attention as one op on the CPU backend, with its own backward.
//!
//! burn's version is a batched matmul `q·kᵀ`, a division by `√k`, a `mask_fill`, a softmax (max,
//! subtract, exp, sum, divide), a batched matmul with `v` and a transpose copy that merges the
//! heads: burn-flex runs every element-wise step as its own single-threaded pass, zero-fills and
//! copies each matmul output before gemm overwrites it, and under autodiff each op keeps its
//! inputs and runs its own backward passes. Here one rayon task per (batch row, query head) runs
//!
//! ```text
//! S = q_h · k_gᵀ                  gemm, [s, t]
//! P = softmax(S · scale, masked)  one pass per row, in place (hidden keys get exactly 0)
//! O[:, h·k..(h+1)·k] = P · v_g    gemm, written straight into the merged [b, s, h·k] output
//! ```
//!
//! (`g` the key/value head of query head `h`: grouped-query attention without repeating K/V.)
//! Only `P` `[b, h, s, t]` is kept for backward, which runs one task per (batch row, key/value
//! head) so that the `r = h / g` query heads sharing `k_g`, `v_g` accumulate into them without
//! races:
//!
//! ```text
//! dv_g += Pᵀ · dO_h    dP = dO_h · v_gᵀ    dS = scale · P ∘ (dP − rowsum(dP ∘ P))
//! dq_h  = dS · k_g     dk_g += dSᵀ · q_h
//! ```
//!
//! Hidden keys have `P = 0`, so `dS` is 0 there with no mask in backward. A query row that sees
//! no key at all gets zeros (burn's softmax gives NaN; the decoder never builds such a row). The
//! inputs may have any strides (RoPE's heads-first outputs, `v` as a transposed view, keys as a
//! slice of the KV cache's buffers); gemm reads them in place. `None` where the op does not apply
//! (GPU backends, f16, empty shapes): the caller runs burn's ops.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::Backend;
use burn::tensor::{Bool, Tensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::gemm::{Mat, Threads, f32_tensor, filled, gemm, unfilled};
use super::{AdPrim, Inputs, back, dense, elems, prim};

/// Which keys each query may not see: `[b, s, t]` row-major, true = hidden. Built once per
/// forward on the host and shared by all layers (the same for every head).
#[derive(Debug, Clone)]
pub struct Mask {
    hidden: Arc<[bool]>,
    dims: [usize; 3],
}

impl Mask {
    /// From the decoder's mask tensor `[b, 1, 1, s, t]` (true = hidden); `None` if it has another
    /// shape.
    pub fn of<B: Backend>(mask: &Tensor<B, 5, Bool>) -> Option<Self> {
        let [b, one, one2, s, t] = mask.dims();
        if one != 1 || one2 != 1 {
            return None;
        }
        let hidden = mask.to_data().to_vec::<bool>().ok()?;
        Some(Mask {
            hidden: hidden.into(),
            dims: [b, s, t],
        })
    }

    /// The hidden flags of query `i` of batch row `bi`, one per key column.
    fn row(&self, bi: usize, i: usize) -> &[bool] {
        let [_, s, t] = self.dims;
        &self.hidden[(bi * s + i) * t..][..t]
    }
}

/// `softmax(q·kᵀ · scale, masked) · v` with heads merged: `q` `[b, h, s, k]`, `key`, `v`
/// `[b, g, t, k]` (`g` divides `h`), `mask` `[b, s, t]`, `scale` usually `1/√k` → `[b, s, h·k]`.
/// `None` where the fused op does not apply.
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Mask,
    scale: f32,
) -> Option<Tensor<B, 3>> {
    let ([b, h, s, k], [b2, g, t, k2]) = (q.dims(), key.dims());
    let dims = Dims { b, h, g, s, t, k };
    if b != b2
        || k != k2
        || v.dims() != key.dims()
        || mask.dims != [b, s, t]
        || g == 0
        || h % g != 0
        || [b, s, t, k].contains(&0)
    {
        return None;
    }
    match Inputs::of([prim(q)?, prim(key)?, prim(v)?])? {
        Inputs::Plain([q, key, v]) => {
            let (out, _) = forward(&q, &key, &v, mask, scale, dims);
            back::<B, 3>(Box::new(out))
        }
        Inputs::Tracked([q, key, v]) => {
            let (out, probs) = forward(
                &q.primitive,
                &key.primitive,
                &v.primitive,
                mask,
                scale,
                dims,
            );
            let state = (
                q.primitive.clone(),
                key.primitive.clone(),
                v.primitive.clone(),
                probs,
                dims,
                scale,
            );
            let out: AdPrim = match AttentionOp
                .prepare::<NoCheckpointing>([q.node.clone(), key.node.clone(), v.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            back::<B, 3>(Box::new(out))
        }
    }
}

/// Batch rows, query heads, key/value heads, queries, keys, head dim.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    g: usize,
    s: usize,
    t: usize,
    k: usize,
}

/// The `[rows, cols]` matrix at index `(i, j)` of the first two dims of a 4-D tensor.
fn block(t: &FlexTensor, i: usize, j: usize) -> Mat {
    let l = t.layout();
    let st = l.strides();
    let offset = l.start_offset() as isize + i as isize * st[0] + j as isize * st[1];
    // SAFETY: (i, j) indexes the tensor's first two dims, so the offset is inside its storage.
    let ptr = unsafe { t.storage::<f32>().as_ptr().offset(offset) };
    Mat {
        ptr,
        rs: st[2],
        cs: st[3],
    }
}

/// A contiguous row-major `[rows, ld]` matrix at `ptr`.
fn dense_mat(ptr: *const f32, ld: usize) -> Mat {
    Mat {
        ptr,
        rs: ld as isize,
        cs: 1,
    }
}

/// A pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own disjoint blocks through it.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// → (the merged output `[b, s, h·k]`, the probabilities `P` `[b, h, s, t]`).
fn forward(
    q: &FlexTensor,
    key: &FlexTensor,
    v: &FlexTensor,
    mask: &Mask,
    scale: f32,
    d: Dims,
) -> (FlexTensor, Vec<f32>) {
    let Dims { b, h, g, s, t, k } = d;
    let r = h / g;
    let mut probs = unfilled(b * h * s * t);
    let mut out = unfilled(b * s * h * k);
    let dst = Shared(out.as_mut_ptr().cast());
    probs.par_chunks_mut(s * t).enumerate().for_each(|(bh, p)| {
        let (bi, hi) = (bh / h, bh % h);
        let gi = hi / r;
        let p = p.as_mut_ptr().cast::<f32>();
        // SAFETY: [s, k] · [k, t] into this task's own [s, t] block of P.
        unsafe {
            gemm(
                s,
                t,
                k,
                p,
                t,
                false,
                block(q, bi, hi),
                block(key, bi, gi).t(),
                Threads::One,
            )
        };
        // SAFETY: gemm wrote all s·t elements of the block.
        let pr = unsafe { std::slice::from_raw_parts_mut(p, s * t) };
        for (i, row) in pr.chunks_mut(t).enumerate() {
            softmax_row(row, mask.row(bi, i), scale);
        }
        let o = dst;
        // SAFETY: [s, t] · [t, k] into rows bi·s.., columns hi·k.. of the output: this
        // task's own block (row stride h·k).
        unsafe {
            gemm(
                s,
                k,
                t,
                o.0.add(bi * s * h * k + hi * k),
                h * k,
                false,
                dense_mat(p, t),
                block(v, bi, gi),
                Threads::One,
            )
        };
    });
    // SAFETY: the tasks wrote every block of P and every (row, head) block of the output.
    let (probs, out) = unsafe { (filled(probs), filled(out)) };
    (f32_tensor(out, vec![b, s, h * k]), probs)
}

/// In place: `row ← softmax(row · scale)` over the keys not `hidden`, 0 at hidden ones (all 0
/// when every key is hidden).
fn softmax_row(row: &mut [f32], hidden: &[bool], scale: f32) {
    let max = row
        .iter()
        .zip(hidden)
        .filter(|(_, h)| !**h)
        .map(|(&x, _)| x * scale)
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0f32;
    for (x, &hid) in row.iter_mut().zip(hidden) {
        *x = if hid { 0.0 } else { (*x * scale - max).exp() };
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

#[derive(Debug)]
struct AttentionOp;

impl Backward<Flex, 3> for AttentionOp {
    /// The forward's `q`, `key`, `v` (as given, any strides), `P` `[b, h, s, t]`, dims and scale.
    type State = (FlexTensor, FlexTensor, FlexTensor, Vec<f32>, Dims, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = dense(&grads.consume::<Flex>(&ops.node));
        let (q, key, v, probs, d, scale) = ops.state;
        let Dims { b, h, g, s, t, k } = d;
        let r = h / g;
        let (mut dq, mut dk, mut dv) = (
            unfilled(b * h * s * k),
            unfilled(b * g * t * k),
            unfilled(b * g * t * k),
        );
        let (dq_p, dk_p, dv_p) = (
            Shared(dq.as_mut_ptr().cast()),
            Shared(dk.as_mut_ptr().cast()),
            Shared(dv.as_mut_ptr().cast()),
        );
        let dop = elems(&d_out).as_ptr();
        let dop = Shared(dop.cast_mut());
        (0..b * g).into_par_iter().for_each(|bg| {
            let (bi, gi) = (bg / g, bg % g);
            let (dq_p, dk_p, dv_p, dop) = (dq_p, dk_p, dv_p, dop);
            let mut ds = vec![0f32; s * t];
            // SAFETY (all gemms below): shapes as commented, every operand inside its buffer;
            // this task writes only dk/dv block (bi, gi) and dq blocks (bi, gi·r..(gi+1)·r).
            unsafe {
                let dk_g = dk_p.0.add(bg * t * k);
                let dv_g = dv_p.0.add(bg * t * k);
                for ri in 0..r {
                    let hi = gi * r + ri;
                    let acc = ri > 0;
                    let d_o = dense_mat(dop.0.add(bi * s * h * k + hi * k), h * k); // [s, k]
                    let p = &probs[(bi * h + hi) * s * t..][..s * t];
                    let pm = dense_mat(p.as_ptr(), t); // [s, t]
                    // dv_g [t, k] (+)= Pᵀ [t, s] · dO [s, k]
                    gemm(t, k, s, dv_g, k, acc, pm.t(), d_o, Threads::One);
                    // dP [s, t] = dO [s, k] · v_gᵀ [k, t]
                    gemm(
                        s,
                        t,
                        k,
                        ds.as_mut_ptr(),
                        t,
                        false,
                        d_o,
                        block(&v, bi, gi).t(),
                        Threads::One,
                    );
                    for (dsr, pr) in ds.chunks_mut(t).zip(p.chunks(t)) {
                        let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                        for (x, &pj) in dsr.iter_mut().zip(pr) {
                            *x = scale * pj * (*x - dot);
                        }
                    }
                    let dsm = dense_mat(ds.as_ptr(), t); // [s, t]
                    // dq_h [s, k] = dS [s, t] · k_g [t, k]
                    let dq_h = dq_p.0.add((bi * h + hi) * s * k);
                    gemm(
                        s,
                        k,
                        t,
                        dq_h,
                        k,
                        false,
                        dsm,
                        block(&key, bi, gi),
                        Threads::One,
                    );
                    // dk_g [t, k] (+)= dSᵀ [t, s] · q_h [s, k]
                    gemm(
                        t,
                        k,
                        s,
                        dk_g,
                        k,
                        acc,
                        dsm.t(),
                        block(&q, bi, hi),
                        Threads::One,
                    );
                }
            }
        });
        // SAFETY: the tasks wrote every block of dq, dk and dv (the first query head of each
        // group without accumulating).
        let (dq, dk, dv) = unsafe { (filled(dq), filled(dk), filled(dv)) };
        let [qp, kp, vp] = ops.parents;
        if let Some(p) = qp {
            grads.register::<Flex>(p.id, f32_tensor(dq, vec![b, h, s, k]));
        }
        if let Some(p) = kp {
            grads.register::<Flex>(p.id, f32_tensor(dk, vec![b, g, t, k]));
        }
        if let Some(p) = vp {
            grads.register::<Flex>(p.id, f32_tensor(dv, vec![b, g, t, k]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{AD, close, random, twin};
    use super::*;
    use burn::tensor::TensorData;
    use burn::tensor::activation::softmax;

    /// burn's ops as the decoder ran them before this op: repeat K/V per query head, scores,
    /// scale, mask, softmax, · v, merge heads.
    fn reference<B: Backend>(
        q: Tensor<B, 4>,
        key: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Tensor<B, 5, Bool>,
        scale: f32,
    ) -> Tensor<B, 3> {
        let ([b, h, s, k], g, t) = (q.dims(), key.dims()[1], key.dims()[2]);
        let r = h / g;
        let rep = |x: Tensor<B, 4>| {
            x.reshape([b, g, 1, t, k])
                .expand([b, g, r, t, k])
                .reshape([b, h, t, k])
        };
        let scores = q.matmul(rep(key).swap_dims(2, 3)) * scale;
        let mask = mask.reshape([b, 1, s, t]).expand([b, h, s, t]);
        let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        probs.matmul(rep(v)).swap_dims(1, 2).reshape([b, s, h * k])
    }

    /// Causal with left padding on row 0 (padding keys hidden except on the diagonal), keys
    /// continuing after `t − s` cached columns.
    fn mask_data(b: usize, s: usize, t: usize) -> Vec<bool> {
        let mut m = Vec::new();
        for row in 0..b {
            let pad = if row == 0 { 2.min(t - 1) } else { 0 };
            for i in 0..s {
                let me = t - s + i;
                m.extend((0..t).map(|j| j > me || (j < pad && j != me)));
            }
        }
        m
    }

    /// Values and all three gradients against burn's ops: grouped heads (r = 3) and plain ones,
    /// prefill (s = t) and a decode-like step (s = 1 against a cache slice), `v` as a transposed
    /// view, a multi-task batch, and without autodiff.
    #[test]
    fn attention_is_burns_with_gradients() {
        let dev = Default::default();
        for (b, h, g, s, t, k) in [
            (2, 6, 2, 7, 7, 8),
            (1, 3, 3, 5, 5, 4),
            (3, 4, 1, 1, 9, 16),
            (2, 9, 3, 33, 33, 64),
        ] {
            let scale = 1.0 / (k as f32).sqrt();
            let q = (random::<AD, 4>([b, h, s, k]) * 2.0).require_grad();
            // keys: the first t columns of a longer (cache-like) buffer
            let key = random::<AD, 4>([b, g, t + 3, k])
                .slice([0..b, 0..g, 0..t, 0..k])
                .require_grad();
            // values: a transposed view, as the decoder's [b, s, g, k] → [b, g, s, k]
            let v = random::<AD, 4>([b, t, g, k]).swap_dims(1, 2).require_grad();
            let m = mask_data(b, s, t);
            let mask = Tensor::<AD, 1, Bool>::from_data(TensorData::new(m, [b * s * t]), &dev)
                .reshape([b, 1, 1, s, t]);
            let fused_mask = Mask::of(&mask).expect("[b, 1, 1, s, t]");
            let (qr, kr, vr) = (twin(&q), twin(&key), twin(&v));
            let got = attention(&q, &key, &v, &fused_mask, scale).expect("applies");
            assert_eq!(got.dims(), [b, s, h * k]);
            let want = reference(qr.clone(), kr.clone(), vr.clone(), mask.clone(), scale);
            close(got.clone(), want.clone());
            let up = random::<AD, 3>([b, s, h * k]);
            let g1 = (got * up.clone()).sum().backward();
            let g2 = (want * up).sum().backward();
            close(q.grad(&g1).unwrap(), qr.grad(&g2).unwrap());
            close(key.grad(&g1).unwrap(), kr.grad(&g2).unwrap());
            close(v.grad(&g1).unwrap(), vr.grad(&g2).unwrap());
            let plain = |t: Tensor<AD, 4>| Tensor::<Flex, 4>::from_data(t.into_data(), &dev);
            let (q, key, v) = (plain(q), plain(key), plain(v));
            let mask = Tensor::<Flex, 5, Bool>::from_data(mask.into_data(), &dev);
            close(
                attention(&q, &key, &v, &fused_mask, scale).expect("applies on Flex"),
                reference(q, key, v, mask, scale),
            );
        }
    }

    /// A row that sees no key gets zeros (burn's softmax would give NaN); mismatched shapes fall
    /// back to burn's ops.
    #[test]
    fn empty_rows_are_zero_and_mismatches_fall_back() {
        let dev = Default::default();
        let (q, key, v) = (
            random::<Flex, 4>([1, 2, 2, 4]),
            random::<Flex, 4>([1, 1, 3, 4]),
            random::<Flex, 4>([1, 1, 3, 4]),
        );
        let m = vec![true, true, true, false, true, false];
        let mask = Tensor::<Flex, 1, Bool>::from_data(TensorData::new(m, [6]), &dev)
            .reshape([1, 1, 1, 2, 3]);
        let mask = Mask::of(&mask).unwrap();
        let out = attention(&q, &key, &v, &mask, 0.5).unwrap().into_data();
        let out = out.to_vec::<f32>().unwrap();
        assert!(out[..8].iter().all(|&x| x == 0.0), "{out:?}");
        assert!(
            out[8..].iter().all(|x| x.is_finite() && *x != 0.0),
            "{out:?}"
        );
        let three_heads = random::<Flex, 4>([1, 3, 2, 4]);
        let two_kv = random::<Flex, 4>([1, 2, 3, 4]);
        assert!(attention(&three_heads, &two_kv, &two_kv, &mask, 0.5).is_none());
        assert!(attention(&q, &key, &random::<Flex, 4>([1, 1, 2, 4]), &mask, 0.5).is_none());
    }
}
