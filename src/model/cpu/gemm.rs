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
