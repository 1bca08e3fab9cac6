//! The CPU backend's own kernels, behind one seam.
//!
//! Every backend can run the decoder on burn's generic tensor ops, written once in
//! [`super::ops`]: that is the path CUDA and wgpu take. On the CPU backend (burn-flex) most of a
//! forward and backward is replaced by the kernels here, each documented in its file with what
//! it replaces and what it measured:
//!
//! | op | kernel | generic version in `model::ops` |
//! |---|---|---|
//! | linear layers (training, prefill) | [`linear`] gemm into unfilled buffers, own backward | burn's `Linear` |
//! | decode-step projections and LM head | [`decode_matmul`] streaming kernel | `x.matmul(w)` |
//! | RMSNorm, SwiGLU, RoPE | [`rms_norm`], [`swiglu`], [`rope`] one pass each, own backward | burn's `RmsNorm`, `silu(a)·b`, `x·cos + (x·R)·sin` |
//! | attention | [`attention`] one task per (row, head), own backward | `softmax(q·kᵀ/√k, masked)·v` |
//! | LM-head log-probs | [`token_logprobs`] chunked, own backward | chunked `gather − logsumexp` |
//! | AdamW | [`adamw`] one parallel pass per parameter | burn's tensor-op step (`train::optim`) |
//! | finiteness scan | [`any_nonfinite`] | `is_finite` count (`model::weights`) |
//!
//! **The convention.** Every entry point takes `Tensor<B, D>` of any backend and returns an
//! `Option` (or a `Result` handing its inputs back): `Some` where its kernel applies — the CPU
//! backend, with or without autodiff, f32, the shapes it supports — `None` elsewhere, and the
//! caller runs the generic version. Reaching the burn-flex tensor behind a `Tensor` goes through
//! one helper ([`prim`] for the type-erased primitive, [`into_flex`] for an owned buffer).
//!
//! **The switch.** That helper honours [`kernels`]: with [`Kernels::Generic`] nothing here
//! applies and the CPU backend runs exactly the ops a GPU backend runs, so the GPU path is tested
//! on CPU. `T1_KERNELS=generic` in the environment forces it for the process (`fused`, the
//! default, or unset: the kernels); [`scoped`] sets it for the calling thread only (tests compare
//! both paths in one process). The choice is read where an op is built, so the backward of a
//! forward follows the forward's path.

mod adamw;
mod attention;
mod decode;
mod fused;
mod gemm;
mod head;
pub use head::LOGITS_BUDGET;
mod linear;
/// `T1_GEMM_SPLIT=0`: gemm's own threading for every product instead of one gemm per core.
pub use gemm::{
    SPLIT_ENV as GEMM_SPLIT_ENV, set_split as set_gemm_split, split_on as gemm_split_on,
};
/// The CPU linear layer (`x · w`, gemm into never-zeroed outputs; `examples/profile gemm` times it).
pub use linear::matmul as linear_matmul;

use std::any::Any;
use std::cell::Cell;
use std::sync::{Once, OnceLock};

use burn::prelude::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

pub(crate) use adamw::{Coefficients as AdamwCoefficients, adamw};
pub(crate) use attention::{Mask, attention};
pub(crate) use decode::matmul as decode_matmul;
pub(crate) use fused::{applies, rms_norm, rope, swiglu};
pub(crate) use head::token_logprobs;
pub(crate) use linear::matmul as linear;

/// Which implementation of the decoder's ops runs on the CPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// This folder's kernels where they apply (the default).
    Fused,
    /// burn's generic tensor ops only: what GPU backends run.
    Generic,
}

impl Kernels {
    /// The environment variable that picks the process-wide choice.
    pub const ENV: &'static str = "T1_KERNELS";

    /// The choice named by `T1_KERNELS` (`fused`, `generic`; unset or empty: fused).
    pub fn from_env() -> crate::Result<Self> {
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Kernels::Fused),
            Err(std::env::VarError::NotUnicode(v)) => Err(crate::Error::Usage(format!(
                "{}={v:?}: expected `fused` or `generic`",
                Self::ENV
            ))),
            Ok(v) => match v.trim() {
                "" | "fused" => Ok(Kernels::Fused),
                "generic" => Ok(Kernels::Generic),
                other => Err(crate::Error::Usage(format!(
                    "{}={other:?}: expected `fused` (the CPU backend's kernels, the default) or \
                     `generic` (burn's generic ops, as on GPU backends)",
                    Self::ENV
                ))),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fused => "fused",
            Kernels::Generic => "generic",
        }
    }
}

static PROCESS: OnceLock<Kernels> = OnceLock::new();

thread_local! {
    static SCOPED: Cell<Option<Kernels>> = const { Cell::new(None) };
}

/// The choice in force on this thread: [`scoped`]'s, else `T1_KERNELS`'s (read once; a value
/// it cannot parse counts as the default here — `main` refuses it at start with exit 2).
pub fn kernels() -> Kernels {
    SCOPED
        .get()
        .unwrap_or_else(|| *PROCESS.get_or_init(|| Kernels::from_env().unwrap_or(Kernels::Fused)))
}

/// Runs `f` with `k` in force on the calling thread (restored afterwards, also on a panic).
pub fn scoped<R>(k: Kernels, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.set(self.0);
        }
    }
    let _restore = Restore(SCOPED.replace(Some(k)));
    f()
}

/// Whether `t` holds a NaN or an infinity, by one parallel scan of its buffer; `None` where the
/// scan does not apply (another backend, not contiguous f32).
pub(crate) fn any_nonfinite<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<bool> {
    use rayon::prelude::*;
    let f = into_flex(t).ok()?;
    let s = f.as_slice::<f32>()?;
    Some(s.par_iter().any(|x| !x.is_finite()))
}

/// Tunes glibc's allocator for the CPU backend's allocation pattern (call once, early; a no-op
/// after the first call and on other platforms).
///
/// Every op of burn-flex allocates its output, and a training step allocates and frees the same
/// hundreds of MiB of activations and gradients over and over. glibc serves blocks above its mmap
/// threshold with fresh mappings and trims the heap top on free, so each step page-faults its
/// buffers in again (≈ 2 M page faults per SmolLM2 GRPO step). Raising both thresholds keeps
/// freed memory in the heap for the next step: on the profile's GRPO step, page faults halved
/// and wall time fell ≈ 13 % (`perf stat`). Peak RSS is unchanged (the memory was needed anyway);
/// what changes is that freed memory stays mapped until the process exits.
pub fn tune_allocator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; called before heavy allocation.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`; a no-op elsewhere).
/// With [`tune_allocator`]'s thresholds freed memory otherwise stays mapped: after a one-off
/// release of hundreds of MiB — the f32 weights a half-precision base replaced, scattered
/// between the new half buffers where activations of other sizes cannot reuse them — that would
/// stay in the process's resident memory for the whole run.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `t` as the burn-flex tensor it is on the CPU backend (`Err(t)` back on any other backend).
/// Owning it (not a clone) lets a kernel write into its buffer when nothing else holds it.
/// With generic kernels forced ([`Kernels::Generic`]) it hands every tensor back.
pub(crate) fn into_flex<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<FlexTensor, Tensor<B, D>> {
    if kernels() == Kernels::Generic {
        return Err(t);
    }
    match t.into_primitive() {
        TensorPrimitive::Float(p) => match (Box::new(p) as Box<dyn Any>).downcast::<FlexTensor>() {
            Ok(f) => Ok(*f),
            Err(p) => {
                let p = p
                    .downcast::<B::FloatTensorPrimitive>()
                    .expect("the primitive is the backend's float tensor");
                Err(Tensor::from_primitive(TensorPrimitive::Float(*p)))
            }
        },
        q => Err(Tensor::from_primitive(q)),
    }
}

/// A burn-flex tensor back as a `Tensor<B, D>` (None unless `B` is the CPU backend).
pub(crate) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    back(Box::new(t))
}

/// The float primitive of the CPU backend under autodiff (what the fused ops downcast to).
pub(crate) type AdPrim = burn::tensor::ops::FloatTensor<burn::backend::Autodiff<burn_flex::Flex>>;

/// The float primitive behind `t`, type-erased for downcasting (a [`FlexTensor`] on the CPU
/// backend, an autodiff tensor over it under autodiff; None for quantized tensors, and for every
/// tensor while generic kernels are forced: no fused op applies then).
pub(crate) fn prim<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Box<dyn Any>> {
    if kernels() == Kernels::Generic {
        return None;
    }
    match t.clone().into_primitive() {
        TensorPrimitive::Float(p) => Some(Box::new(p)),
        _ => None,
    }
}

/// A type-erased primitive back as a `Tensor<B, D>` (None unless it is `B`'s float primitive).
pub(crate) fn back<B: Backend, const D: usize>(p: Box<dyn Any>) -> Option<Tensor<B, D>> {
    let p = p.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*p)))
}

/// Both tensors hold f32.
pub(crate) fn f32s(h: &FlexTensor, w: &FlexTensor) -> bool {
    h.dtype() == DType::F32 && w.dtype() == DType::F32
}

/// An op's input primitives: all plain burn-flex f32 tensors (no autodiff), or all autodiff
/// tensors over them.
pub(crate) enum Inputs<const N: usize> {
    Plain([FlexTensor; N]),
    Tracked([AdPrim; N]),
}

impl<const N: usize> Inputs<N> {
    pub(crate) fn of(ps: [Box<dyn Any>; N]) -> Option<Self> {
        let f32 = |t: &FlexTensor| t.dtype() == DType::F32;
        if ps
            .iter()
            .all(|p| p.downcast_ref::<FlexTensor>().is_some_and(f32))
        {
            return Some(Self::Plain(
                ps.map(|p| *p.downcast::<FlexTensor>().expect("checked above")),
            ));
        }
        if ps.iter().all(|p| {
            p.downcast_ref::<AdPrim>()
                .is_some_and(|a| f32(&a.primitive))
        }) {
            return Some(Self::Tracked(
                ps.map(|p| *p.downcast::<AdPrim>().expect("checked above")),
            ));
        }
        None
    }
}

/// `t` with a contiguous f32 buffer (itself when it already has one; a cheap `Arc` clone).
pub(crate) fn dense(t: &FlexTensor) -> FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t.clone(),
        None => t.to_contiguous(),
    }
}

/// The contiguous f32 elements of a tensor that [`dense`] returned.
pub(crate) fn elems(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a dense f32 tensor")
}

/// Helpers the fused ops' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use burn::backend::Autodiff;
    use burn::prelude::Backend;
    use burn::tensor::{Distribution, Tensor, Tolerance};
    use burn_flex::Flex;

    pub(crate) type AD = Autodiff<Flex>;

    /// Standard normal values.
    pub(crate) fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// A separate leaf with `t`'s values, for the reference's graph. (With one leaf in both
    /// graphs, burn's autodiff now and then gave the second graph a wrong gradient for it when
    /// tests ran concurrently: ≈ 1 run in 100, the reference disagreeing with a rerun of itself.)
    pub(crate) fn twin<const D: usize>(t: &Tensor<AD, D>) -> Tensor<AD, D> {
        Tensor::from_data(t.to_data(), &t.device()).require_grad()
    }

    /// Equal up to f32 rounding in a different summation order.
    pub(crate) fn close<B: Backend, const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>) {
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-4, 1e-4));
    }
}
