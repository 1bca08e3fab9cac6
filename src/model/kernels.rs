//! A CPU kernel for the decode loop's skinny matmuls, and the CPU-backend plumbing the fused ops
//! ([`super::head`], [`super::linear`]) share: reaching the burn-flex tensor behind a `Tensor`
//! (with or without autodiff), gemm over strided matrices, f32 tensors without a copy.
//!
//! At decode time every projection is `[m, k] × [k, n]` with few rows (m = the rollouts in
//! flight) and a weight too large for the cache, so the work is streaming the weight from memory.
//! gemm (burn-flex's matmul) handles these shapes poorly on CPU: it swaps the operands so that the
//! weight feeds its 64-row microkernel, splits the few rows into 6 + 2 columns (each weight block
//! is walked twice), and runs single-threaded below 192³ multiply-adds (q/k/v/o at decode). On
//! this project's 2-core machine it streamed SmolLM2's decode weights at 1.2–2.2 GB/s.
//!
//! [`matmul`] streams each weight row once: every task owns a block of output columns, keeps its
//! `m × cols` accumulators in L1/L2 and, for each input dimension, adds `x[i, kk] · w[kk, cols]`
//! to every row (two input dimensions per pass; fused multiply-add where the CPU has it, picked
//! at run time). It applies only where it is known to win — the CPU backend (burn-flex), f32,
//! no autodiff, at most [`MAX_ROWS`] rows, a contiguous row-major weight — and falls back to
//! `x.matmul(w)` everywhere else (training, GPU backends, prefill-sized batches), so callers use
//! it unconditionally. Sums run in a different order from gemm's, so results agree to f32
//! rounding, not bit for bit.

use std::any::Any;
use std::sync::Once;

use burn::prelude::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

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

/// Rows up to which [`matmul`] uses its own kernel (above, gemm's packing pays for itself).
pub const MAX_ROWS: usize = 32;

/// Output columns one task accumulates at most (8 rows × 1024 columns = 32 KiB of f32).
const MAX_COLS: usize = 1024;

/// `x` `[m, k]` × `w` `[k, n]` → `[m, n]`: the streaming kernel where it applies (see the module
/// docs), `x.matmul(w)` otherwise.
pub fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    match skinny(&x, &w) {
        Some(out) => out,
        None => x.matmul(w),
    }
}

/// Whether [`matmul`] would take its own kernel for these operands.
pub fn applies<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> bool {
    let [m, k] = x.dims();
    let [k2, _] = w.dims();
    if m == 0 || m > MAX_ROWS || k != k2 {
        return false;
    }
    let contiguous_f32 = |t: Option<FlexTensor>| t.is_some_and(|t| t.as_slice::<f32>().is_some());
    contiguous_f32(flex(x)) && contiguous_f32(flex(w))
}

/// The burn-flex tensor behind `t` (None on any other backend, autodiff included).
fn flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    into_flex(t.clone()).ok()
}

/// `t` as the burn-flex tensor it is on the CPU backend (`Err(t)` back on any other backend).
/// Owning it (not a clone) lets a kernel write into its buffer when nothing else holds it.
pub fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
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
pub fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    back(Box::new(t))
}

/// The float primitive of the CPU backend under autodiff (what the fused ops downcast to).
pub(crate) type AdPrim = burn::tensor::ops::FloatTensor<burn::backend::Autodiff<burn_flex::Flex>>;

/// The float primitive behind `t`, type-erased for downcasting (a [`FlexTensor`] on the CPU
/// backend, an autodiff tensor over it under autodiff; None for quantized tensors).
pub(crate) fn prim<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Box<dyn Any>> {
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

/// A 2-D matrix as gemm sees it: base pointer and (row, column) strides in elements.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl Mat {
    pub(crate) fn of(t: &FlexTensor) -> Self {
        let l = t.layout();
        let s = l.strides();
        let data = t.storage::<f32>();
        // SAFETY: start_offset is within the storage the layout describes.
        let ptr = unsafe { data.as_ptr().add(l.start_offset()) };
        Self {
            ptr,
            rs: s[0],
            cs: s[1],
        }
    }
    pub(crate) fn row(self, r: usize) -> Self {
        // SAFETY: callers stay within the matrix's rows.
        Self {
            ptr: unsafe { self.ptr.offset(r as isize * self.rs) },
            ..self
        }
    }
    pub(crate) fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// How many threads one [`gemm`] call uses.
#[derive(Clone, Copy)]
pub(crate) enum Threads {
    /// rayon's pool (gemm splits the product).
    All,
    /// The calling thread only (for work already split into parallel tasks).
    One,
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`; `dst` row-major with row stride `ld`.
///
/// # Safety
/// The matrices must be valid for the given shape and strides, `dst` writable and disjoint.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    acc: bool,
    a: Mat,
    b: Mat,
    threads: Threads,
) {
    let par = match threads {
        Threads::All => gemm::Parallelism::Rayon(0),
        Threads::One => gemm::Parallelism::None,
    };
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            acc,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Rows and columns of a 2-D tensor.
pub(crate) fn dims(t: &FlexTensor) -> [usize; 2] {
    let s = t.layout().shape();
    [s[0], s[1]]
}

/// A contiguous f32 tensor over `data` (no copy; burn-flex's `FlexTensor::empty` would zero-fill
/// and copy a buffer first).
pub(crate) fn f32_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    let layout = burn_flex::Layout::contiguous(Shape::from(shape));
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), layout, DType::F32)
}

/// A buffer of `len` floats that the caller fills completely before [`filled`].
pub(crate) fn unfilled(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit elements need no initialisation.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn filled(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: all elements are initialised (the caller's promise); same layout as f32.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

fn skinny<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if !applies(x, w) {
        return None;
    }
    let ([m, k], [_, n]) = (x.dims(), w.dims());
    let (xt, wt) = (flex(x)?, flex(w)?);
    let mut out = FlexTensor::empty(Shape::from(vec![m, n]), DType::F32);
    rowmajor(
        xt.as_slice::<f32>()?,
        wt.as_slice::<f32>()?,
        out.storage_mut::<f32>(),
        m,
        k,
        n,
    );
    from_flex(out)
}

/// `out[m, n] = x[m, k] · w[k, n]`, all row-major and contiguous; column blocks in parallel.
pub fn rowmajor(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() == m * k && w.len() == k * n && out.len() == m * n);
    // at least one block per thread, 16-column aligned, at most MAX_COLS wide
    let threads = rayon::current_num_threads().max(1);
    let cols = n.div_ceil(threads).div_ceil(16).saturating_mul(16);
    let cols = cols.clamp(16, MAX_COLS);
    let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); n.div_ceil(cols)];
    blocks.par_iter_mut().enumerate().for_each(|(b, acc)| {
        let c0 = b * cols;
        let width = cols.min(n - c0);
        acc.resize(m * width, 0.0);
        block_dispatch(x, w, acc, [m, k, n], c0);
    });
    for (b, acc) in blocks.iter().enumerate() {
        let c0 = b * cols;
        let width = acc.len() / m;
        for i in 0..m {
            out[i * n + c0..i * n + c0 + width].copy_from_slice(&acc[i * width..(i + 1) * width]);
        }
    }
}

/// One column block, compiled for the best instruction set the CPU has.
fn block_dispatch(x: &[f32], w: &[f32], acc: &mut [f32], mkn: [usize; 3], c0: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (and so AVX2 and FMA), checked just above.
            return unsafe { block_avx512(x, w, acc, mkn, c0) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { block_avx2(x, w, acc, mkn, c0) };
        }
    }
    block(x, w, acc, mkn, c0, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512(x: &[f32], w: &[f32], acc: &mut [f32], mkn: [usize; 3], c0: usize) {
    block(x, w, acc, mkn, c0, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(x: &[f32], w: &[f32], acc: &mut [f32], mkn: [usize; 3], c0: usize) {
    block(x, w, acc, mkn, c0, true)
}

/// `acc[m, width] = x[m, k] · w[k, c0..c0 + width]`; `fma`: use fused multiply-add (only where
/// the caller's target features make `mul_add` one instruction).
#[inline(always)]
fn block(x: &[f32], w: &[f32], acc: &mut [f32], [m, k, n]: [usize; 3], c0: usize, fma: bool) {
    let width = acc.len() / m;
    let madd = |a: f32, b: f32, c: f32| if fma { a.mul_add(b, c) } else { a * b + c };
    acc.fill(0.0);
    let row = |kk: usize| &w[kk * n + c0..kk * n + c0 + width];
    let mut kk = 0;
    while kk + 2 <= k {
        let (w0, w1) = (row(kk), row(kk + 1));
        for i in 0..m {
            let (a0, a1) = (x[i * k + kk], x[i * k + kk + 1]);
            let o = &mut acc[i * width..(i + 1) * width];
            for ((o, &p), &q) in o.iter_mut().zip(w0).zip(w1) {
                *o = madd(a1, q, madd(a0, p, *o));
            }
        }
        kk += 2;
    }
    if kk < k {
        let w0 = row(kk);
        for i in 0..m {
            let a0 = x[i * k + kk];
            let o = &mut acc[i * width..(i + 1) * width];
            for (o, &p) in o.iter_mut().zip(w0) {
                *o = madd(a0, p, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData};

    type B = Flex;

    fn random(shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// The kernel against gemm (burn's matmul) on shapes with odd k, n not a multiple of 16,
    /// a single row, the row limit, and more columns than one block.
    #[test]
    fn kernel_matches_gemm() {
        for (m, k, n) in [
            (1, 7, 5),
            (3, 33, 17),
            (8, 576, 192),
            (8, 64, 2100),
            (MAX_ROWS, 129, 1031),
        ] {
            let (x, w) = (random([m, k]), random([k, n]));
            assert!(applies(&x, &w), "{m}×{k}×{n} should take the kernel");
            let got = matmul(x.clone(), w.clone()).into_data();
            let want = x.matmul(w).into_data();
            // summation order differs from gemm, so the error grows with the sums: relative bound
            got.assert_approx_eq::<f32>(&want, burn::tensor::Tolerance::rel_abs(1e-5, 1e-4));
        }
    }

    /// Where it does not apply: too many rows, a transposed (non-contiguous) weight, autodiff.
    #[test]
    fn falls_back_elsewhere() {
        let (x, w) = (random([MAX_ROWS + 1, 16]), random([16, 8]));
        assert!(!applies(&x, &w));
        let wt = random([8, 16]).transpose();
        assert!(!applies(&random([4, 16]), &wt));
        // the fallback still computes the product
        let got = matmul(random([4, 16]).clone(), wt.clone());
        assert_eq!(got.dims(), [4, 8]);
        let xa = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new(vec![1.0f32; 4 * 16], [4, 16]),
            &Default::default(),
        );
        let wa = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new(vec![1.0f32; 16 * 8], [16, 8]),
            &Default::default(),
        );
        assert!(!applies(&xa, &wa));
        let y = matmul(xa, wa).into_data().to_vec::<f32>().unwrap();
        assert!(y.iter().all(|&v| v == 16.0));
    }
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
