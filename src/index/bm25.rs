//! Okapi BM25, the lexical baseline every retrieval user compares against.
//!
//! Lucene's formulation (as Pyserini): `idf = ln(1 + (N - df + 0.5) / (df + 0.5))`,
//! `tf·(k1+1) / (tf + k1·(1 - b + b·dl/avgdl))`. Terms are lower-cased runs of letters and digits.
//! Exact scoring over an inverted index; no stemming, no stop words.

use std::collections::HashMap;

use crate::data::Corpus;

/// An inverted index over a corpus.
pub struct Bm25 {
    k1: f64,
    b: f64,
    /// term → (doc row, term frequency)
    postings: HashMap<String, Vec<(u32, u32)>>,
    doc_len: Vec<f64>,
    avg_len: f64,
}

/// Lower-cased alphanumeric tokens.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
}

impl Bm25 {
    pub fn build(corpus: &Corpus, k1: f32, b: f32) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::with_capacity(corpus.len());
        for i in 0..corpus.len() {
            let mut tf: HashMap<String, u32> = HashMap::new();
            let mut len = 0usize;
            for t in terms(&corpus.full_text(i)) {
                *tf.entry(t).or_default() += 1;
                len += 1;
            }
            doc_len.push(len as f64);
            for (t, c) in tf {
                postings.entry(t).or_default().push((i as u32, c));
            }
        }
        let avg_len = doc_len.iter().sum::<f64>() / doc_len.len().max(1) as f64;
        Bm25 {
            k1: k1 as f64,
            b: b as f64,
            postings,
            doc_len,
            avg_len: avg_len.max(1e-9),
        }
    }

    /// Scores of every document that shares a term with `query` (others score 0 and are not returned).
    pub fn score(&self, query: &str) -> Vec<(usize, f64)> {
        let n = self.doc_len.len() as f64;
        let mut acc: HashMap<u32, f64> = HashMap::new();
        for t in terms(query) {
            let Some(list) = self.postings.get(&t) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(d, tf) in list {
                let tf = tf as f64;
                let norm =
                    self.k1 * (1.0 - self.b + self.b * self.doc_len[d as usize] / self.avg_len);
                *acc.entry(d).or_default() += idf * tf * (self.k1 + 1.0) / (tf + norm);
            }
        }
        acc.into_iter().map(|(d, s)| (d as usize, s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_document_ranks_first_and_repeated_query_terms_count() {
        let corpus = crate::data::Corpus::from_rows(&[
            ("a", "", "the cat sat on the mat"),
            ("b", "", "dogs run in the park"),
            ("c", "", "a cat and a dog"),
        ]);
        let idx = Bm25::build(&corpus, 0.9, 0.4);
        let mut s = idx.score("cat mat");
        s.sort_by(|x, y| y.1.partial_cmp(&x.1).unwrap());
        assert_eq!(s[0].0, 0);
        assert_eq!(s.len(), 2);
        let once = idx.score("cat").into_iter().find(|x| x.0 == 2).unwrap().1;
        let twice = idx
            .score("cat cat")
            .into_iter()
            .find(|x| x.0 == 2)
            .unwrap()
            .1;
        assert!((twice - 2.0 * once).abs() < 1e-12);
    }
}
