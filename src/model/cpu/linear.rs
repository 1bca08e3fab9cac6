//! Linear layers (`[m, k] × [k, n]`, no bias) on the CPU backend, gemm writing straight into
//! outputs that were never zero-filled.
//!
//! burn-flex allocates every matmul output with `FlexTensor::empty`, which zero-fills a byte
//! vector and then copies it into an aligned allocation: a memset and a memcpy of the whole output
//! before gemm overwrites it. For training's projections (forward `y`, backward `dx` and `dW`)
//! that was ≈ 6 % of a SmolLM2 forward+backward (`perf`, `memmove`/`memset` under
//! `FlexTensor::empty` in `matmul_gemm`). [`matmul`] runs the same gemm with the same
//! parallelism into uninitialised buffers that gemm writes once (`read_dst = false`), with its own
//! backward under autodiff: `dx = dy · Wᵀ`, `dW = xᵀ · dy`. The arithmetic is gemm's in both
//! cases, so results equal burn's `Linear` bit for bit (test). Elsewhere (GPU backends, f16,
//! `k = 0`) it returns `None` and the caller runs burn's op.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::{Flex, FlexTensor};

use super::gemm::{Mat, Threads, dims, f32_tensor, filled, gemm, unfilled};
use super::{AdPrim, back, f32s, prim};

/// `x` `[m, k]` × `w` `[k, n]` → `[m, n]` on the CPU backend (with or without autodiff); `None`
/// elsewhere.
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([m, k], [k2, _]) = (x.dims(), w.dims());
    if k == 0 || k != k2 || m == 0 {
        return None;
    }
    let (xp, wp) = (prim(x)?, prim(w)?);
    if let (Some(xf), Some(wf)) = (
        xp.downcast_ref::<FlexTensor>(),
        wp.downcast_ref::<FlexTensor>(),
    ) {
        if !f32s(xf, wf) {
            return None;
        }
        return back::<B, 2>(Box::new(product(
            Mat::of(xf),
            Mat::of(wf),
            [m, k, dims(wf)[1]],
        )));
    }
    let (xa, wa) = (xp.downcast_ref::<AdPrim>()?, wp.downcast_ref::<AdPrim>()?);
    if !f32s(&xa.primitive, &wa.primitive) {
        return None;
    }
    let n = dims(&wa.primitive)[1];
    let y = product(Mat::of(&xa.primitive), Mat::of(&wa.primitive), [m, k, n]);
    let out: AdPrim = match Linear
        .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xa.primitive.clone(), wa.primitive.clone()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    back::<B, 2>(Box::new(out))
}

/// `a` `[m, k]` · `b` `[k, n]` into a new contiguous `[m, n]` tensor (k > 0).
fn product(a: Mat, b: Mat, [m, k, n]: [usize; 3]) -> FlexTensor {
    debug_assert!(k > 0);
    let mut buf = unfilled(m * n);
    // SAFETY: a and b are valid [m, k] and [k, n] matrices; buf holds m·n floats, row stride n.
    unsafe {
        gemm(
            m,
            n,
            k,
            buf.as_mut_ptr().cast(),
            n,
            false,
            a,
            b,
            Threads::All,
        )
    };
    // SAFETY: with read_dst = false and k > 0 gemm wrote every element of the m × n output.
    let buf = unsafe { filled(buf) };
    f32_tensor(buf, vec![m, n])
}

#[derive(Debug)]
struct Linear;

impl Backward<Flex, 2> for Linear {
    /// The forward's `x` `[m, k]` and `w` `[k, n]`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w) = ops.state;
        let ([m, k], [_, n]) = (dims(&x), dims(&w));
        let (dy, x, w) = (Mat::of(&dy), Mat::of(&x), Mat::of(&w));
        let [xp, wp] = ops.parents;
        if let Some(p) = xp {
            // dx [m, k] = dy [m, n] · wᵀ [n, k]
            let dx = match n {
                0 => FlexTensor::zeros(Shape::from(vec![m, k]), DType::F32),
                _ => product(dy, w.t(), [m, n, k]),
            };
            grads.register::<Flex>(p.id, dx);
        }
        if let Some(p) = wp {
            // dw [k, n] = xᵀ [k, m] · dy [m, n]
            grads.register::<Flex>(p.id, product(x.t(), dy, [k, m, n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    type AD = Autodiff<Flex>;

    #[test]
    fn linear_equals_burns_matmul_with_gradients() {
        let dev = Default::default();
        for (m, k, n) in [(7, 5, 3), (300, 64, 130), (1, 9, 1)] {
            let x = Tensor::<AD, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev)
                .require_grad();
            let w = Tensor::<AD, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev)
                .require_grad();
            let g = Tensor::<AD, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev);
            let ours = matmul(&x, &w).expect("applies on Autodiff<Flex>");
            let want = x.clone().matmul(w.clone());
            assert_eq!(ours.to_data(), want.to_data());
            let grads = (ours * g.clone()).sum().backward();
            let (dx, dw) = (x.grad(&grads).unwrap(), w.grad(&grads).unwrap());
            let grads = (want * g).sum().backward();
            dx.to_data().assert_approx_eq::<f32>(
                &x.grad(&grads).unwrap().to_data(),
                burn::tensor::Tolerance::rel_abs(1e-5, 1e-4),
            );
            dw.to_data().assert_approx_eq::<f32>(
                &w.grad(&grads).unwrap().to_data(),
                burn::tensor::Tolerance::rel_abs(1e-5, 1e-4),
            );
            // a strided operand (a transposed view) works too
            let wt = Tensor::<Flex, 2>::random([n, k], Distribution::Default, &dev);
            let xi = x.clone().inner();
            let ours = matmul(&xi, &wt.clone().transpose()).expect("applies on Flex");
            assert_eq!(ours.to_data(), xi.matmul(wt.transpose()).to_data());
        }
    }
}
