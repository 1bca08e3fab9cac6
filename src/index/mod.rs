//! Dense document index (DESIGN §4): the corpus encoded with the document view, one unit vector
//! per document `[N, d]` on the compute device; exact top-k and gold-document ranks by one
//! matmul per query batch. Built without autodiff (pass the inner model, `model.valid()`).
//! [`bm25`] is the lexical retriever beside it (Pyserini's scoring), for the BM25 baselines.

pub mod bm25;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use std::path::Path;

use crate::data::Corpus;
use crate::error::{Error, Result};
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
    let order = length_order(seqs);
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

/// The order [`embed_last`] encodes in: by length, ties in input order.
fn length_order(seqs: &[Vec<u32>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    order
}

/// Every document's view, and how many were cut at `max_doc_tokens`.
fn doc_seqs(
    tok: &T1Tokenizer,
    corpus: &Corpus,
    max_doc_tokens: usize,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let mut truncated = 0;
    let mut seqs = Vec::with_capacity(corpus.len());
    for i in 0..corpus.len() {
        let (ids, cut) = tok.doc_view(&corpus.titles[i], &corpus.texts[i], max_doc_tokens)?;
        truncated += cut as usize;
        seqs.push(ids);
    }
    Ok((seqs, truncated))
}

/// Rows scaled to unit L2 norm: `[n, d]` → `[n, d]` (ε keeps a zero row finite).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12); // [n, 1]
    x / norm
}

/// Sorts a ranking the way trec_eval does: score descending, then doc id descending.
pub fn trec_order(list: &mut [(String, f64)]) {
    list.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
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
        let (seqs, truncated) = doc_seqs(tok, corpus, max_doc_tokens)?;
        let raw = embed_last(model, &seqs, batch_size, tok.pad, progress);
        Ok(DocIndex {
            vectors: l2_normalize(raw),
            truncated,
        })
    }

    /// [`Self::build`] shared by data-parallel workers (every worker calls it at the same point):
    /// each encodes its block of the batches [`embed_last`] makes, the blocks are gathered, and
    /// every worker holds the whole index. One process: [`Self::build`].
    pub fn build_shared(
        model: &Decoder<B>,
        tok: &T1Tokenizer,
        corpus: &Corpus,
        max_doc_tokens: usize,
        batch_size: usize,
    ) -> Result<Self> {
        let world = crate::dist::world();
        if !world.is_distributed() {
            return Self::build(model, tok, corpus, max_doc_tokens, batch_size, |_| {});
        }
        let (seqs, truncated) = doc_seqs(tok, corpus, max_doc_tokens)?;
        let (n, d) = (seqs.len(), model.config().hidden_size);
        // the single process's batches (length order, `batch_size` each), a block of them per
        // worker: a block keeps its order and cuts when encoded alone, so every document is
        // encoded in the batch it would be in one process
        let order = length_order(&seqs);
        let batches: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
        let per = batches.len().div_ceil(world.size);
        let lo = (world.rank * per).min(batches.len());
        let hi = ((world.rank + 1) * per).min(batches.len());
        let mine: Vec<usize> = batches[lo..hi].concat();
        let own: Vec<Vec<u32>> = mine.iter().map(|&i| seqs[i].clone()).collect();
        let v = embed_last(model, &own, batch_size, tok.pad, |_| {})
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Runtime(format!("cannot read document vectors: {e:?}")))?;
        let mut all = vec![0.0f32; n * d];
        for (j, &i) in mine.iter().enumerate() {
            all[i * d..(i + 1) * d].copy_from_slice(&v[j * d..(j + 1) * d]);
        }
        // each document's row is non-zero on one worker only: the sum is the gather
        let all = world.all_reduce::<B>("the document index's blocks", all, &model.device())?;
        let raw = Tensor::<B, 2>::from_data(TensorData::new(all, [n, d]), &model.device());
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

/// What an index was built from, stored in the index file's header. `t1-train search` and
/// `stage3.index` refuse an index whose model or corpus hash differs from theirs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexMeta {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// The model folder it was encoded with (as given; informative).
    pub model: String,
    /// SHA-256 over the model's weight files ([`model_hash`]).
    pub model_sha256: String,
    /// Training step of that model when known (a checkpoint's `state.json` or `best/`'s
    /// `t1-best.json`).
    pub model_step: Option<u64>,
    /// The dataset folder whose corpus was encoded (informative).
    pub dataset: String,
    /// [`corpus_hash`] of that corpus.
    pub corpus_sha256: String,
    pub max_doc_tokens: usize,
    /// Query-side lengths of the model section, so `search` embeds queries as training did.
    pub max_query_tokens: usize,
    pub max_reasoning_tokens: usize,
    /// `model.repetition_penalty` of the greedy reasoning (absent in older indexes: 1, off).
    #[serde(default = "no_penalty")]
    pub repetition_penalty: f32,
    pub num_docs: usize,
    pub dim: usize,
    /// SHA-256 of the little-endian f32 vectors and the document ids in order (detects a
    /// corrupted file, and ids swapped or edited in the header).
    pub vectors_sha256: String,
    /// `t1-train` version that wrote it.
    pub written_by: String,
}

fn no_penalty() -> f32 {
    1.0
}

/// SHA-256 of a corpus's content: every document's id, title and text in file order (so a
/// reformatted but identical corpus.jsonl hashes the same, an edited document does not).
pub fn corpus_hash(corpus: &Corpus) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for i in 0..corpus.len() {
        for field in [&corpus.ids[i], &corpus.titles[i], &corpus.texts[i]] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 over a model folder's weight files (`model.safetensors` or its shards, in name order).
pub fn model_hash(dir: &Path) -> Result<String> {
    use crate::model::peft;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut dir = dir.to_path_buf();
    // an adapter folder: its files, then its base's (a chain as deep as `load_model` reads)
    for _ in 0..=peft::MAX_CHAIN {
        if !peft::is_adapter_dir(&dir) {
            for f in crate::model::weights::safetensors_files(&dir)? {
                let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
                std::io::copy(&mut file, &mut h).map_err(|e| Error::io(&f, e))?;
            }
            return Ok(format!("{:x}", h.finalize()));
        }
        for name in [peft::CONFIG, peft::WEIGHTS] {
            let f = dir.join(name);
            let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
            std::io::copy(&mut file, &mut h).map_err(|e| Error::io(&f, e))?;
        }
        dir = peft::base_of(&dir)?;
    }
    Err(Error::Runtime(format!(
        "{}: adapter folders chained more than {} deep (a cycle?)",
        dir.display(),
        peft::MAX_CHAIN
    )))
}

/// The training step a model folder was saved at, when it says.
pub fn model_step(dir: &Path) -> Option<u64> {
    ["state.json", "t1-best.json"].iter().find_map(|f| {
        let text = std::fs::read_to_string(dir.join(f)).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
    })
}

/// The index file format this version writes and reads. 2: the checksum covers the document
/// ids too (format 1 files are refused: rebuild them with `t1-train index`).
pub const FORMAT: u32 = 2;

fn vectors_hash(flat: &[f32], ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for x in flat {
        h.update(x.to_le_bytes());
    }
    for id in ids {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    format!("{:x}", h.finalize())
}

impl IndexMeta {
    /// The header of an index of `corpus` (from `dataset`) encoded by `model` (its description,
    /// weights hash and step) with `m`'s lengths; [`DocIndex::save`] fills in the sizes and the
    /// vectors' checksum.
    pub fn new(
        model: String,
        model_sha256: String,
        model_step: Option<u64>,
        dataset: &Path,
        corpus: &Corpus,
        m: &crate::config::ModelSection,
    ) -> Self {
        IndexMeta {
            format: FORMAT,
            model,
            model_sha256,
            model_step,
            dataset: dataset.display().to_string(),
            corpus_sha256: corpus_hash(corpus),
            max_doc_tokens: m.max_doc_tokens,
            max_query_tokens: m.max_query_tokens,
            max_reasoning_tokens: m.max_reasoning_tokens,
            repetition_penalty: m.repetition_penalty,
            num_docs: 0,
            dim: 0,
            vectors_sha256: String::new(),
            written_by: format!("t1-train {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl<B: Backend> DocIndex<B> {
    /// Writes the index as one safetensors file: tensor `vectors` `[N, d]` f32, header metadata
    /// `t1.meta` ([`IndexMeta`] as JSON, `vectors_sha256` filled in here) and `t1.doc_ids`
    /// (JSON array, corpus order). Atomic: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path, ids: &[String], mut meta: IndexMeta) -> Result<IndexMeta> {
        let [n, d] = self.vectors.dims();
        let flat = self
            .vectors
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Runtime(format!("cannot read the index: {e:?}")))?;
        meta.num_docs = n;
        meta.dim = d;
        meta.vectors_sha256 = vectors_hash(&flat, ids);
        meta.format = FORMAT;
        let bytes: Vec<u8> = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, d], &bytes)
                .map_err(|e| Error::Runtime(format!("cannot build the index tensor: {e}")))?;
        let header: std::collections::HashMap<String, String> = [
            (
                "t1.meta".to_string(),
                serde_json::to_string(&meta).expect("meta serialises"),
            ),
            (
                "t1.doc_ids".to_string(),
                serde_json::to_string(ids).expect("ids serialise"),
            ),
        ]
        .into_iter()
        .collect();
        let out = safetensors::serialize([("vectors", view)], Some(header))
            .map_err(|e| Error::Runtime(format!("cannot serialise the index: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::fsio::write_atomic(path, &out)?;
        Ok(meta)
    }

    /// Reads an index written by [`Self::save`]; a truncated or corrupted file, a foreign
    /// safetensors file, or vectors that do not match their checksum are errors naming the file.
    pub fn load(path: &Path, device: &B::Device) -> Result<(Self, IndexMeta, Vec<String>)> {
        let bad = |m: String| Error::Data {
            file: path.to_path_buf(),
            line: 0,
            field: None,
            message: format!("not a valid t1-train index: {m}"),
        };
        crate::checksums::require_regular(path)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let md = header
            .metadata()
            .as_ref()
            .ok_or_else(|| bad("no t1.meta in the header".into()))?;
        let meta: IndexMeta = serde_json::from_str(
            md.get("t1.meta")
                .ok_or_else(|| bad("no t1.meta in the header".into()))?,
        )
        .map_err(|e| bad(format!("t1.meta: {e}")))?;
        if meta.format != FORMAT {
            return Err(bad(format!(
                "format {} (this version reads {FORMAT}); rebuild it with `t1-train index`",
                meta.format
            )));
        }
        let ids: Vec<String> = serde_json::from_str(
            md.get("t1.doc_ids")
                .ok_or_else(|| bad("no t1.doc_ids in the header".into()))?,
        )
        .map_err(|e| bad(format!("t1.doc_ids: {e}")))?;
        let t = st.tensor("vectors").map_err(|e| bad(format!("{e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [meta.num_docs, meta.dim] {
            return Err(bad(format!(
                "vectors are {:?} {:?}, the header says F32 [{}, {}]",
                t.dtype(),
                t.shape(),
                meta.num_docs,
                meta.dim
            )));
        }
        if ids.len() != meta.num_docs {
            return Err(bad(format!(
                "{} document ids for {} vectors",
                ids.len(),
                meta.num_docs
            )));
        }
        let flat: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if vectors_hash(&flat, &ids) != meta.vectors_sha256 {
            return Err(bad(
                "the vectors and document ids do not match their checksum (a corrupted or edited file)"
                    .into(),
            ));
        }
        let vectors = Tensor::from_data(TensorData::new(flat, [meta.num_docs, meta.dim]), device);
        Ok((
            DocIndex {
                vectors,
                truncated: 0,
            },
            meta,
            ids,
        ))
    }
}

/// Refuses an index built from another corpus or another model, saying which and how to fix it.
pub fn check_index(
    path: &Path,
    meta: &IndexMeta,
    corpus_sha256: &str,
    model_sha256: Option<&str>,
) -> Result<()> {
    if meta.corpus_sha256 != corpus_sha256 {
        return Err(Error::Usage(format!(
            "{}: built from another corpus ({} at the time, sha256 {}…; this corpus is {}…); rebuild it with `t1-train index`",
            path.display(),
            meta.dataset,
            &meta.corpus_sha256[..12.min(meta.corpus_sha256.len())],
            &corpus_sha256[..12.min(corpus_sha256.len())]
        )));
    }
    if let Some(m) = model_sha256.filter(|m| *m != meta.model_sha256) {
        {
            return Err(Error::Usage(format!(
                "{}: built from another model ({}{}, weights sha256 {}…; this model is {}…); rebuild it with `t1-train index`",
                path.display(),
                meta.model,
                meta.model_step
                    .map(|s| format!(" at step {s}"))
                    .unwrap_or_default(),
                &meta.model_sha256[..12.min(meta.model_sha256.len())],
                &m[..12.min(m.len())]
            )));
        }
    }
    Ok(())
}

/// The `k` best documents of each query, in trec_eval order (score descending, then document id
/// descending), skipping each query's `excluded` documents: `queries` `[q, d]` scored
/// `chunk` queries at a time, so memory stays at `chunk × N` scores however many queries come.
pub fn top_k<B: Backend>(
    index: &DocIndex<B>,
    queries: Tensor<B, 2>,
    ids: &[String],
    k: usize,
    chunk: usize,
    excluded: &[std::collections::HashSet<usize>],
) -> Result<Vec<Vec<(usize, f32)>>> {
    let q = queries.dims()[0];
    let mut out = Vec::with_capacity(q);
    let mut start = 0;
    while start < q {
        let end = (start + chunk.max(1)).min(q);
        let rows = index.scores(queries.clone().slice(start..end))?;
        for (r, row) in rows.into_iter().enumerate() {
            let none = std::collections::HashSet::new();
            let ex = excluded.get(start + r).unwrap_or(&none);
            out.push(trec_top(&row, ids, ex, k));
        }
        start = end;
    }
    Ok(out)
}

/// Top `k` of one row of scores in trec_eval order, `excluded` left out.
pub fn trec_top(
    row: &[f32],
    ids: &[String],
    excluded: &std::collections::HashSet<usize>,
    k: usize,
) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..row.len()).filter(|i| !excluded.contains(i)).collect();
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &usize, b: &usize| {
        row[*b]
            .total_cmp(&row[*a])
            .then_with(|| ids[*b].cmp(&ids[*a]))
    };
    order.select_nth_unstable_by(k - 1, cmp);
    order.truncate(k);
    order.sort_by(cmp);
    order.into_iter().map(|i| (i, row[i])).collect()
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
    let top = trec_top(row, ids, excluded, k)
        .into_iter()
        .enumerate()
        .map(|(r, (i, score))| ScoredDoc {
            id: ids[i].clone(),
            score,
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
        super::trec_order(&mut hits);
        for (d, _) in &g {
            let pos = hits.iter().position(|(id, _)| *id == d.id).unwrap() + 1;
            assert_eq!(d.rank, pos, "{}", d.id);
        }
    }
}
