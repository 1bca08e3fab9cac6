//! AdamW's step for one parameter as one parallel pass over its buffer and its two moments
//! (burn's tensor-op step runs about a dozen single-threaded passes; see `train::optim`).

use burn::prelude::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{from_flex, into_flex};

/// One step's scalars (`train::optim::AdamW` fills them in).
pub(crate) struct Coefficients {
    pub(crate) beta_1: f32,
    pub(crate) beta_2: f32,
    pub(crate) f1: f32,
    pub(crate) f2: f32,
    /// Bias corrections `1 − βᵗ`.
    pub(crate) c1: f32,
    pub(crate) c2: f32,
    pub(crate) eps: f32,
    /// `1 − lr·λ` when weight decay is on.
    pub(crate) keep: Option<f32>,
    pub(crate) lr: f32,
    /// First step: the moments start from `(1−β)·g`, not from a decayed zero.
    pub(crate) first: bool,
}

impl Coefficients {
    /// burn's element-wise arithmetic, operation for operation (no fused multiply-add), so the
    /// result is bit-identical to the tensor-op step.
    fn apply(&self, p: &mut [f32], m1: &mut [f32], m2: &mut [f32], g: &[f32]) {
        for (((p, m1), m2), &g) in p.iter_mut().zip(m1).zip(m2).zip(g) {
            if self.first {
                *m1 = g * self.f1;
                *m2 = (g * g) * self.f2;
            } else {
                *m1 = *m1 * self.beta_1 + g * self.f1;
                *m2 = *m2 * self.beta_2 + (g * g) * self.f2;
            }
            let delta = (*m1 / self.c1) / ((*m2 / self.c2).sqrt() + self.eps);
            let decayed = match self.keep {
                Some(k) => *p * k,
                None => *p,
            };
            *p = decayed - delta * self.lr;
        }
    }
}

/// Parameter, gradient and moments; `None` moments on the first step.
type Inputs<B, const D: usize> = (
    Tensor<B, D>,
    Tensor<B, D>,
    Option<(Tensor<B, D>, Tensor<B, D>)>,
);

/// One AdamW step of `tensor` with `grad` and the moments (zeros when `None`) → the new
/// parameter and moments, written in place where nothing else holds the buffers. `Err` hands the
/// inputs back where the kernel does not apply: not the CPU backend, not f32, a tensor that is
/// not contiguous or not its whole buffer (what is written in place must be), generic kernels
/// forced.
#[allow(clippy::type_complexity)]
pub(crate) fn adamw<B: Backend, const D: usize>(
    c: &Coefficients,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
) -> Result<(Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)), Inputs<B, D>> {
    let n = tensor.shape().num_elements();
    // f32, contiguous; what is written in place must also be its whole buffer (no view)
    let readable = |t: &Tensor<B, D>| {
        into_flex(t.clone()).is_ok_and(|f| f.as_slice::<f32>().is_some_and(|s| s.len() == n))
    };
    let writable = |t: &Tensor<B, D>| {
        readable(t) && into_flex(t.clone()).is_ok_and(|f| f.storage::<f32>().len() == n)
    };
    let fits = writable(&tensor)
        && readable(&grad)
        && moments
            .as_ref()
            .is_none_or(|(m1, m2)| writable(m1) && writable(m2));
    if !fits {
        return Err((tensor, grad, moments));
    }
    let flex = |t: Tensor<B, D>| into_flex(t).ok().expect("checked above");
    let shape = tensor.shape();
    let (mut p, g) = (flex(tensor), flex(grad));
    let (mut m1, mut m2) = match moments {
        Some((m1, m2)) => (flex(m1), flex(m2)),
        None => {
            let zeros = || burn_flex::FlexTensor::zeros(shape.clone(), burn::tensor::DType::F32);
            (zeros(), zeros())
        }
    };
    let gs = g.as_slice::<f32>().expect("checked above");
    // storage_mut writes in place when the buffer is not shared, else copies it first
    let (ps, m1s, m2s) = (
        p.storage_mut::<f32>(),
        m1.storage_mut::<f32>(),
        m2.storage_mut::<f32>(),
    );
    const CHUNK: usize = 1 << 16;
    ps.par_chunks_mut(CHUNK)
        .zip(m1s.par_chunks_mut(CHUNK))
        .zip(m2s.par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK))
        .for_each(|(((p, m1), m2), g)| c.apply(p, m1, m2, g));
    let back = |f| from_flex::<B, D>(f).expect("a flex tensor on the flex backend");
    Ok((back(p), (back(m1), back(m2))))
}
