//! Dense document index (DESIGN §4): the corpus encoded with the document view, one unit vector
//! per document `[N, d]` on the compute device; exact top-k and gold-document ranks by one
//! matmul per query batch. Built without autodiff (pass the inner model, `model.valid()`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::Corpus;
use crate::error::Result;
use crate::loss::contrastive::l2_normalize;
use crate::model::{Decoder, T1Tokenizer};

/// Last-token hidden states of right-padded sequences, `batch_size` at a time, in input order:
/// `seqs` each ending with `<emb_token>` → `[n, d]` (not normalised). Sequences are grouped by
/// length so a batch pads little. `progress` gets the count done.
pub fn embed_last<B: Backend>(
    model: &Decoder<B>,
    seqs: &[Vec<u32>],
    batch_size: usize,
    pad: u32,
    mut progress: impl FnMut(usize),
) -> Tensor<B, 2> {
    let device = model.device();
    let d = model.config().hidden_size;
    if seqs.is_empty() {
        return Tensor::zeros([0, d], &device);
    }
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut parts: Vec<Tensor<B, 2>> = Vec::new();
    let mut done = 0;
    for group in order.chunks(batch_size.max(1)) {
        let s = group
            .iter()
            .map(|&i| seqs[i].len())
            .max()
            .unwrap_or(1)
            .max(1);
        let b = group.len();
        let mut ids = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        let mut last = Vec::with_capacity(b);
        for &i in group {
            let q = &seqs[i];
            ids.extend(q.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(pad as i64, s - q.len()));
            mask.extend(std::iter::repeat_n(1i64, q.len()));
            mask.extend(std::iter::repeat_n(0i64, s - q.len()));
            last.push(q.len().saturating_sub(1) as i64);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [b, s]), &device);
        let last = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), &device);
        let positions = (mask.clone().cumsum(1) - 1).clamp_min(0);
        let hidden = model.hidden_states(ids, positions, Some(mask.equal_elem(0))); // [b, s, d]
        parts.push(Decoder::hidden_at(hidden, last)); // [b, d]
        done += b;
        progress(done);
    }
    // restore input order: input i sits at position offsets[i] of the grouped order
    let cat = Tensor::cat(parts, 0); // [n, d] grouped order
    let mut offsets = vec![0i64; seqs.len()];
    for (pos, &i) in order.iter().enumerate() {
        offsets[i] = pos as i64;
    }
    let sel = Tensor::<B, 1, Int>::from_data(TensorData::new(offsets, [seqs.len()]), &device);
    cat.select(0, sel)
}

/// The corpus as unit vectors.
pub struct DocIndex<B: Backend> {
    /// `[N, d]`, rows L2-normalised, in corpus order.
    pub vectors: Tensor<B, 2>,
    /// Documents cut at `max_doc_tokens`.
    pub truncated: usize,
}

impl<B: Backend> DocIndex<B> {
    /// Encodes every document's view (`doc_instruction + title + text + <emb_token>`).
    pub fn build(
        model: &Decoder<B>,
        tok: &T1Tokenizer,
        corpus: &Corpus,
        max_doc_tokens: usize,
        batch_size: usize,
        progress: impl FnMut(usize),
    ) -> Result<Self> {
        let mut truncated = 0;
        let mut seqs = Vec::with_capacity(corpus.len());
        for i in 0..corpus.len() {
            let (ids, cut) = tok.doc_view(&corpus.titles[i], &corpus.texts[i], max_doc_tokens)?;
            truncated += cut as usize;
            seqs.push(ids);
        }
        let raw = embed_last(model, &seqs, batch_size, tok.pad, progress);
        Ok(DocIndex {
            vectors: l2_normalize(raw),
            truncated,
        })
    }

    pub fn len(&self) -> usize {
        self.vectors.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cosine scores of `queries` `[q, d]` (normalised here) against every document → host
    /// rows `q × N`.
    pub fn scores(&self, queries: Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
        let n = self.len();
        let q = queries.dims()[0];
        let s = l2_normalize(queries).matmul(self.vectors.clone().transpose()); // [q, N]
        let flat = s
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| crate::Error::Runtime(format!("cannot read scores: {e:?}")))?;
        Ok((0..q).map(|i| flat[i * n..(i + 1) * n].to_vec()).collect())
    }
}

/// Where one query vector put the gold documents, in trec_eval order (score descending, then
/// document id descending), excluded documents removed first — the same order `eval` scores,
/// so a reward and the evaluation agree on every rank.
///
/// `row` `[N]` scores of every document, `ids` `[N]` their ids, `gold` (document index, grade
/// > 0), `excluded` indices removed from the ranking, `k` documents kept in `top_k`.
pub fn rank_gold(
    row: &[f32],
    ids: &[String],
    gold: &[(usize, i32)],
    excluded: &std::collections::HashSet<usize>,
    k: usize,
) -> (
    Vec<(t1_rewards::ScoredDoc, i32)>,
    Vec<t1_rewards::ScoredDoc>,
    usize,
) {
    use t1_rewards::ScoredDoc;
    // a before b in trec order
    let before = |a: usize, b: usize| row[a] > row[b] || (row[a] == row[b] && ids[a] > ids[b]);
    let kept: Vec<usize> = (0..row.len()).filter(|i| !excluded.contains(i)).collect();
    let golds = gold
        .iter()
        .filter(|(g, _)| !excluded.contains(g))
        .map(|&(g, grade)| {
            let rank = 1 + kept.iter().filter(|&&j| j != g && before(j, g)).count();
            (
                ScoredDoc {
                    id: ids[g].clone(),
                    score: row[g],
                    rank,
                },
                grade,
            )
        })
        .collect();
    let mut order = kept.clone();
    let k = k.min(order.len());
    if k > 0 {
        let cmp = |a: &usize, b: &usize| {
            row[*b]
                .total_cmp(&row[*a])
                .then_with(|| ids[*b].cmp(&ids[*a]))
        };
        order.select_nth_unstable_by(k - 1, cmp);
        order.truncate(k);
        order.sort_by(cmp);
    } else {
        order.clear();
    }
    let top = order
        .iter()
        .enumerate()
        .map(|(r, &i)| ScoredDoc {
            id: ids[i].clone(),
            score: row[i],
            rank: r + 1,
        })
        .collect();
    (golds, top, kept.len())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::rank_gold;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    #[test]
    fn ties_break_by_doc_id_descending_like_trec_eval() {
        // d1 and d2 tie at 0.5: d2 ranks first (id descending)
        let row = [0.9, 0.5, 0.5, 0.1];
        let (g, top, n) = rank_gold(&row, &ids(4), &[(1, 1), (2, 2)], &HashSet::new(), 3);
        assert_eq!(n, 4);
        assert_eq!(g[0].0.rank, 3);
        assert_eq!(g[1].0.rank, 2);
        let top_ids: Vec<&str> = top.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(top_ids, ["d0", "d2", "d1"]);
        assert_eq!(top.iter().map(|d| d.rank).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn excluded_documents_leave_the_ranking_first() {
        let row = [0.9, 0.8, 0.7, 0.6];
        let excluded: HashSet<usize> = [0, 3].into_iter().collect();
        // gold d2 moves from rank 3 to rank 2; an excluded gold is not ranked at all
        let (g, top, n) = rank_gold(&row, &ids(4), &[(2, 1), (3, 1)], &excluded, 10);
        assert_eq!(n, 2);
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].0.id.as_str(), g[0].0.rank), ("d2", 2));
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].id, "d1");
    }

    #[test]
    fn ranks_agree_with_the_evaluator_on_random_scores() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 50;
        // coarse scores so ties are frequent
        let row: Vec<f32> = (0..n)
            .map(|_| rng.random_range(0..8) as f32 / 8.0)
            .collect();
        let ids = ids(n);
        let gold: Vec<(usize, i32)> = vec![(7, 1), (19, 2), (33, 1)];
        let (g, _, _) = rank_gold(&row, &ids, &gold, &HashSet::new(), 0);
        let mut hits: Vec<(String, f64)> = ids
            .iter()
            .cloned()
            .zip(row.iter().map(|&s| s as f64))
            .collect();
        crate::eval::trec_order(&mut hits);
        for (d, _) in &g {
            let pos = hits.iter().position(|(id, _)| *id == d.id).unwrap() + 1;
            assert_eq!(d.rank, pos, "{}", d.id);
        }
    }
}
