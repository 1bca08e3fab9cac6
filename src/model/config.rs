//! Decoder configuration: read from a Hugging Face `config.json` (`model_type` llama, qwen2,
//! qwen3) or built from a named preset, and written back in HF form with a saved model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Architecture family; decides the per-family defaults HF applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama / SmolLM: optional `attention_bias` on q/k/v/o, no q/k norm.
    Llama,
    /// Qwen2: bias on q/k/v (always), none on o.
    Qwen2,
    /// Qwen3: RMSNorm on each head of q and k before RoPE; `attention_bias` on q/k/v/o.
    Qwen3,
}

/// RoPE frequency scaling (HF `rope_scaling`). Only the kinds whose math we implement are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3's band-wise scaling of inverse frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything the decoder needs; field names follow HF's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Std of the normal init of fresh weights (HF `initializer_range`).
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// The subset of HF `config.json` we read. Unknown keys are ignored (HF configs carry many
/// unrelated ones); keys that change the math and that we do not implement are rejected.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `rope_theta` and the scaling together here.
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_init")]
    initializer_range: f64,
    hidden_act: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_init() -> f64 {
    0.02
}

/// HF allows a single id or a list; we keep the first.
fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

impl DecoderConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_hf_json(&text).map_err(|m| Error::Config {
            location: path.display().to_string(),
            message: m,
        })
    }

    /// Parses an HF `config.json` string; the error is a message without location.
    pub fn from_hf_json(text: &str) -> std::result::Result<Self, String> {
        let hf: HfConfig =
            serde_json::from_str(text).map_err(|e| format!("not a usable HF config.json: {e}"))?;
        let family = match hf.model_type.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => {
                return Err(format!(
                    "model_type '{other}' is not supported; supported: llama, qwen2, qwen3"
                ));
            }
        };
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(format!("hidden_act '{act}' is not supported (only silu)"));
        }
        if hf.use_sliding_window == Some(true) {
            return Err("use_sliding_window = true is not supported".into());
        }
        // transformers 5: {"rope_theta": .., "rope_type": .., scaling fields}; 4.x: top-level keys.
        let mut rope_theta = hf.rope_theta;
        let mut scaling_json = hf.rope_scaling.clone();
        if let Some(serde_json::Value::Object(params)) = &hf.rope_parameters {
            let mut params = params.clone();
            if let Some(t) = params.remove("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(t);
            }
            if scaling_json.is_none() {
                scaling_json = Some(serde_json::Value::Object(params));
            }
        }
        let theta_given = rope_theta;
        let rope_theta = rope_theta.unwrap_or_else(default_theta);
        let rope_scaling = match &scaling_json {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let mut v = v.clone();
                // HF's older key is "type"; newer is "rope_type". "default" means no scaling.
                if let Some(obj) = v.as_object_mut()
                    && !obj.contains_key("rope_type")
                    && let Some(t) = obj.remove("type")
                {
                    obj.insert("rope_type".into(), t);
                }
                if v.get("rope_type").and_then(|t| t.as_str()) == Some("default") {
                    None
                } else {
                    Some(
                        serde_json::from_value::<RopeScaling>(v.clone()).map_err(|e| {
                            format!(
                                "rope_scaling {v} is not supported ({e}); supported: linear, llama3"
                            )
                        })?,
                    )
                }
            }
        };
        let heads = hf.num_attention_heads;
        let kv = hf.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv == 0 || heads % kv != 0 {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv})"
            ));
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / heads);
        for (field, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("head_dim", head_dim),
            ("max_position_embeddings", hf.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("field '{field}': must be at least 1, got 0"));
            }
        }
        if !(hf.rms_norm_eps > 0.0 && hf.rms_norm_eps.is_finite()) {
            return Err(format!(
                "field 'rms_norm_eps': must be > 0 and finite, got {}",
                hf.rms_norm_eps
            ));
        }
        if let Some(t) = theta_given.filter(|t| !(*t > 0.0 && t.is_finite())) {
            return Err(format!(
                "field 'rope_theta': must be > 0 and finite, got {t}"
            ));
        }
        if !(hf.initializer_range >= 0.0 && hf.initializer_range.is_finite()) {
            return Err(format!(
                "field 'initializer_range': must be ≥ 0 and finite, got {}",
                hf.initializer_range
            ));
        }
        match &rope_scaling {
            Some(RopeScaling::Linear { factor }) | Some(RopeScaling::Llama3 { factor, .. })
                if !(*factor > 0.0 && factor.is_finite()) =>
            {
                return Err(format!(
                    "field 'rope_scaling.factor': must be > 0 and finite, got {factor}"
                ));
            }
            _ => {}
        }
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Qwen3 => (hf.attention_bias, hf.attention_bias),
        };
        Ok(DecoderConfig {
            family,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias,
            initializer_range: hf.initializer_range,
            bos_token_id: first_id(&hf.bos_token_id),
            eos_token_id: first_id(&hf.eos_token_id),
        })
    }

    /// The HF `config.json` for this model (what `transformers` needs to load a saved folder).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (model_type, arch) = match self.family {
            Family::Llama => ("llama", "LlamaForCausalLM"),
            Family::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Family::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": "float32",
        });
        if self.family != Family::Qwen2 {
            v["attention_bias"] = serde_json::json!(self.qkv_bias);
        }
        if self.family == Family::Llama {
            v["mlp_bias"] = serde_json::json!(self.mlp_bias);
        }
        if let Some(rs) = &self.rope_scaling {
            // the 4.x key; transformers 5 still reads it (and rope_theta) and converts
            v["rope_scaling"] = serde_json::to_value(rs).unwrap_or(serde_json::Value::Null);
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = e.into();
        }
        v
    }

    /// The tiny preset (≈ 0.6M parameters with a 1k vocabulary): the embedded default and the
    /// tests. Qwen3-shaped (q/k norm, GQA 4:2), tied embeddings.
    pub fn tiny(vocab_size: usize) -> Self {
        DecoderConfig {
            family: Family::Qwen3,
            vocab_size,
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// A named preset: `tiny` (takes the tokenizer's vocabulary size).
    pub fn preset(name: &str, vocab_size: usize) -> std::result::Result<Self, String> {
        match name {
            "tiny" => Ok(Self::tiny(vocab_size)),
            other => Err(format!(
                "unknown model preset '{other}'; presets: tiny (or give a HF model folder)"
            )),
        }
    }

    /// Inverse RoPE frequencies `[head_dim / 2]`, with `rope_scaling` applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                // transformers' _compute_llama3_parameters
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_gets_qkv_bias_and_head_dim_defaults() {
        let c = DecoderConfig::from_hf_json(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"eos_token_id":[3,4]}"#,
        )
        .unwrap();
        assert_eq!(
            (c.qkv_bias, c.o_bias, c.head_dim, c.eos_token_id),
            (true, false, 4, Some(3))
        );
        let back = DecoderConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unsupported_things_are_named() {
        let e = DecoderConfig::from_hf_json(r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":1,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1}"#).unwrap_err();
        assert!(e.contains("gpt2") && e.contains("qwen3"), "{e}");
        let e = DecoderConfig::from_hf_json(r#"{"model_type":"llama","vocab_size":1,"hidden_size":4,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"rope_scaling":{"rope_type":"yarn","factor":2.0}}"#).unwrap_err();
        assert!(e.contains("rope_scaling"), "{e}");
    }
}
