//! Hugging Face checkpoints in and out: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`).
//!
//! Key map — our module tree uses HF's names, so only two rules apply: Linear weights are
//! transposed (burn-store's `PyTorchToBurnAdapter` on load, `BurnToPyTorchAdapter` on save) and
//! RMSNorm `weight` ↔ `gamma` (a key remapping; 0.21's adapters rename only Batch/Layer/GroupNorm):
//!
//! | HF key | here |
//! |---|---|
//! | `model.embed_tokens.weight` `[V, d]` | same, not transposed (an `Embedding`) |
//! | `model.layers.N.self_attn.{q,k,v,o}_proj.{weight,bias}` | same; `weight` transposed `[out,in]` ↔ `[in,out]` |
//! | `model.layers.N.self_attn.{q,k}_norm.weight` (Qwen3) | `….gamma` |
//! | `model.layers.N.mlp.{gate,up,down}_proj.weight` | same, transposed |
//! | `model.layers.N.{input,post_attention}_layernorm.weight` | `….gamma` |
//! | `model.norm.weight` | `model.norm.gamma` |
//! | `lm_head.weight` (untied only) | `lm_head.weight`, transposed; a tied checkpoint that still stores it is accepted when it equals the embeddings' shape |
//!
//! Any missing, unexpected or mis-shaped tensor is an error naming the key.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use super::config::DecoderConfig;
use super::decoder::Decoder;
use crate::error::{Error, Result};

/// The safetensors files of a checkpoint folder: the single file, or every shard of the index.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::Config {
            location: dir.display().to_string(),
            message: "no model.safetensors or model.safetensors.index.json in this folder".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&index, e.line(), None, format!("malformed JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::data(&index, 1, Some("weight_map"), "missing or not an object"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Casts every float parameter to f32 (checkpoints may be bf16/f16; training runs in f32).
struct ToF32;

impl<B: Backend> ModuleMapper<B> for ToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if param.val().dtype() == DType::F32 {
            return param;
        }
        // detached: the cast must stay a leaf parameter when loaded under autodiff
        param.map(|t| t.cast(DType::F32).detach().require_grad())
    }
}

/// Loads an HF model folder (`config.json` + safetensors) as a decoder on `device`, in f32.
/// A folder with a `SHA256SUMS` (every one t1-train writes) is verified first.
pub fn load_hf<B: Backend>(dir: &Path, device: &B::Device) -> Result<Decoder<B>> {
    // folders t1-train wrote (checkpoints, best/) carry SHA256SUMS: check before reading
    let config_path = dir.join("config.json");
    crate::checksums::require_regular(&config_path)?;
    let files = safetensors_files(dir)?;
    for f in &files {
        crate::checksums::require_regular(f)?;
    }
    // what this folder's SHA256SUMS (if any) must list: every file the model is read from
    let mut needed: Vec<String> = vec!["config.json".into()];
    if !dir.join("model.safetensors").exists() {
        needed.push("model.safetensors.index.json".into());
    }
    needed.extend(
        files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())),
    );
    if dir.join("tokenizer.json").exists() {
        needed.push("tokenizer.json".into());
    }
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    crate::checksums::verify_listing(dir, &needed)?;
    crate::checksums::verify(dir)?;
    let config = DecoderConfig::from_hf_file(&config_path)?;
    crate::model::memory::check_weights_fit(&config, &config_path)?;
    let mut model: Decoder<B> = config.init(device);
    let mut applied = std::collections::BTreeSet::new();
    let mut unused = Vec::new();
    for f in &files {
        if !f.exists() {
            return Err(Error::io(
                f,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "shard listed in the index is missing",
                ),
            ));
        }
        let mut store = SafetensorsStore::from_file(f.clone())
            .with_from_adapter(PyTorchToBurnAdapter)
            // burn 0.21's adapter renames only Batch/Layer/GroupNorm weights; ours are RmsNorms
            .with_key_remapping(r"^(.*norm)\.weight$", "$1.gamma")
            .allow_partial(true)
            .validate(true);
        let result = model.load_from(&mut store).map_err(|e| {
            Error::Runtime(format!("{}: cannot read safetensors: {e}", f.display()))
        })?;
        if let Some(e) = result.errors.first() {
            return Err(Error::Runtime(format!("{}: {e}", f.display())));
        }
        applied.extend(result.applied);
        unused.extend(result.unused.into_iter().map(|k| (k, f.clone())));
    }
    // A tied checkpoint may still store lm_head.weight (a copy of the embeddings): harmless.
    unused.retain(|(k, _)| !(config.tie_word_embeddings && k == "lm_head.weight"));
    if let Some((k, f)) = unused.first() {
        return Err(Error::Runtime(format!(
            "{}: tensor '{k}' has no place in a {:?} decoder with this config.json ({} unexpected in all)",
            f.display(),
            config.family,
            unused.len()
        )));
    }
    let expected: Vec<String> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| s.full_path())
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|k| !applied.contains(*k)).collect();
    if let Some(k) = missing.first() {
        return Err(Error::Runtime(format!(
            "{}: tensor '{k}' is missing from the checkpoint ({} missing in all)",
            dir.display(),
            missing.len()
        )));
    }
    let model = model.map(&mut ToF32);
    if !all_finite(&model) {
        let name = first_nonfinite(&model).unwrap_or_else(|| "a parameter".into());
        return Err(Error::Data {
            file: files.first().cloned().unwrap_or_else(|| dir.to_path_buf()),
            line: 0,
            field: Some(name),
            message: "holds NaN or infinite values: this model cannot be used (a diverged run's \
                      weights, or a damaged file)"
                .into(),
        });
    }
    Ok(model)
}

/// Whether every float parameter of `model` is finite: the count of non-finite values over all
/// of them, summed on the device, one scalar read back.
pub fn all_finite<B: Backend, M: Module<B>>(model: &M) -> bool {
    struct Probe<B: Backend>(Option<Tensor<B, 1, burn::tensor::Int>>, bool);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Probe<B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            // the CPU backend: one parallel scan of the buffer (no temporaries)
            if let Some(bad) = crate::model::cpu::any_nonfinite(p.val()) {
                self.1 |= bad;
                return;
            }
            let bad = p.val().is_finite().bool_not().int().sum();
            self.0 = Some(match self.0.take() {
                None => bad,
                Some(acc) => acc + bad,
            });
        }
    }
    let mut probe = Probe::<B>(None, false);
    model.visit(&mut probe);
    use burn::tensor::ElementConversion;
    !probe.1 && probe.0.is_none_or(|t| t.into_scalar().elem::<i64>() == 0)
}

/// The module path of the first float parameter of `model` holding a NaN or an infinity, if
/// any. One count per parameter on its device, one scalar read back each.
pub fn first_nonfinite<B: Backend, M: Module<B>>(model: &M) -> Option<String> {
    struct Finder<B: Backend> {
        path: Vec<String>,
        found: Option<String>,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for Finder<B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            if self.found.is_some() {
                return;
            }
            use burn::tensor::ElementConversion;
            let bad: i64 = p
                .val()
                .is_finite()
                .bool_not()
                .int()
                .sum()
                .into_scalar()
                .elem();
            if bad > 0 {
                self.found = Some(self.path.join("."));
            }
        }
    }
    let mut f = Finder::<B> {
        path: Vec::new(),
        found: None,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut f);
    // a count that disagrees with the scan still names where to look
    f.found
        .or_else(|| (!all_finite(model)).then(|| "a parameter".to_string()))
}

/// Saves `model` as an HF folder: `config.json` + `model.safetensors` (f32). Copy the tokenizer
/// beside it separately (`Tokenizer::save`).
pub fn save_hf<B: Backend>(model: &Decoder<B>, dir: &Path) -> Result<()> {
    if model.has_lora() {
        return Err(Error::Runtime(format!(
            "{}: this model carries LoRA adapters, which have no place in an HF model folder: \
             merge them first (Decoder::merge_lora)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = serde_json::to_string_pretty(&model.config().to_hf_json())
        .map_err(|e| Error::Runtime(format!("cannot serialise config.json: {e}")))?;
    crate::fsio::write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
    let path = dir.join("model.safetensors");
    let tmp = dir.join(".model.safetensors.tmp");
    let mut store = SafetensorsStore::from_file(tmp.clone())
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping(r"^(.*norm)\.gamma$", "$1.weight")
        .metadata("format", "pt")
        .overwrite(true);
    model.save_into(&mut store).map_err(|e| {
        Error::Runtime(format!("{}: cannot write safetensors: {e}", path.display()))
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}
