//! Memory estimates checked before anything large is allocated, so a config that cannot fit
//! (`num_hidden_layers: 100000`, `train.batch_size = 1000000`, a billion-token generation) is a
//! clear exit-2 error naming the file and field instead of an allocation abort.
//!
//! The estimates are deliberately low (weights in f32; the activations a forward/backward cannot
//! avoid: the logits, and per layer the hidden states, MLP activations and attention scores), and
//! they are compared with the machine's physical memory plus swap: a config refused here could not
//! have run, and one that passes may still be too large — the check catches the absurd, not the
//! tight. `T1_SKIP_MEMORY_CHECK=1` turns it off (e.g. a GPU with more memory than its host).

use super::config::DecoderConfig;
use crate::error::{Error, Result};

/// Parameters of a decoder with config `c` (embeddings, every layer, final norm, untied head;
/// biases counted as if present: an upper bound). In f64, so absurd configs cannot overflow.
pub fn param_count(c: &DecoderConfig) -> f64 {
    let (v, d, i) = (
        c.vocab_size as f64,
        c.hidden_size as f64,
        c.intermediate_size as f64,
    );
    let q = c.num_attention_heads as f64 * c.head_dim as f64;
    let kv = c.num_key_value_heads as f64 * c.head_dim as f64;
    let attn = d * q + 2.0 * d * kv + q * d;
    let mlp = 3.0 * d * i;
    let norms = 2.0 * d + 2.0 * c.head_dim as f64;
    let biases = q + 2.0 * kv + d + 3.0 * i;
    let head = if c.tie_word_embeddings { 0.0 } else { v * d };
    v * d + c.num_hidden_layers as f64 * (attn + mlp + norms + biases) + d + head
}

/// The weights of every layer's seven projections (q, k, v, o, gate, up, down; no biases): what
/// `lora.base_dtype` holds in half precision.
pub fn projection_count(c: &DecoderConfig) -> f64 {
    let (d, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = c.num_attention_heads as f64 * c.head_dim as f64;
    let kv = c.num_key_value_heads as f64 * c.head_dim as f64;
    c.num_hidden_layers as f64 * (d * q + 2.0 * d * kv + q * d + 3.0 * d * i)
}

/// Trainable parameters of the adapters `spec` attaches to a model with config `c`: `r·(d_in +
/// d_out)` per target per layer, plus the full rows of the trainable tokens (twice on an untied
/// model: embedding and LM head).
pub fn lora_param_count(c: &DecoderConfig, spec: &super::LoraSpec) -> f64 {
    use super::Target;
    let (d, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = c.num_attention_heads as f64 * c.head_dim as f64;
    let kv = c.num_key_value_heads as f64 * c.head_dim as f64;
    let mut targets = spec.targets.clone();
    targets.sort();
    targets.dedup();
    let per_layer: f64 = targets
        .iter()
        .map(|t| match t {
            Target::Q => d + q,
            Target::K | Target::V => d + kv,
            Target::O => q + d,
            Target::Gate | Target::Up | Target::Down => d + i,
        })
        .sum::<f64>()
        * spec.rank as f64;
    let heads = if c.tie_word_embeddings { 1.0 } else { 2.0 };
    c.num_hidden_layers as f64 * per_layer + spec.tokens.len() as f64 * d * heads
}

/// Bytes the activations of one forward (and, with `train`, its backward) over `rows`
/// sequences of `seq` tokens need at least, in f32. In f64: absurd sizes give huge numbers (or
/// infinity), never an overflow.
pub fn activation_bytes(c: &DecoderConfig, rows: usize, seq: usize, train: bool) -> f64 {
    let (r, t) = (rows as f64, seq as f64);
    let (d, i, v) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.vocab_size as f64,
    );
    let heads = c.num_attention_heads as f64;
    let per_layer = r * t * (4.0 * d + 3.0 * i) + r * heads * t * t;
    let logits = r * t * v;
    let layers = if train {
        c.num_hidden_layers as f64
    } else {
        1.0
    };
    4.0 * (layers * per_layer + logits)
}

/// Bytes of a KV cache for `rows` sequences of up to `seq` tokens, in f32.
pub fn kv_cache_bytes(c: &DecoderConfig, rows: usize, seq: usize) -> f64 {
    8.0 * c.num_hidden_layers as f64
        * rows as f64
        * seq as f64
        * (c.num_key_value_heads * c.head_dim) as f64
}

/// Physical memory plus swap of this machine (`/proc/meminfo`); `None` where unknown.
pub fn machine_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

fn gib(b: f64) -> String {
    format!("{:.1} GiB", b / (1u64 << 30) as f64)
}

/// An exit-2 error at `location` when `bytes` (what `what` needs) exceed the machine's memory.
pub fn check_fits(location: &str, what: &str, bytes: f64) -> Result<()> {
    if std::env::var_os("T1_SKIP_MEMORY_CHECK").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let Some(have) = machine_bytes() else {
        return Ok(());
    };
    let have = have as f64;
    if bytes.is_nan() || bytes > have {
        return Err(Error::Config {
            location: location.to_string(),
            message: format!(
                "{what} needs at least {} but this machine has {} of memory and swap in all; \
                 lower it (T1_SKIP_MEMORY_CHECK=1 skips this check)",
                gib(bytes),
                gib(have)
            ),
        });
    }
    Ok(())
}

/// The f32 weights of config `c` (read from `path`) fit in memory.
pub fn check_weights_fit(c: &DecoderConfig, path: &std::path::Path) -> Result<()> {
    check_fits(
        &format!(
            "{} (fields 'num_hidden_layers', 'hidden_size', 'intermediate_size', 'vocab_size')",
            path.display()
        ),
        &format!("a model of {:.3e} parameters (f32)", param_count(c)),
        param_count(c) * 4.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_tiny_preset_module() {
        use burn::backend::Flex;

        let c = DecoderConfig::preset("tiny", 1024).unwrap();
        let m = c.init::<Flex>(&Default::default());
        // the estimate counts biases that this config may not have: an upper bound within 1 %
        let exact = m.num_params() as f64;
        let est = param_count(&c);
        assert!(est >= exact && est <= exact * 1.01, "{est} vs {exact}");
    }

    #[test]
    fn absurd_sizes_are_refused_and_small_ones_pass() {
        let mut c = DecoderConfig::preset("tiny", 1024).unwrap();
        check_weights_fit(&c, std::path::Path::new("config.json")).unwrap();
        c.num_hidden_layers = 100_000_000;
        let e = check_weights_fit(&c, std::path::Path::new("x/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json") && e.contains("num_hidden_layers"),
            "{e}"
        );
        assert!(
            activation_bytes(&c, usize::MAX, usize::MAX, true) > 1e30,
            "no overflow panic"
        );
        c.vocab_size = usize::MAX;
        c.hidden_size = usize::MAX;
        assert!(check_weights_fit(&c, std::path::Path::new("c.json")).is_err());
    }
}
