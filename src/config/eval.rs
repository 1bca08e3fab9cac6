//! `[eval]`: the retriever, the query view and the run depth of `t1-train eval` and of the
//! stages' periodic evaluation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Split to evaluate with `t1-train eval`. Unset: the data section's `test_split`.
    #[serde(default)]
    pub split: Option<String>,
    /// Retriever used by `t1-train eval`: `bm25` (the lexical baseline) or `dense` (the
    /// `[model]`'s `<emb_token>` vectors, cosine).
    #[serde(default)]
    pub retriever: RetrieverKind,
    /// What stands for the query: `bare` (the query alone), `gold_reasoning` (query + its gold
    /// reasoning from `queries.jsonl`), `generated` (dense only: the model writes its own
    /// reasoning, greedy: how T1 is used), `mixed` (dense only: the bare and the own-reasoning
    /// vectors, each unit-length, added: cosine = the mean of the two views' cosines, up to a
    /// per-query scale) or `latent` (dense only: K latent steps, `[latent]`).
    #[serde(default)]
    pub query_view: QueryView,
    /// BM25 k1 (term-frequency saturation; Pyserini's default).
    #[serde_inline_default(0.9)]
    pub bm25_k1: f32,
    /// BM25 b (length normalisation; Pyserini's default).
    #[serde_inline_default(0.4)]
    pub bm25_b: f32,
    /// Documents kept per query in the TREC run file; must be ≥ 100 for Recall@100.
    #[serde_inline_default(1000)]
    pub depth: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetrieverKind {
    /// Okapi BM25 over whitespace/punctuation tokens (lower-cased).
    #[default]
    Bm25,
    /// The `[model]`: cosine between `<emb_token>` states of the query and document views.
    Dense,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryView {
    /// The query text alone.
    #[default]
    Bare,
    /// The query followed by its gold reasoning (an upper bound for what reasoning can add).
    GoldReasoning,
    /// The model's own greedy reasoning (dense retrieval only): how T1 is used at query time.
    Generated,
    /// LaSER: K latent steps after the prompt, no decoding (dense retrieval only; `[latent]`).
    Latent,
    /// The bare query's vector plus the own-reasoning vector, each scaled to unit length (dense
    /// only): ranks by the sum of the two views' cosines, so neither the query nor the
    /// reasoning alone decides.
    Mixed,
}

impl EvalSection {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        c.non_negative(&[("eval.bm25_k1", self.bm25_k1)])?;
        c.unit(true, &[("eval.bm25_b", self.bm25_b)])?;
        if self.depth < 100 {
            return Err(c.err(
                "eval.depth",
                format!("must be ≥ 100 so Recall@100 is exact, got {}", self.depth),
            ));
        }
        if self.retriever == RetrieverKind::Bm25
            && matches!(
                self.query_view,
                QueryView::Generated | QueryView::Latent | QueryView::Mixed
            )
        {
            let name = match self.query_view {
                QueryView::Latent => "latent",
                QueryView::Mixed => "mixed",
                _ => "generated",
            };
            return Err(c.err(
                "eval.query_view",
                format!("`{name}` needs a model: use it with retriever = \"dense\""),
            ));
        }
        Ok(())
    }
}
