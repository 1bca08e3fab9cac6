//! Stage 2: InfoNCE over `<emb_token>` states (DESIGN §1).
//!
//! Each query has a group of `g` documents: its positive first, then `g − 1` hard negatives. The
//! documents of the whole batch are stacked `[n·g, d]`, so every query also sees every other
//! query's documents as in-batch negatives. With unit vectors `q̂`, `d̂` and temperature `τ`:
//!
//! ```text
//! scores = q̂ · d̂ᵀ / τ                       [n, n·g]
//! L_q→d  = CE(scores, target_i = i·g)         (mean over queries)
//! L_d→q  = CE(scoresᵀ restricted to positives, target_i = i)   (optional, symmetric term)
//! L      = L_q→d + L_d→q   (or L_q→d alone)
//! ```
//!
//! Equals the PyTorch formula `F.cross_entropy(q @ d.T / tau, arange(n) * g)` (+ the transposed
//! term over the positive columns); fixture from `scripts/golden_losses.py`.

pub use crate::index::l2_normalize;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// The loss and the statistics stage 2 logs.
#[derive(Debug, Clone)]
pub struct InfoNce<B: Backend> {
    /// Scalar `[1]`.
    pub loss: Tensor<B, 1>,
    /// Fraction of queries whose positive scores highest among the `n·g` documents (ignored
    /// columns left out).
    pub accuracy: f64,
    /// Mean cosine similarity of each query with its positive.
    pub pos_sim: f64,
    /// Mean cosine similarity of each query with every other (not ignored) document of the batch.
    pub neg_sim: f64,
}

/// Cross-entropy of `scores` `[n, c]` against class `targets` `[n]`, mean over rows → `[1]`.
fn cross_entropy<B: Backend>(scores: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = scores.dims()[0];
    let lp = log_softmax(scores, 1);
    lp.gather(1, targets.reshape([n, 1])).mean().neg()
}

/// `queries` `[n, d]`, `docs` `[n·g, d]` (query i's positive at row i·g, then its hard
/// negatives), both raw hidden states (normalised here). `temperature` τ > 0. `ignore`
/// `[n, n·g]` (true = leave out of query i's softmax) removes false negatives — another
/// query's copy of one of i's relevant documents; a query's own positive is never ignored.
pub fn info_nce<B: Backend>(
    queries: Tensor<B, 2>,
    docs: Tensor<B, 2>,
    group: usize,
    temperature: f64,
    symmetric: bool,
    ignore: Option<Tensor<B, 2, Bool>>,
) -> InfoNce<B> {
    let [n, _] = queries.dims();
    let m = docs.dims()[0];
    assert_eq!(m, n * group, "docs must hold `group` rows per query");
    let device = queries.device();
    let q = l2_normalize(queries);
    let d = l2_normalize(docs);
    let sims = q.matmul(d.clone().transpose()); // [n, n·g] cosine
    let mut scores = sims.clone() / temperature;
    let mut ignored = vec![false; n * m];
    if let Some(mask) = ignore {
        ignored = mask.clone().into_data().to_vec::<bool>().unwrap_or(ignored);
        scores = scores.mask_fill(mask, -1e9);
    }
    let targets = Tensor::<B, 1, Int>::arange_step(0..(n * group) as i64, group, &device); // [n]
    let mut loss = cross_entropy(scores.clone(), targets.clone());
    if symmetric {
        // doc→query over the positive documents: scores[:, i·g] as rows
        let pos_cols = scores.clone().select(1, targets.clone()).transpose(); // [n(docs), n(queries)]
        let diag = Tensor::<B, 1, Int>::arange(0..n as i64, &device);
        loss = loss + cross_entropy(pos_cols, diag);
    }
    // statistics (no gradient)
    let sims_host: Vec<f32> = sims
        .detach()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let (mut hits, mut pos, mut neg, mut negs) = (0usize, 0f64, 0f64, 0usize);
    for i in 0..n {
        let row = &sims_host[i * m..(i + 1) * m];
        let p = row[i * group];
        pos += p as f64;
        let counts = |j: usize| j != i * group && !ignored[i * m + j];
        if row.iter().enumerate().all(|(j, &s)| !counts(j) || s < p) {
            hits += 1;
        }
        for (j, &s) in row.iter().enumerate() {
            if counts(j) {
                neg += s as f64;
                negs += 1;
            }
        }
    }
    InfoNce {
        loss,
        accuracy: hits as f64 / n.max(1) as f64,
        pos_sim: pos / n.max(1) as f64,
        neg_sim: if negs > 0 { neg / negs as f64 } else { 0.0 },
    }
}

/// InfoNCE of query vectors against a whole fixed corpus (stage 3's optional auxiliary loss on
/// the rollouts' own `<emb_token>` states; gradient flows through the queries only).
///
/// `queries` `[r, d]` raw hidden states (normalised here), `docs` `[N, d]` unit rows (the
/// document index), `pairs` `(row, doc)` one per (query, relevant document), `ignore` per pair
/// the documents left out of that pair's softmax (the row's other relevant documents and its
/// excluded ids — never the pair's own document), `temperature` τ > 0:
///
/// ```text
/// scores = q̂ · Dᵀ / τ                        [r, N]
/// L      = mean over pairs (i, g) of −log softmax(scores_i with ignore_(i,g) removed)[g]
/// ```
/// → `[1]`. With no pairs the loss is `0` (still attached to `queries`).
pub fn corpus_nce<B: Backend>(
    queries: Tensor<B, 2>,
    docs: Tensor<B, 2>,
    pairs: &[(usize, usize)],
    ignore: &[Vec<usize>],
    temperature: f64,
) -> Tensor<B, 1> {
    let device = queries.device();
    let n = docs.dims()[0];
    let scores = l2_normalize(queries.clone()).matmul(docs.transpose()) / temperature; // [r, N]
    if pairs.is_empty() {
        return queries.sum().mul_scalar(0.0).reshape([1]);
    }
    let p = pairs.len();
    let rows = Tensor::<B, 1, Int>::from_data(
        burn::tensor::TensorData::new(pairs.iter().map(|&(r, _)| r as i64).collect(), [p]),
        &device,
    );
    let mut per_pair = scores.select(0, rows); // [P, N]
    if ignore.iter().any(|v| !v.is_empty()) {
        let mut mask = vec![false; p * n];
        for (k, docs) in ignore.iter().enumerate() {
            for &j in docs {
                if j != pairs[k].1 {
                    mask[k * n + j] = true;
                }
            }
        }
        let mask =
            Tensor::<B, 2, Bool>::from_data(burn::tensor::TensorData::new(mask, [p, n]), &device);
        per_pair = per_pair.mask_fill(mask, -1e9);
    }
    let targets = Tensor::<B, 1, Int>::from_data(
        burn::tensor::TensorData::new(pairs.iter().map(|&(_, g)| g as i64).collect(), [p]),
        &device,
    );
    cross_entropy(per_pair, targets)
}
