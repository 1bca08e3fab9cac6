//! Token log-probabilities through the LM head without keeping `[tokens, vocab]` logits.
//!
//! Every training loss here needs `log p(target)` at some positions, i.e.
//! `logit[target] − logsumexp(logits)` with `logits = hidden · Wᵀ` (`W` `[V, d]`: the tied
//! embeddings, or the untied head transposed). Written with tensor ops under autodiff, each
//! chunk's `[rows, V]` logits, their shifted exponentials and the backward's broadcasts all live
//! until backward — for SmolLM2 (V = 49 152) that is ≈ 200 KiB per token, several times over — and
//! each element-wise pass over them runs single-threaded on the CPU backend.
//!
//! [`token_logprobs`] is one fused op on the CPU backend (burn-flex, f32), with and without
//! autodiff, in the way of Liger-Kernel's fused linear cross-entropy but for per-token outputs
//! (the GRPO loss is not a plain mean of them, so the gradient cannot be folded into the forward):
//! - forward: `logits = h · Wᵀ` (gemm, both cores) for chunks of rows, then one parallel pass
//!   per row for the max, `logsumexp`, the target's logit and the arg-max.
//! - backward (upstream gradient `g` `[N]`): the logits turn in place into
//!   `dlogits = g · (onehot(target) − softmax)` (one parallel pass), then `dh = dlogits · W` and
//!   `dW += dlogitsᵀ · h` (gemm, accumulated over chunks in place).
//!
//! While all `N` rows' logits fit in [`LOGITS_BUDGET`] they are one chunk, and that buffer is
//! the only thing kept for backward (one `[N, V]` tensor, where the tensor-op version kept
//! several). Past the budget the rows go in chunks of that size and backward recomputes each
//! chunk's logits (one more `[N, d] × [d, V]` matmul) instead of keeping any: memory stays
//! bounded however long the completions. Either way about ten single-threaded passes over
//! `[N, V]` become two parallel ones. Elsewhere (GPU backends, f16) the caller's tensor-op
//! version runs.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::Backend;
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::gemm::{Mat, Threads, dims, f32_tensor, gemm};
use super::{AdPrim, back, f32s, prim};

/// Bytes of logits computed at once (and, when all rows fit, kept for backward): SmolLM2
/// (V = 49 152) fits 1 365 rows. Fewer, larger chunks also matter for speed: gemm packs the
/// `[V, d]` head once per chunk.
pub const LOGITS_BUDGET: usize = 256 << 20;

/// Rows per chunk for a vocabulary of `v`.
fn chunk_rows(v: usize) -> usize {
    (LOGITS_BUDGET / (4 * v.max(1))).max(1)
}

/// `log_softmax(h · Wᵀ)[target]` per row and whether the target is the arg-max: `hidden`
/// `[N, d]`, `weight` `[V, d]` (any strides), `targets` `[N]` in `0..V` → (`[N]`, `[N]` bools as
/// a Vec). `None` where the fused op does not apply (not the CPU backend, not f32): the caller
/// runs its tensor-op version.
pub fn token_logprobs<B: Backend>(
    hidden: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 1>, Vec<bool>)> {
    chunked(hidden, weight, targets, chunk_rows(weight.dims()[0]))
}

/// [`token_logprobs`] with `rows` rows per chunk.
fn chunked<B: Backend>(
    hidden: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
    rows: usize,
) -> Option<(Tensor<B, 1>, Vec<bool>)> {
    let (h, w) = (prim(hidden)?, prim(weight)?);
    let ([n, _], [v, _]) = (hidden.dims(), weight.dims());
    // inference: the CPU backend itself
    if let (Some(hf), Some(wf)) = (
        h.downcast_ref::<FlexTensor>(),
        w.downcast_ref::<FlexTensor>(),
    ) {
        if !f32s(hf, wf) {
            return None;
        }
        let tgt = target_ids(targets, v);
        let out = forward(hf, wf, &tgt, rows, false);
        return Some((
            back::<B, 1>(Box::new(f32_tensor(out.logprobs, vec![n])))?,
            out.hits,
        ));
    }
    // training: autodiff over the CPU backend
    let (ha, wa) = (h.downcast_ref::<AdPrim>()?, w.downcast_ref::<AdPrim>()?);
    if !f32s(&ha.primitive, &wa.primitive) {
        return None;
    }
    let tgt = target_ids(targets, v);
    // (untracked, the kept logits are dropped below with the rest)
    let out = forward(&ha.primitive, &wa.primitive, &tgt, rows, true);
    let lp = f32_tensor(out.logprobs, vec![n]);
    let prim: AdPrim = match FusedHead
        .prepare::<NoCheckpointing>([ha.node.clone(), wa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                hidden: ha.primitive.clone(),
                weight: wa.primitive.clone(),
                targets: tgt,
                lse: out.lse,
                rows,
                logits: out.logits.map(Arc::new),
            },
            lp,
        ),
        OpsKind::UnTracked(prep) => prep.finish(lp),
    };
    Some((back::<B, 1>(Box::new(prim))?, out.hits))
}

fn target_ids<B: Backend>(targets: &Tensor<B, 1, Int>, v: usize) -> Vec<usize> {
    let data = targets.to_data().convert::<i64>();
    data.as_slice::<i64>()
        .expect("i64 targets")
        .iter()
        .map(|&t| {
            assert!(
                (0..v as i64).contains(&t),
                "target token id {t} outside the vocabulary (0..{v})"
            );
            t as usize
        })
        .collect()
}

struct Forward {
    logprobs: Vec<f32>,
    lse: Vec<f32>,
    hits: Vec<bool>,
    /// All rows' logits `[N, V]`, when they were one chunk and `keep` asked for them.
    logits: Option<Vec<f32>>,
}

/// `logits[c, V]` of rows `r0..r0 + c` into `buf`.
fn logits(h: Mat, w: Mat, r0: usize, c: usize, [v, d]: [usize; 2], buf: &mut [f32]) {
    // SAFETY: h has ≥ r0 + c rows of d, w is [V, d]; buf holds c·V floats.
    unsafe {
        gemm(
            c,
            v,
            d,
            buf.as_mut_ptr(),
            v,
            false,
            h.row(r0),
            w.t(),
            Threads::All,
        )
    }
}

/// Max, in 16 lanes so that it vectorises.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut it = row.chunks_exact(16);
    for c in &mut it {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    it.remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// (log p(target), logsumexp, target is the arg-max) of one row of logits.
fn row_stats(row: &[f32], t: usize) -> (f32, f32, bool) {
    let max = row_max(row);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let lse = max + sum.ln();
    // arg-max = the first position holding the max (as argmax picks)
    let hit = row[t] == max && row[..t].iter().all(|&x| x != max);
    (row[t] - lse, lse, hit)
}

/// `keep`: hand back the logits for backward when all rows are one chunk.
fn forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    targets: &[usize],
    rows: usize,
    keep: bool,
) -> Forward {
    let hidden = hidden.to_contiguous();
    let ([n, d], [v, d2]) = (dims(&hidden), dims(weight));
    assert!(
        d == d2 && targets.len() == n,
        "fused LM head: shapes disagree"
    );
    let (h, w) = (Mat::of(&hidden), Mat::of(weight));
    let mut out = Forward {
        logprobs: vec![0.0; n],
        lse: vec![0.0; n],
        hits: vec![false; n],
        logits: None,
    };
    let mut buf = vec![0f32; rows.min(n) * v];
    for r0 in (0..n).step_by(rows) {
        let c = rows.min(n - r0);
        let buf = &mut buf[..c * v];
        logits(h, w, r0, c, [v, d], buf);
        let stats: Vec<(f32, f32, bool)> = buf
            .par_chunks(v)
            .zip(&targets[r0..r0 + c])
            .map(|(row, &t)| row_stats(row, t))
            .collect();
        for (i, (lp, lse, hit)) in stats.into_iter().enumerate() {
            (out.logprobs[r0 + i], out.lse[r0 + i], out.hits[r0 + i]) = (lp, lse, hit);
        }
    }
    if keep && n <= rows {
        out.logits = Some(buf);
    }
    out
}

#[derive(Debug)]
struct FusedHead;

#[derive(Clone, Debug)]
struct State {
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: Vec<usize>,
    lse: Vec<f32>,
    rows: usize,
    /// The forward's logits `[N, V]` when they were one chunk (else backward recomputes them).
    logits: Option<Arc<Vec<f32>>>,
}

impl Backward<Flex, 2> for FusedHead {
    type State = State;

    fn backward(self, ops: Ops<State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [hp, wp] = ops.parents;
        let (dh, dw) = backward(ops.state, g.storage::<f32>(), hp.is_some(), wp.is_some());
        if let (Some(p), Some(dh)) = (hp, dh) {
            grads.register::<Flex>(p.id, dh);
        }
        if let (Some(p), Some(dw)) = (wp, dw) {
            grads.register::<Flex>(p.id, dw);
        }
    }
}

/// `dh` `[N, d]` and `dW` `[V, d]` (each only when wanted) for upstream gradient `g` `[N]`.
fn backward(
    s: State,
    g: &[f32],
    want_h: bool,
    want_w: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let hidden = s.hidden.to_contiguous();
    let ([n, d], [v, _]) = (dims(&hidden), dims(&s.weight));
    let (h, w) = (Mat::of(&hidden), Mat::of(&s.weight));
    // every element is written by the first chunk (no chunk at all: zeros)
    let alloc = |shape: Vec<usize>| match n {
        0 => FlexTensor::zeros(Shape::from(shape), DType::F32),
        _ => FlexTensor::empty(Shape::from(shape), DType::F32),
    };
    let mut dh = want_h.then(|| alloc(vec![n, d]));
    let mut dw = want_w.then(|| alloc(vec![v, d]));
    let kept = s
        .logits
        .map(|l| Arc::try_unwrap(l).unwrap_or_else(|l| (*l).clone()));
    let recompute = kept.is_none();
    let mut buf = kept.unwrap_or_else(|| vec![0f32; s.rows.min(n) * v]);
    for r0 in (0..n).step_by(s.rows) {
        let c = s.rows.min(n - r0);
        let buf = &mut buf[..c * v];
        if recompute {
            logits(h, w, r0, c, [v, d], buf);
        }
        buf.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
            let (gi, lse, t) = (g[r0 + i], s.lse[r0 + i], s.targets[r0 + i]);
            for x in row.iter_mut() {
                *x = -gi * (*x - lse).exp();
            }
            row[t] += gi;
        });
        let dl = Mat {
            ptr: buf.as_ptr(),
            rs: v as isize,
            cs: 1,
        };
        if let Some(dh) = dh.as_mut() {
            let dst = dh.storage_mut::<f32>()[r0 * d..].as_mut_ptr();
            // SAFETY: dh is [N, d] contiguous; dl [c, V]; w [V, d].
            unsafe { gemm(c, d, v, dst, d, false, dl, w, Threads::All) }
        }
        if let Some(dw) = dw.as_mut() {
            let dst = dw.storage_mut::<f32>().as_mut_ptr();
            // SAFETY: dw is [V, d] contiguous; dlᵀ [V, c]; h rows r0..r0 + c [c, d].
            unsafe { gemm(v, d, c, dst, d, r0 > 0, dl.t(), h.row(r0), Threads::All) }
        }
    }
    (dh, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type AD = Autodiff<Flex>;

    /// The same log-probs with burn's own tensor ops (the reference).
    fn reference<B: Backend>(
        h: Tensor<B, 2>,
        w: Tensor<B, 2>,
        t: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let n = h.dims()[0];
        let lp = log_softmax(h.matmul(w.transpose()), 1);
        lp.gather(1, t.reshape([n, 1])).reshape([n])
    }

    fn inputs(
        n: usize,
        v: usize,
        d: usize,
        untied: bool,
    ) -> (
        Tensor<AD, 2>,
        Tensor<AD, 2>,
        Tensor<AD, 1, Int>,
        Tensor<AD, 1>,
    ) {
        let dev = Default::default();
        let h =
            Tensor::<AD, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &dev).require_grad();
        // untied heads arrive as the transpose of a [d, V] weight: a strided view
        let w =
            match untied {
                false => Tensor::<AD, 2>::random([v, d], Distribution::Normal(0.0, 0.5), &dev)
                    .require_grad(),
                true => Tensor::<AD, 2>::random([d, v], Distribution::Normal(0.0, 0.5), &dev)
                    .require_grad(),
            };
        let ids: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
        let t = Tensor::<AD, 1, Int>::from_data(TensorData::new(ids, [n]), &dev);
        // a non-uniform upstream gradient, as the GRPO loss gives
        let g = Tensor::<AD, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
        (h, w, t, g)
    }

    fn check(n: usize, v: usize, d: usize, untied: bool, rows: usize) {
        let (h, w_param, t, g) = inputs(n, v, d, untied);
        let w = || match untied {
            true => w_param.clone().transpose(),
            false => w_param.clone(),
        };
        // even rows target their arg-max token and odd rows the next one, so both hit flags
        // occur whatever the random draw (random targets made a miss-only or hit-only case flaky)
        let argmax = h.clone().matmul(w().transpose()).argmax(1).reshape([n]);
        let even = Tensor::<AD, 1, Int>::arange(0..n as i64, &h.device())
            .remainder_scalar(2)
            .equal_elem(0);
        let next = argmax.clone().add_scalar(1).remainder_scalar(v as i64);
        let t = t
            .mask_where(even.clone(), argmax.clone())
            .mask_where(even.bool_not(), next);
        let (lp, hits) = chunked(&h, &w(), &t, rows).expect("applies on Autodiff<Flex>");
        let want = reference(h.clone(), w(), t.clone());
        lp.to_data()
            .assert_approx_eq::<f32>(&want.to_data(), Tolerance::rel_abs(1e-5, 1e-4));
        let want_hits = argmax
            .equal(t.clone())
            .into_data()
            .to_vec::<bool>()
            .unwrap();
        assert_eq!(hits, want_hits);
        assert!(hits.iter().any(|&x| x) && (n < 2 || hits.iter().any(|&x| !x)));

        let grads = (lp * g.clone()).sum().backward();
        let (dh, dw) = (h.grad(&grads).unwrap(), w_param.grad(&grads).unwrap());
        let grads = (want * g).sum().backward();
        let (rh, rw) = (h.grad(&grads).unwrap(), w_param.grad(&grads).unwrap());
        dh.to_data()
            .assert_approx_eq::<f32>(&rh.to_data(), Tolerance::rel_abs(1e-5, 1e-4));
        dw.to_data()
            .assert_approx_eq::<f32>(&rw.to_data(), Tolerance::rel_abs(1e-5, 1e-4));
    }

    #[test]
    fn fused_head_matches_tensor_ops_with_gradients() {
        // one chunk: the forward's logits reused in backward
        check(300, 97, 24, false, chunk_rows(97));
        check(40, 50, 16, true, chunk_rows(50));
        // several chunks (the last one short): logits recomputed, dW accumulated across chunks
        check(300, 97, 24, false, 128);
        check(133, 50, 16, true, 64);
        check(3, 11, 8, false, 1);
    }

    #[test]
    fn fused_head_runs_without_autodiff() {
        let dev = Default::default();
        let h = Tensor::<Flex, 2>::random([9, 8], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 2>::random([13, 8], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new((0..9i64).collect(), [9]), &dev);
        let (lp, _) = token_logprobs(&h, &w, &t).expect("applies on Flex");
        let want = reference(h, w, t);
        lp.to_data()
            .assert_approx_eq::<f32>(&want.to_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn fused_head_rejects_out_of_vocabulary_targets() {
        let dev = Default::default();
        let h = Tensor::<Flex, 2>::zeros([2, 4], &dev);
        let w = Tensor::<Flex, 2>::zeros([5, 4], &dev);
        let t = Tensor::<Flex, 1, Int>::from_data(TensorData::new(vec![1i64, 5], [2]), &dev);
        let _ = token_logprobs(&h, &w, &t);
    }
}
