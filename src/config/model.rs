//! `[model]`: the backbone a stage starts from (an HF folder or a named preset) and the token
//! budgets of the query, reasoning and document views.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::Ctx;
use crate::error::Result;

/// The names `model.preset` takes (`model::DecoderConfig::preset` builds each).
pub const MODEL_PRESETS: &[&str] = &["tiny"];

#[serde_inline_default]
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model folder to start from (`config.json`, safetensors, `tokenizer.json`), e.g. the
    /// previous stage's `runs/<name>/best`, or a LoRA stage's adapter folder (merged into its
    /// base); checked when loaded. Relative to the config file. Exclusive with `preset`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A named preset initialised from `run.seed` (`tiny`). Needs `tokenizer`.
    #[serde(default)]
    pub preset: Option<String>,
    /// `tokenizer.json` for a preset (its vocabulary sizes the model). Relative to the config
    /// file.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Query tokens kept in the query view.
    #[serde_inline_default(64)]
    pub max_query_tokens: usize,
    /// Reasoning tokens kept when teacher forcing, and generated at most.
    #[serde_inline_default(128)]
    pub max_reasoning_tokens: usize,
    /// Hugging Face's `repetition_penalty` wherever the model writes its reasoning: stage-3
    /// rollouts and the greedy reasoning of evaluation and `search`. Before each token is chosen,
    /// the logit of every token already in the prompt or the reasoning so far is divided by it
    /// (multiplied when negative), so values above 1 discourage repeats and loops. 1 = off. The
    /// log-probs the GRPO loss uses stay the model's own (before the penalty), as in TRL.
    #[serde_inline_default(1.0)]
    pub repetition_penalty: f32,
    /// Title + text tokens kept in the document view (longer documents are cut and counted in
    /// the log).
    #[serde_inline_default(256)]
    pub max_doc_tokens: usize,
}

impl ModelSection {
    /// Exactly one of `path` and `preset`; paths resolved; budgets ≥ 1; a finite, positive
    /// repetition penalty.
    pub(super) fn validate(&mut self, c: &Ctx) -> Result<()> {
        c.positive(&[("model.repetition_penalty", self.repetition_penalty)])?;
        match (&self.path, &self.preset) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(c.err(
                    "model.path",
                    "set exactly one of model.path (an HF folder) and model.preset",
                ));
            }
            // Existence is checked when the model is loaded: a curriculum's later stage
            // names a folder that an earlier stage has not written yet.
            (Some(p), None) => self.path = Some(c.resolve(p)),
            (None, Some(name)) => {
                if !MODEL_PRESETS.contains(&name.as_str()) {
                    return Err(c.err(
                        "model.preset",
                        format!(
                            "unknown model preset '{name}'; presets: {} (or give a HF model \
                             folder)",
                            MODEL_PRESETS.join(", ")
                        ),
                    ));
                }
                let Some(t) = &self.tokenizer else {
                    return Err(c.err(
                        "model.tokenizer",
                        "a preset needs a tokenizer.json (its vocabulary sizes the model)",
                    ));
                };
                let t = c.resolve(t);
                if !t.is_file() {
                    return Err(c.err("model.tokenizer", format!("{} does not exist", t.display())));
                }
                self.tokenizer = Some(t);
            }
        }
        for (key, v) in [
            ("model.max_query_tokens", self.max_query_tokens),
            ("model.max_reasoning_tokens", self.max_reasoning_tokens),
            ("model.max_doc_tokens", self.max_doc_tokens),
        ] {
            if v == 0 {
                return Err(c.err(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}
