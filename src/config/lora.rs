//! `[lora]` (issue 22): the backbone frozen, low-rank adapters `W + (α/r)·A·B` on the listed
//! projections of every layer, and the rows of the T1 tokens trained in full, saved as a PEFT
//! adapter (`adapter_config.json` + `adapter_model.safetensors`). A stage that starts from a
//! LoRA stage's `best/` starts from its merged model with fresh adapters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_inline_default::serde_inline_default;

use super::{Ctx, never};
use crate::error::Result;

/// The linear layers an adapter can sit on, by their HF (and PEFT `target_modules`) names
/// (matched in `model::lora`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The HF module name (`q_proj`, …, `down_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The target of an HF module name, or `None`.
    pub fn from_hf_name(name: &str) -> Option<LoraTarget> {
        LoraTarget::ALL.into_iter().find(|t| t.hf_name() == name)
    }

    /// Every HF name, in layer order.
    fn all_hf_names() -> Vec<String> {
        LoraTarget::ALL
            .iter()
            .map(|t| t.hf_name().to_string())
            .collect()
    }
}

/// [`LoraSection::base_dtype`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BaseDType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl BaseDType {
    /// The default (left out of the config hash, so older LoRA checkpoints still resume).
    pub fn is_f32(&self) -> bool {
        *self == BaseDType::F32
    }

    /// The half dtype asked for (`None` for f32).
    pub fn half(self) -> Option<burn::tensor::FloatDType> {
        use burn::tensor::FloatDType;
        match self {
            BaseDType::F32 => None,
            BaseDType::Bf16 => Some(FloatDType::BF16),
            BaseDType::F16 => Some(FloatDType::F16),
        }
    }
}

#[serde_inline_default]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Train adapters (+ the T1 token rows) on a frozen base (true) or every weight (false);
    /// docs/lora.md.
    #[serde(default)]
    pub enabled: bool,
    /// Adapter rank r.
    #[serde_inline_default(16)]
    pub rank: usize,
    /// Scale numerator: the update is `(alpha / rank)·A·B` (PEFT's `lora_alpha`).
    #[serde_inline_default(32.0)]
    pub alpha: f64,
    /// rsLoRA: scale by `alpha / √rank` instead.
    #[serde(default)]
    pub use_rslora: bool,
    /// Projections that get an adapter, by their HF names (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    #[serde_inline_default(LoraTarget::all_hf_names())]
    pub target_modules: Vec<String>,
    /// Train the embedding rows (and an untied LM head's rows) of `<think>`, `</think>` and
    /// `<emb_token>` in full beside the adapters (PEFT's `trainable_token_indices`): added tokens
    /// start as the mean row, and a frozen mean `<emb_token>` could not learn to pool.
    #[serde_inline_default(true)]
    pub train_new_tokens: bool,
    /// Dropout on the adapter input. Only 0 is accepted for now (no seeded mask yet, so a run
    /// with dropout could not be resumed exactly).
    #[serde(default)]
    pub dropout: f64,
    /// The dtype the frozen base's projection weights (q/k/v/o/gate/up/down of every layer) are
    /// held in: `f32`, `bf16` (f16 where the backend lacks bf16), or `f16`. Adapters, token
    /// rows, norms, embeddings, the LM head, gradients and AdamW state stay f32. Halves the
    /// weights that dominate a LoRA run's memory on GPU backends; on the CPU backend the half
    /// matmuls are slower than its f32 kernels (docs/lora.md).
    #[serde(default, skip_serializing_if = "BaseDType::is_f32")]
    #[schemars(skip_serializing_if = "never")]
    pub base_dtype: BaseDType,
}

impl LoraSection {
    pub(super) fn validate(&self, c: &Ctx) -> Result<()> {
        let l = self;
        c.at_least(1, "", &[("lora.rank", l.rank as u64)])?;
        c.positive(&[("lora.alpha", l.alpha)])?;
        c.unit(false, &[("lora.dropout", l.dropout)])?;
        if l.dropout > 0.0 {
            return Err(c.err(
                "lora.dropout",
                format!(
                    "{} is not supported yet: only 0 (adapter dropout needs a seeded mask for \
                     exact resume, not written yet)",
                    l.dropout
                ),
            ));
        }
        if l.base_dtype != BaseDType::F32 && !l.enabled {
            return Err(c.err(
                "lora.base_dtype",
                format!(
                    "{:?} needs lora.enabled = true: only a frozen base can be held in half \
                     precision (the weights AdamW updates stay f32)",
                    l.base_dtype
                ),
            ));
        }
        if l.target_modules.is_empty() {
            return Err(c.err("lora.target_modules", "an empty list"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, name) in l.target_modules.iter().enumerate() {
            if LoraTarget::from_hf_name(name).is_none() {
                return Err(c.err(
                    &format!("lora.target_modules[{i}]"),
                    format!(
                        "unknown module {name:?}; names: {}",
                        LoraTarget::all_hf_names().join(", ")
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(c.err(
                    &format!("lora.target_modules[{i}]"),
                    format!("{name:?} listed twice"),
                ));
            }
        }
        Ok(())
    }
}
