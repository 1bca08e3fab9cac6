//! The backbone a config names: its `[model]` section, the HF folder or preset it loads (with
//! LoRA adapters attached when `[lora]` is on), and the checks that its lengths and a stage's
//! batches fit before anything runs.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::{Config, ModelSection};
use crate::error::{Error, Result};
use crate::model::peft::Adapter;
use crate::model::{Decoder, DecoderConfig, T1Tokenizer, save_hf};

/// The `[model]` section, or an error saying the stage needs it.
pub fn model_section(cfg: &Config) -> Result<&ModelSection> {
    cfg.raw.model.as_ref().ok_or_else(|| Error::Config {
        location: cfg.source.display().to_string(),
        message: "this command needs a [model] section (model.path or model.preset)".into(),
    })
}

/// The backbone a stage starts from: an HF folder, or a preset initialised from `run.seed`;
/// grown to the tokenizer's vocabulary when T1 tokens were added.
pub fn load_backbone<B: Backend>(
    cfg: &Config,
    device: &B::Device,
) -> Result<(Decoder<B>, T1Tokenizer)> {
    let m = model_section(cfg)?;
    let (model, tok) = match (&m.path, &m.preset) {
        (Some(dir), _) => {
            if !dir.join("config.json").exists() && !crate::model::is_adapter_dir(dir) {
                return Err(Error::Config {
                    location: format!("{} (key 'model.path')", cfg.source.display()),
                    message: format!(
                        "{} has no config.json (an HF model folder or a LoRA stage's adapter folder is expected; for a previous stage's runs/<name>/best, run that stage first)",
                        dir.display()
                    ),
                });
            }
            // the model first: it verifies the folder's SHA256SUMS (tokenizer included); an
            // adapter folder comes back merged into its base
            let model = crate::model::load_model::<B>(dir, device)?;
            (model, T1Tokenizer::load(&dir.join("tokenizer.json"))?)
        }
        (None, Some(name)) => {
            let (c, tok) = preset_config(cfg, name)?;
            (c.init_seeded::<B>(cfg.raw.run.seed, device)?, tok)
        }
        (None, None) => unreachable!("validate() requires model.path or model.preset"),
    };
    let model = if tok.vocab_size() > model.config().vocab_size {
        model.resize_vocab(tok.vocab_size())?
    } else {
        model
    };
    check_lengths(cfg, model.config())?;
    Ok((model, tok))
}

/// The preset `name`'s architecture at `model.tokenizer`'s vocabulary, and that tokenizer.
pub fn preset_config(cfg: &Config, name: &str) -> Result<(DecoderConfig, T1Tokenizer)> {
    let m = model_section(cfg)?;
    let tok_path = m.tokenizer.as_ref().ok_or_else(|| Error::Config {
        location: cfg.source.display().to_string(),
        message: "model.preset needs model.tokenizer".into(),
    })?;
    let tok = T1Tokenizer::load(tok_path)?;
    let c = DecoderConfig::preset(name, tok.vocab_size()).map_err(|message| Error::Config {
        location: cfg.source.display().to_string(),
        message,
    })?;
    Ok((c, tok))
}

/// `model` (a stage's starting model, from [`load_backbone`]) with fresh LoRA adapters when
/// `[lora]` is enabled (drawn from `run.seed`), and how its checkpoints are then written.
pub fn attach_lora<B: Backend>(
    cfg: &Config,
    run_root: &Path,
    model: Decoder<B>,
    tok: &T1Tokenizer,
) -> Result<(Decoder<B>, Option<Adapter>)> {
    if !cfg.raw.lora.enabled {
        return Ok((model, None));
    }
    let adapter = lora_adapter(cfg, run_root, &model, tok, true)?;
    let model = model.with_lora(&adapter.spec, cfg.raw.run.seed)?;
    Ok((model, Some(adapter)))
}

/// The adapter settings of a LoRA stage whose base model is `base`. The base folder its
/// adapters name is `model.path` when that is an HF folder; otherwise (a preset, or a previous
/// LoRA stage's adapter folder, merged) `base` is written once to `runs/<name>/base/`, so
/// every adapter the stage writes names a folder holding its base. `fresh` (a stage starting
/// at step 0) rewrites it, so one left by an earlier start under another config is not kept;
/// a resumed stage keeps the one its checkpoints were written against.
pub fn lora_adapter<B: Backend>(
    cfg: &Config,
    run_root: &Path,
    base: &Decoder<B>,
    tok: &T1Tokenizer,
    fresh: bool,
) -> Result<Adapter> {
    let spec = crate::model::LoraSpec::from_section(&cfg.raw.lora, tok);
    let m = model_section(cfg)?;
    if let Some(p) = &m.path
        && !crate::model::is_adapter_dir(p)
    {
        return Ok(Adapter {
            spec,
            base: p.clone(),
        });
    }
    let dir = run_root.join("base");
    // rank 0 alone writes the run folder (the other workers name the same base/)
    let main = crate::dist::world().is_main();
    if main && (fresh || !dir.join(crate::checksums::FILE).is_file()) {
        let tmp = run_root.join(".base.tmp");
        let written = (|| {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            }
            save_hf(base, &tmp)?;
            tok.save(&tmp.join("tokenizer.json"))?;
            crate::checksums::write(&tmp)?;
            crate::fsio::replace_dir(&tmp, &dir)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::Runtime(format!(
                "the LoRA base model was not written to {} ({e})",
                dir.display()
            )));
        }
    }
    Ok(Adapter { spec, base: dir })
}

/// The config's sequence lengths fit the model's positions: a query view (query + reasoning +
/// the closing tokens) and a document view within `max_position_embeddings`.
pub fn check_lengths(cfg: &Config, c: &DecoderConfig) -> Result<()> {
    let m = model_section(cfg)?;
    let max = c.max_position_embeddings;
    let latent = m.max_query_tokens.saturating_add(cfg.raw.latent.steps);
    for (key, len) in [
        (
            "model.max_query_tokens' + 'model.max_reasoning_tokens",
            m.max_query_tokens.saturating_add(m.max_reasoning_tokens),
        ),
        ("model.max_doc_tokens", m.max_doc_tokens),
        ("model.max_query_tokens' + 'latent.steps", latent),
    ] {
        if len > max {
            return Err(Error::Config {
                location: format!("{} (key '{key}')", cfg.source.display()),
                message: format!(
                    "{len} tokens exceed the model's max_position_embeddings = {max} (a query view \
                     holds up to model.max_query_tokens + model.max_reasoning_tokens tokens, a latent \
                     one model.max_query_tokens + latent.steps, a document model.max_doc_tokens)"
                ),
            });
        }
    }
    Ok(())
}

/// The activations of `stage`'s micro-batch, its KV cache (stage 3) and an evaluation batch fit
/// in memory at least roughly (`model::memory`): an absurd `train.batch_size` or group size is
/// an exit-2 error, not an allocation abort. With `lora`, only the adapters have gradients and
/// moments.
pub fn check_batch_fits(
    cfg: &Config,
    c: &DecoderConfig,
    stage: &str,
    lora: Option<&crate::model::LoraSpec>,
) -> Result<()> {
    use crate::model::memory::{activation_bytes, check_fits, kv_cache_bytes};
    let m = model_section(cfg)?;
    let t = &cfg.raw.train;
    let query = m.max_query_tokens.saturating_add(m.max_reasoning_tokens);
    let seq = query.max(m.max_doc_tokens);
    let (key, rows, kv_rows) = match stage {
        "stage2" => (
            "train.batch_size' × 'stage2.group_size",
            t.batch_size
                .saturating_mul(cfg.raw.stage2.group_size.saturating_add(1)),
            0,
        ),
        "latent" => (
            "train.batch_size' × 'latent.group_size",
            t.batch_size
                .saturating_mul(cfg.raw.latent.group_size.saturating_add(1)),
            0,
        ),
        "stage3" => {
            let per = t.batch_size.saturating_mul(cfg.raw.stage3.group_size);
            (
                "train.batch_size' × 'stage3.group_size",
                per,
                per.saturating_mul(t.grad_accum.max(1)),
            )
        }
        _ => ("train.batch_size", t.batch_size, 0),
    };
    let seq = if stage == "latent" {
        seq.max(m.max_query_tokens.saturating_add(cfg.raw.latent.steps))
    } else {
        seq
    };
    let location = |k: &str| format!("{} (key '{k}')", cfg.source.display());
    // weights, and gradients + 2 moments of what trains
    let trained = match lora {
        Some(spec) => crate::model::memory::lora_param_count(c, spec),
        None => crate::model::memory::param_count(c),
    };
    let weights = (crate::model::memory::param_count(c) + 3.0 * trained) * 4.0;
    check_fits(
        &location(key),
        &format!("a training micro-batch of {rows} sequences × {seq} tokens"),
        weights + activation_bytes(c, rows, seq, true) + kv_cache_bytes(c, kv_rows, query),
    )?;
    check_fits(
        &location("train.eval_batch_size"),
        &format!("an evaluation batch of {} sequences", t.eval_batch_size),
        weights + activation_bytes(c, t.eval_batch_size, seq, false),
    )
}
