//! The tokenizer with T1's special tokens, and the two prompt views (DESIGN §1).
//!
//! - query view: `instruction + query + <think>` → reasoning → `</think><emb_token>`; the query
//!   vector is the last-layer state at `<emb_token>`.
//! - document view: `doc_instruction + title + text + <emb_token>`, embedded in one pass.
//!
//! `<think>`, `</think>` and `<emb_token>` are added as special tokens when a tokenizer lacks them;
//! the model then grows its embedding (and untied head) with [`Decoder::resize_vocab`].
//!
//! [`Decoder::resize_vocab`]: super::Decoder::resize_vocab

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

pub const THINK: &str = "<think>";
pub const END_THINK: &str = "</think>";
pub const EMB: &str = "<emb_token>";

/// Default instructions of the two views.
pub const QUERY_INSTRUCTION: &str =
    "Reason about what a relevant document would contain, then summarise it.\nQuery: ";
pub const DOC_INSTRUCTION: &str = "Document: ";

/// A `tokenizers` tokenizer that is known to carry the T1 tokens.
#[derive(Clone)]
pub struct T1Tokenizer {
    inner: Tokenizer,
    pub think: u32,
    pub end_think: u32,
    pub emb: u32,
    /// End of sequence (generation stops on it), when the tokenizer has one.
    pub eos: Option<u32>,
    /// Padding id: the tokenizer's pad token, else EOS, else `<emb_token>` (never attended to).
    pub pad: u32,
    /// T1 tokens that were missing and have been added (the model must grow to `vocab_size()`).
    pub added: Vec<String>,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("{}: {e}", path.display()))
}

impl T1Tokenizer {
    /// Loads `tokenizer.json`, adding whichever T1 tokens it lacks as special tokens.
    pub fn load(path: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        let missing: Vec<String> = [THINK, END_THINK, EMB]
            .iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| t.to_string())
            .collect();
        if !missing.is_empty() {
            let tokens: Vec<AddedToken> = missing
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect();
            inner
                .add_special_tokens(tokens)
                .map_err(|e| tok_err(path, format!("cannot add the T1 tokens: {e}")))?;
        }
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| tok_err(path, format!("token {t} could not be added")))
        };
        let (think, end_think, emb) = (id(THINK)?, id(END_THINK)?, id(EMB)?);
        let eos = [
            "<|endoftext|>",
            "<|im_end|>",
            "</s>",
            "<|end_of_text|>",
            "<|eot_id|>",
        ]
        .iter()
        .find_map(|t| inner.token_to_id(t));
        let pad = inner.get_padding().map(|p| p.pad_id).or(eos).unwrap_or(emb);
        Ok(T1Tokenizer {
            inner,
            think,
            end_think,
            emb,
            eos,
            pad,
            added: missing,
        })
    }

    /// Vocabulary size including added tokens: the model's embedding must have at least this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (no BOS/EOS added; special-token strings in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))
    }

    /// Text of `ids` (special tokens kept when `keep_special`).
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> Result<String> {
        self.inner
            .decode(ids, !keep_special)
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))
    }

    /// Writes `tokenizer.json` (with the added T1 tokens) — saved beside each checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| tok_err(path, e))
    }

    /// Query view prompt: `instruction + query + <think>`, truncated to `max_query_tokens` of query.
    pub fn query_prompt(&self, query: &str, max_query_tokens: usize) -> Result<Vec<u32>> {
        let mut ids = self.encode(QUERY_INSTRUCTION)?;
        let mut q = self.encode(query)?;
        q.truncate(max_query_tokens);
        ids.extend(q);
        ids.push(self.think);
        Ok(ids)
    }

    /// The query view with given reasoning (teacher forcing): prompt, reasoning tokens (cut at
    /// `max_reasoning_tokens`), `</think><emb_token>`. Returns (ids, prompt length).
    pub fn query_with_reasoning(
        &self,
        query: &str,
        reasoning: &str,
        max_query_tokens: usize,
        max_reasoning_tokens: usize,
    ) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.query_prompt(query, max_query_tokens)?;
        let prompt_len = ids.len();
        let mut r = self.encode(reasoning)?;
        r.truncate(max_reasoning_tokens);
        ids.extend(r);
        ids.push(self.end_think);
        ids.push(self.emb);
        Ok((ids, prompt_len))
    }

    /// Document view: `doc_instruction + title + text` (cut at `max_doc_tokens`) `+ <emb_token>`.
    /// Returns the ids and whether the document was truncated.
    pub fn doc_view(
        &self,
        title: &str,
        text: &str,
        max_doc_tokens: usize,
    ) -> Result<(Vec<u32>, bool)> {
        let mut ids = self.encode(DOC_INSTRUCTION)?;
        let body = if title.is_empty() {
            text.to_string()
        } else {
            format!("{title}\n{text}")
        };
        let mut b = self.encode(&body)?;
        let truncated = b.len() > max_doc_tokens;
        b.truncate(max_doc_tokens);
        ids.extend(b);
        ids.push(self.emb);
        Ok((ids, truncated))
    }
}
