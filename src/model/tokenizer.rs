//! The tokenizer with T1's special tokens, and the two prompt views (DESIGN §1).
//!
//! - query view: `instruction + query + <think>` → reasoning → `</think><emb_token>`; the query
//!   vector is the last-layer state at `<emb_token>`.
//! - document view: `doc_instruction + title + text + <emb_token>`, embedded in one pass.
//!
//! When `tokenizer_config.json` sits beside `tokenizer.json` with a `chat_template` (as HF
//! instruct models ship), the query view's user turn is rendered through it (minijinja, with
//! Python string methods), exactly as `apply_chat_template(..., add_generation_prompt=True)`, and
//! `<think>` follows the assistant header. Its `eos_token` is the stop token.
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
    /// `tokenizer_config.json` beside `tokenizer.json`, kept to be saved with checkpoints.
    config: Option<serde_json::Value>,
    /// Its `chat_template`, checked to compile at load.
    chat_template: Option<String>,
}

/// A special token entry of `tokenizer_config.json`: `"<s>"` or `{"content": "<s>", ...}`.
fn config_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(str::to_string),
    }
}

/// `chat_template` renders `messages` with `add_generation_prompt`, as transformers does.
fn render_chat(
    template: &str,
    cfg: Option<&serde_json::Value>,
    user: &str,
) -> std::result::Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)?;
    let tok = |k: &str| cfg.and_then(|c| config_token(c, k)).unwrap_or_default();
    env.get_template("chat")?.render(minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user }],
        add_generation_prompt => true,
        // Qwen3-style templates: let the model think (we open <think> ourselves).
        enable_thinking => true,
        bos_token => tok("bos_token"),
        eos_token => tok("eos_token"),
    })
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("{}: {e}", path.display()))
}

impl T1Tokenizer {
    /// Loads `tokenizer.json`, adding whichever T1 tokens it lacks as special tokens.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Config {
                location: path.display().to_string(),
                message: "no such tokenizer file (a model folder needs tokenizer.json)".into(),
            });
        }
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
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let config: Option<serde_json::Value> = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            Some(serde_json::from_str(&text).map_err(|e| {
                Error::data(&cfg_path, e.line(), None, format!("malformed JSON: {e}"))
            })?)
        } else {
            None
        };
        let chat_template = config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        if let Some(t) = &chat_template {
            render_chat(t, config.as_ref(), "check").map_err(|e| {
                Error::data(
                    &cfg_path,
                    1,
                    Some("chat_template"),
                    format!("does not render: {e}"),
                )
            })?;
        }
        let configured = |key: &str| {
            config
                .as_ref()
                .and_then(|c| config_token(c, key))
                .and_then(|t| inner.token_to_id(&t))
        };
        let eos = configured("eos_token").or_else(|| {
            [
                "<|endoftext|>",
                "<|im_end|>",
                "</s>",
                "<|end_of_text|>",
                "<|eot_id|>",
            ]
            .iter()
            .find_map(|t| inner.token_to_id(t))
        });
        let pad = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| configured("pad_token"))
            .or(eos)
            .unwrap_or(emb);
        Ok(T1Tokenizer {
            inner,
            think,
            end_think,
            emb,
            eos,
            pad,
            added: missing,
            config,
            chat_template,
        })
    }

    /// Whether the query view goes through the model's chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// `text` cut to its first `max_tokens` tokens, at the end offset of the last kept token
    /// (so the whole prompt can then be tokenised in one piece). Also says whether it was cut.
    fn truncate_text<'a>(&self, text: &'a str, max_tokens: usize) -> Result<(&'a str, bool)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))?;
        if enc.len() <= max_tokens {
            return Ok((text, false));
        }
        let mut end = match max_tokens {
            0 => 0,
            n => enc.get_offsets()[n - 1].1.min(text.len()),
        };
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok((&text[..end], true))
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

    /// Writes `tokenizer.json` (with the added T1 tokens), and `tokenizer_config.json` beside it
    /// when one was loaded — saved with each checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| tok_err(path, e))?;
        if let Some(cfg) = &self.config {
            let text = serde_json::to_string_pretty(cfg).map_err(|e| {
                Error::Runtime(format!("cannot serialise tokenizer_config.json: {e}"))
            })?;
            crate::fsio::write_atomic(
                &path.with_file_name("tokenizer_config.json"),
                text.as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Query view prompt: the user turn `instruction + query` (query cut to `max_query_tokens`
    /// tokens), through the chat template when the tokenizer has one, then `<think>`.
    pub fn query_prompt(&self, query: &str, max_query_tokens: usize) -> Result<Vec<u32>> {
        let (q, _) = self.truncate_text(query, max_query_tokens)?;
        let user = format!("{QUERY_INSTRUCTION}{q}");
        let text = match &self.chat_template {
            Some(t) => render_chat(t, self.config.as_ref(), &user)
                .map_err(|e| Error::Runtime(format!("chat template: {e}")))?,
            None => user,
        };
        let mut ids = self.encode(&text)?;
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

    /// Where the reasoning's segments end, for LaSER's trajectory alignment: token indices
    /// (0-based, relative to the first reasoning token) of the last token of each segment, in
    /// order, counting only the first `max_reasoning_tokens` tokens (as in
    /// [`Self::query_with_reasoning`]). A segment ends at a blank line, after `.`, `!`, `?` or
    /// `;` followed by whitespace, and at the end of the (kept) reasoning.
    pub fn reasoning_segment_ends(
        &self,
        reasoning: &str,
        max_reasoning_tokens: usize,
    ) -> Result<Vec<usize>> {
        let enc = self
            .inner
            .encode(reasoning, false)
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))?;
        let n = enc.len().min(max_reasoning_tokens);
        if n == 0 {
            return Ok(Vec::new());
        }
        let offsets = &enc.get_offsets()[..n];
        // byte positions where a segment ends (exclusive)
        let bytes = reasoning.as_bytes();
        let mut cuts = Vec::new();
        for (i, &c) in bytes.iter().enumerate() {
            let next = bytes.get(i + 1).copied();
            let sentence = matches!(c, b'.' | b'!' | b'?' | b';')
                && next.is_some_and(|x| x.is_ascii_whitespace());
            let blank = c == b'\n' && next == Some(b'\n');
            if sentence || blank {
                cuts.push(i + 1);
            }
        }
        let mut ends: Vec<usize> = Vec::new();
        for cut in cuts {
            // the last token starting before the cut
            if let Some(t) = offsets.iter().rposition(|&(start, _)| start < cut)
                && ends.last() != Some(&t)
            {
                ends.push(t);
            }
        }
        ends.retain(|&t| t < n - 1);
        ends.push(n - 1);
        Ok(ends)
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
