//! LaSER's alignment losses (self-distillation from the explicit view to the latent view).
//! Pure tensor functions; golden values from `scripts/golden_latent.py` (`tests/losses.rs`).
//!
//! Notation: `P(x) = softmax(x̂ · D̂ᵀ / τ)` over the batch's documents D (rows L2-normalised),
//! with documents a query must not see (another query's copy of its relevant documents, its
//! excluded ids) left out of its softmax. The explicit view is the teacher T, the latent view the
//! student S; a caller that wants a one-way teacher passes detached teacher tensors.
//!
//! ```text
//! output alignment      KL(P_T ‖ P_S) = Σ_j P_T,j (log P_T,j − log P_S,j), mean over queries
//! trajectory (cosine)   mean over queries and steps k of 1 − cos(s_k, t_k)
//! trajectory (kl)       mean over queries and steps k of KL(P_T(t_k) ‖ P_S(s_k))
//! ```
//! `s_k` = latent state k, `t_k` = the explicit view's state at the end of its k-th reasoning
//! segment after resampling the segment ends to K positions ([`resample_ends`]). The KL goes
//! teacher → student, as in knowledge distillation: the student is pulled to cover every
//! document the teacher ranks high.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

pub use crate::config::Trajectory;
use crate::loss::contrastive::l2_normalize;

/// Masked log-softmax of cosine scores: `queries` `[n, d]`, `docs` `[m, d]` (both raw),
/// `ignore` `[n, m]` (true = left out) → `[n, m]` (left-out entries ≈ −1e9, probability 0).
fn log_probs<B: Backend>(
    queries: Tensor<B, 2>,
    docs: Tensor<B, 2>,
    temperature: f64,
    ignore: Option<Tensor<B, 2, Bool>>,
) -> Tensor<B, 2> {
    let mut scores = l2_normalize(queries).matmul(l2_normalize(docs).transpose()) / temperature;
    if let Some(mask) = ignore {
        scores = scores.mask_fill(mask, -1e9);
    }
    log_softmax(scores, 1)
}

/// `KL(P_T ‖ P_S)` between the score distributions of `teacher` and `student` query vectors
/// (`[n, d]` each) over `docs` `[m, d]`, mean over the n queries → `[1]`.
pub fn score_kl<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    docs: Tensor<B, 2>,
    student_temperature: f64,
    teacher_temperature: f64,
    ignore: Option<Tensor<B, 2, Bool>>,
) -> Tensor<B, 1> {
    let n = student.dims()[0];
    let ls = log_probs(student, docs.clone(), student_temperature, ignore.clone());
    let lt = log_probs(teacher, docs, teacher_temperature, ignore);
    // left-out entries: P_T = exp(≈ −1e9) = 0 exactly, so they add 0 · (finite) = 0
    (lt.clone().exp() * (lt - ls)).sum() / n.max(1) as f64
}

/// Trajectory alignment of latent states `[b, K, d]` with explicit segment-end states
/// `[b, K, d]` → `[1]` (see the module doc). `docs`, temperatures and `ignore` `[b, m]` are used
/// by [`Trajectory::Kl`] only.
pub fn trajectory_loss<B: Backend>(
    latent: Tensor<B, 3>,
    explicit: Tensor<B, 3>,
    kind: Trajectory,
    docs: Tensor<B, 2>,
    student_temperature: f64,
    teacher_temperature: f64,
    ignore: Option<Tensor<B, 2, Bool>>,
) -> Tensor<B, 1> {
    let [b, k, d] = latent.dims();
    let s = latent.reshape([b * k, d]);
    let t = explicit.reshape([b * k, d]);
    match kind {
        Trajectory::Cosine => {
            let cos = (l2_normalize(s) * l2_normalize(t)).sum_dim(1); // [b·K, 1]
            cos.neg().add_scalar(1.0).mean()
        }
        Trajectory::Kl => {
            let m = docs.dims()[0];
            // each query's mask, repeated for its K steps (row i·K + k)
            let ignore = ignore.map(|mask| {
                mask.reshape([b, 1, m])
                    .expand([b, k, m])
                    .reshape([b * k, m])
            });
            score_kl(s, t, docs, student_temperature, teacher_temperature, ignore)
        }
    }
}

/// K of the `n ≥ 1` segment ends `ends` (sequence positions, in order), evenly spread and
/// always including the last: step k (0-based) takes end `⌈(k + 1) · n / K⌉ − 1`. With fewer
/// ends than steps some ends repeat; with none, `fallback` (e.g. the `</think>` position) stands
/// for every step.
pub fn resample_ends(ends: &[usize], steps: usize, fallback: usize) -> Vec<usize> {
    let n = ends.len();
    if n == 0 {
        return vec![fallback; steps];
    }
    (0..steps)
        .map(|k| ends[((k + 1) * n).div_ceil(steps) - 1])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    #[test]
    fn resampling_spreads_ends_and_keeps_the_last() {
        assert_eq!(resample_ends(&[4, 9, 15], 3, 0), vec![4, 9, 15]);
        assert_eq!(resample_ends(&[1, 2, 3, 4, 5, 6], 3, 0), vec![2, 4, 6]);
        assert_eq!(resample_ends(&[7], 3, 0), vec![7, 7, 7]);
        assert_eq!(resample_ends(&[3, 8], 3, 0), vec![3, 8, 8]);
        assert_eq!(resample_ends(&[], 2, 11), vec![11, 11]);
    }

    #[test]
    fn kl_is_zero_for_equal_views_and_positive_otherwise() {
        let dev = Default::default();
        let q =
            Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.2, -0.3, 0.5], [2, 2]), &dev);
        let docs = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, -1.0, 0.3], [3, 2]),
            &dev,
        );
        let same = score_kl(q.clone(), q.clone(), docs.clone(), 0.1, 0.1, None).into_scalar();
        assert!(same.abs() < 1e-6, "{same}");
        let other = q.clone().flip([1]);
        let diff = score_kl(q, other, docs, 0.1, 0.1, None).into_scalar();
        assert!(diff > 1e-3, "{diff}");
    }
}
