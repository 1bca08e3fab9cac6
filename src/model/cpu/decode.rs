//! A CPU kernel for the decode loop's skinny matmuls.
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

use burn::prelude::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{from_flex, into_flex};

/// Rows up to which [`matmul`] uses its own kernel (above, gemm's packing pays for itself).
pub const MAX_ROWS: usize = 32;

/// Output columns one task accumulates at most (8 rows × 1024 columns = 32 KiB of f32).
const MAX_COLS: usize = 1024;

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

/// `x` `[m, k]` × `w` `[k, n]` → `[m, n]` with the streaming kernel where it applies (see the
/// module docs); `None` elsewhere (the caller runs `x.matmul(w)`).
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
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
            let got = matmul(&x, &w).expect("applies").into_data();
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
        assert!(matmul(&random([4, 16]), &wt).is_none());
        let xa = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new(vec![1.0f32; 4 * 16], [4, 16]),
            &Default::default(),
        );
        let wa = Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new(vec![1.0f32; 16 * 8], [16, 8]),
            &Default::default(),
        );
        assert!(!applies(&xa, &wa));
        assert!(matmul(&xa, &wa).is_none());
    }
}
