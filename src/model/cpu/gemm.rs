//! gemm over strided matrices and f32 buffers without a copy: what the fused ops share.

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;

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
    if let Threads::All = threads
        && let Some(parts) = split_parts(m, n, k)
    {
        // SAFETY: the caller's promise, for each disjoint block of `dst`.
        return unsafe { gemm_split(m, n, k, dst, ld, acc, a, b, parts) };
    }
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

/// `T1_GEMM_SPLIT=0` turns the split below off (gemm's own threading for every product).
pub const SPLIT_ENV: &str = "T1_GEMM_SPLIT";

/// Below this many multiply-adds a product runs as one gemm call (a task costs more than it saves).
const SPLIT_MIN_WORK: usize = 1 << 20;

/// Column (or row) blocks are multiples of this: whole microkernel tiles for every f32 kernel gemm
/// has on x86-64 and aarch64.
const SPLIT_ALIGN: usize = 32;

/// How many blocks a `[m, k] · [k, n]` product is split into (`None`: one gemm call with gemm's
/// own threading). On this project's 2-core machine one single-threaded gemm per core on its own
/// half of the output ran 92–136 GFLOP/s at the training shapes where gemm's two-thread mode ran
/// 70–118 (its threads share each packed block and meet at a barrier per block).
fn split_parts(m: usize, n: usize, k: usize) -> Option<usize> {
    let on = split_on();
    let threads = rayon::current_num_threads();
    if !on || threads < 2 || m.saturating_mul(n).saturating_mul(k) < SPLIT_MIN_WORK {
        return None;
    }
    let long = m.max(n);
    let parts = threads.min(long / SPLIT_ALIGN);
    (parts >= 2).then_some(parts)
}

/// 0: not read yet; 1: off; 2: on.
static SPLIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether products are split (`T1_GEMM_SPLIT`, read once; [`set_split`] changes it).
pub fn split_on() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match SPLIT.load(Relaxed) {
        0 => {
            let on = std::env::var(SPLIT_ENV).map_or(true, |v| v.trim() != "0");
            SPLIT.store(if on { 2 } else { 1 }, Relaxed);
            on
        }
        v => v == 2,
    }
}

/// Turns the split on or off for the process (benchmarks compare both in one run).
pub fn set_split(on: bool) {
    SPLIT.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
}

/// A pointer handed to the tasks of one split product (each writes its own block).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks of `gemm_split` read the shared inputs and write disjoint blocks of `dst`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
#[derive(Clone, Copy)]
struct SharedMat(Mat);
// SAFETY: read only, by the tasks of one call that outlives them.
unsafe impl Send for SharedMat {}
unsafe impl Sync for SharedMat {}

/// [`gemm`] as `parts` single-threaded gemm calls on rayon's pool, each on its own block of
/// output columns (of rows when there are more rows than columns). Each output element is
/// still one gemm call's dot product over the whole `k`.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_split(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    acc: bool,
    a: Mat,
    b: Mat,
    parts: usize,
) {
    let by_cols = n >= m;
    let long = if by_cols { n } else { m };
    let block = long.div_ceil(parts).div_ceil(SPLIT_ALIGN) * SPLIT_ALIGN;
    let (dst, a, b) = (Shared(dst), SharedMat(a), SharedMat(b));
    rayon::scope(|s| {
        for start in (0..long).step_by(block) {
            let len = block.min(long - start);
            s.spawn(move |_| {
                let (dst, a, b) = (dst, a, b);
                // SAFETY: the block's rows or columns lie within the caller's matrices, and
                // blocks do not overlap in `dst`.
                unsafe {
                    if by_cols {
                        let b = Mat {
                            ptr: b.0.ptr.offset(start as isize * b.0.cs),
                            ..b.0
                        };
                        gemm(m, len, k, dst.0.add(start), ld, acc, a.0, b, Threads::One)
                    } else {
                        let a = a.0.row(start);
                        gemm(
                            len,
                            n,
                            k,
                            dst.0.add(start * ld),
                            ld,
                            acc,
                            a,
                            b.0,
                            Threads::One,
                        )
                    }
                }
            });
        }
    });
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
