//! LoRA adapters in PEFT's format: a folder with `adapter_config.json` (PEFT's `LoraConfig`) and
//! `adapter_model.safetensors`, keyed as `peft.PeftModel.save_pretrained` writes them —
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`[r, d_in]`, our `Aᵀ`) and
//! `….lora_B.weight` (`[d_out, r]`, our `Bᵀ`) — so `PeftModel.from_pretrained(base, dir)` reads
//! what [`save_peft`] writes and [`load_peft`] reads what PEFT writes (`scripts/golden_peft.py`
//! checks both directions against transformers + peft).
//!
//! What PEFT can express but t1-train does not run is refused by name, never dropped: DoRA,
//! trained biases, `fan_in_fan_out`, per-layer ranks or alphas, `layers_to_transform`,
//! `modules_to_save`, target modules outside the seven projections, a regex `target_modules`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::{Value, json};

use super::decoder::Decoder;
use super::lora::{Lora, LoraSpec, Target, TokenRows};
use crate::error::{Error, Result};

pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.model.layers.";
/// PEFT's trainable token rows (`trainable_token_indices`): the embedding's, and an untied
/// LM head's when listed for it.
const EMBED_ROWS: &str = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";
const HEAD_ROWS: &str = "base_model.model.lm_head.token_adapter.trainable_tokens_delta";

fn key(layer: usize, t: Target, factor: &str) -> String {
    format!("{PREFIX}{layer}.{}.lora_{factor}.weight", t.hf_path())
}

/// Writes the adapters of `model` (made with `spec`) to `dir` in PEFT's format; `base` goes to
/// `base_model_name_or_path`. Each file is written atomically.
pub fn save_peft<B: Backend>(
    model: &Decoder<B>,
    spec: &LoraSpec,
    base: &str,
    dir: &Path,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let mut targets = BTreeSet::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        for t in Target::ALL {
            let Some(l) = layer.lora(t) else { continue };
            targets.insert(t);
            let (a, [d_in, r]) = host(l.a.val());
            let (b, [_, d_out]) = host(l.b.val());
            // ours [d_in, r] / [r, d_out] → PEFT's [r, d_in] / [d_out, r]
            tensors.push((key(i, t, "A"), le(&transpose(&a, d_in, r)), vec![r, d_in]));
            tensors.push((key(i, t, "B"), le(&transpose(&b, r, d_out)), vec![d_out, r]));
        }
    }
    // trainable token rows: PEFT's list form when only the embedding's train (or the head is
    // tied to it), its {module: ids} form when an untied head's rows train too
    let mut token_indices = Value::Null;
    if let Some(rows) = &model.token_rows {
        let ids: Vec<u32> = rows.ids().to_vec();
        let (e, shape) = host(rows.embed.val());
        tensors.push((EMBED_ROWS.to_string(), le(&e), shape.to_vec()));
        token_indices = json!(ids);
        if let Some(h) = &rows.head {
            let (h, shape) = host(h.val());
            tensors.push((HEAD_ROWS.to_string(), le(&h), shape.to_vec()));
            token_indices = json!({"embed_tokens": ids, "lm_head": ids});
        }
    }
    if tensors.is_empty() {
        return Err(Error::Runtime(format!(
            "{}: the model has no LoRA adapters to save",
            dir.display()
        )));
    }
    let views = tensors
        .iter()
        .map(|(k, bytes, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Runtime(format!("{k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Runtime(format!("cannot serialise the adapters: {e}")))?;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "use_rslora": spec.use_rslora,
        "target_modules": targets.iter().map(|t| t.hf_name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
        "trainable_token_indices": token_indices,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    crate::fsio::write_atomic(&dir.join(WEIGHTS), &bytes)?;
    crate::fsio::write_atomic(&dir.join(CONFIG), text.as_bytes())?;
    Ok(())
}

/// How a LoRA run writes its model (checkpoints, `best/`): the adapter's settings and the base
/// folder its `adapter_config.json` names.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub spec: LoraSpec,
    pub base: std::path::PathBuf,
}

/// Writes `model` to `dir`: a PEFT adapter folder with `adapter`, else an HF folder
/// (`config.json` + `model.safetensors`). The tokenizer goes beside it separately.
pub fn save_model<B: Backend>(
    model: &Decoder<B>,
    adapter: Option<&Adapter>,
    dir: &Path,
) -> Result<()> {
    match adapter {
        Some(a) => save_peft(model, &a.spec, &a.base.display().to_string(), dir),
        None => super::save_hf(model, dir),
    }
}

/// Whether `dir` is a PEFT adapter folder (it has `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG).is_file()
}

/// Adapter chains deeper than this are refused (a folder naming itself as its base, say).
pub const MAX_CHAIN: usize = 8;

/// A model folder as a plain decoder on `device`: an HF folder (read by [`super::load_hf`]), or
/// a PEFT adapter folder whose `base_model_name_or_path` names a local folder of either kind
/// (relative paths against the adapter folder). An adapter is applied to its base grown to the
/// vocabulary of the adapter folder's `tokenizer.json` (the added T1 tokens), then merged, so
/// what comes back is the model the adapter's training ended with, every parameter trainable.
/// A `SHA256SUMS` in an adapter folder (every one t1-train writes) is verified first.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Decoder<B>> {
    load_chain(dir, device, 0)
}

fn load_chain<B: Backend>(dir: &Path, device: &B::Device, depth: usize) -> Result<Decoder<B>> {
    if !is_adapter_dir(dir) {
        return super::load_hf(dir, device);
    }
    if depth >= MAX_CHAIN {
        return Err(Error::Runtime(format!(
            "{}: adapter folders chained more than {MAX_CHAIN} deep through \
             base_model_name_or_path (a cycle?)",
            dir.display()
        )));
    }
    let tokenizer = dir.join("tokenizer.json");
    let mut needed = vec![CONFIG, WEIGHTS];
    if tokenizer.exists() {
        needed.push("tokenizer.json");
    }
    crate::checksums::verify_listing(dir, &needed)?;
    crate::checksums::verify(dir)?;
    let base_dir = base_of(dir)?;
    let mut base = load_chain::<B>(&base_dir, device, depth + 1)?;
    if tokenizer.exists() {
        let vocab = super::T1Tokenizer::load(&tokenizer)?.vocab_size();
        if vocab > base.config().vocab_size {
            base = base.resize_vocab(vocab)?;
        }
    }
    let (model, _) = load_peft(base, dir)?;
    Ok(model.merge_lora().trainable())
}

/// The local folder an adapter's `base_model_name_or_path` names.
pub fn base_of(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Data {
        file: path.clone(),
        line: e.line(),
        field: None,
        message: format!("not valid JSON: {e}"),
    })?;
    let bad = |message: String| Error::Data {
        file: path.clone(),
        line: 0,
        field: Some("base_model_name_or_path".into()),
        message,
    };
    let name = v
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("required: the folder of the base model".into()))?;
    let base = dir.join(name);
    if !base.join("config.json").is_file() && !is_adapter_dir(&base) {
        return Err(bad(format!(
            "{name:?} is not a local model folder ({} has no config.json or {CONFIG}); \
             t1-train never downloads: point it at the base model's folder",
            base.display()
        )));
    }
    Ok(base)
}

/// `base` with the PEFT adapter of `dir` attached (base frozen, adapters trainable), and the
/// adapter's settings. Every problem is an [`Error::Data`] naming the file and the field or key.
pub fn load_peft<B: Backend>(base: Decoder<B>, dir: &Path) -> Result<(Decoder<B>, LoraSpec)> {
    let config_path = dir.join(CONFIG);
    let (spec, spec_head) = read_config(&config_path)?;
    let path = dir.join(WEIGHTS);
    let bad = |field: &str, message: String| Error::Data {
        file: path.clone(),
        line: 0,
        field: Some(field.to_string()),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad("(file)", format!("not a readable safetensors file: {e}")))?;
    let layers = base.model.layers.len();
    // (layer, target) → (A, B) as read
    let mut found: BTreeMap<(usize, Target), [Option<(Vec<f32>, Vec<usize>)>; 2]> = BTreeMap::new();
    let mut rows: [Option<(Vec<f32>, Vec<usize>)>; 2] = [None, None];
    for (name, view) in st.tensors() {
        if name == EMBED_ROWS || name == HEAD_ROWS {
            let head = name == HEAD_ROWS;
            let listed = if head {
                spec_head
            } else {
                !spec.tokens.is_empty()
            };
            if !listed {
                return Err(bad(
                    &name,
                    format!(
                        "trainable token rows that {}'s trainable_token_indices does not list{}",
                        config_path.display(),
                        if head { " for lm_head" } else { "" }
                    ),
                ));
            }
            let values = floats(&view).map_err(|m| bad(&name, m))?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(
                    &name,
                    format!("element {i} is {} (not finite)", values[i]),
                ));
            }
            rows[usize::from(head)] = Some((values, view.shape().to_vec()));
            continue;
        }
        let (layer, t, factor) = parse_key(&name).ok_or_else(|| {
            bad(
                &name,
                "not a LoRA factor of a decoder projection \
                 (base_model.model.model.layers.N.{self_attn.q|k|v|o,mlp.gate|up|down}_proj.lora_A|B.weight); \
                 t1-train trains nothing else in an adapter"
                    .into(),
            )
        })?;
        if layer >= layers {
            return Err(bad(
                &name,
                format!("layer {layer}, but the base model has {layers}"),
            ));
        }
        if !spec.targets.contains(&t) {
            return Err(bad(
                &name,
                format!(
                    "{} is not in {}'s target_modules",
                    t.hf_name(),
                    config_path.display()
                ),
            ));
        }
        let values = floats(&view).map_err(|m| bad(&name, m))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(
                &name,
                format!("element {i} is {} (not finite)", values[i]),
            ));
        }
        let slot = &mut found.entry((layer, t)).or_default()[factor];
        *slot = Some((values, view.shape().to_vec()));
    }
    // the base frozen as `with_lora` freezes it; every target of every layer gets the file's
    // factors below (no fresh adapters drawn only to be replaced)
    let mut model = base.no_grad();
    for layer in 0..layers {
        for &t in &spec.targets {
            let w = model.model.layers[layer].linear(t).weight.val();
            let [d_in, d_out] = w.dims();
            let device = w.device();
            let r = spec.rank;
            let get = |f: usize| -> Result<Vec<f32>> {
                let k = key(layer, t, ["A", "B"][f]);
                let want = if f == 0 { [r, d_in] } else { [d_out, r] };
                match found.get(&(layer, t)).and_then(|s| s[f].as_ref()) {
                    None => Err(bad(
                        &k,
                        "missing: every target module of every layer needs its A and B".into(),
                    )),
                    Some((_, shape)) if shape.as_slice() != want => Err(bad(
                        &k,
                        format!(
                            "shape {shape:?}, expected {want:?} (r = {r}, the base model's {} is {d_in} → {d_out})",
                            t.hf_name()
                        ),
                    )),
                    Some((v, _)) => Ok(v.clone()),
                }
            };
            let (a, b) = (get(0)?, get(1)?);
            let a = Tensor::from_data(TensorData::new(transpose(&a, r, d_in), [d_in, r]), &device);
            let b = Tensor::from_data(
                TensorData::new(transpose(&b, d_out, r), [r, d_out]),
                &device,
            );
            *model.model.layers[layer].lora_mut(t) =
                Some(Lora::from_factors(a, b, spec.scale() as f32));
        }
    }
    if !spec.tokens.is_empty() {
        let bad_indices = |m: String| Error::Data {
            file: config_path.clone(),
            line: 0,
            field: Some("trainable_token_indices".into()),
            message: m,
        };
        model
            .check_token_ids(&spec.tokens)
            .map_err(|e| bad_indices(e.to_string()))?;
        if spec_head && model.lm_head.is_none() {
            // PEFT ties a tied head's rows to the embedding's and saves them once
            if rows[1].is_some() {
                return Err(bad(
                    HEAD_ROWS,
                    "LM-head rows for a model whose head is tied to its embeddings".into(),
                ));
            }
        }
        let d = model.config().hidden_size;
        let n = spec.tokens.len();
        let device = model.device();
        let mut take = |slot: usize, key: &str| -> Result<Tensor<B, 2>> {
            match rows[slot].take() {
                None => Err(bad(
                    key,
                    "missing: trainable_token_indices lists these rows".into(),
                )),
                Some((_, shape)) if shape.as_slice() != [n, d] => Err(bad(
                    key,
                    format!("shape {shape:?}, expected [{n}, {d}] (tokens × hidden size)"),
                )),
                Some((v, _)) => Ok(Tensor::from_data(TensorData::new(v, [n, d]), &device)),
            }
        };
        let embed = take(0, EMBED_ROWS)?.require_grad();
        let head = if spec_head && model.lm_head.is_some() {
            Some(take(1, HEAD_ROWS)?.require_grad())
        } else {
            None
        };
        model.token_rows = Some(TokenRows::from_values(spec.tokens.clone(), embed, head));
    }
    Ok((model, spec))
}

/// PEFT's `LoraConfig` as t1-train runs it; anything else is refused by field. Also says whether
/// `trainable_token_indices` lists the rows for `lm_head` too (its `{module: ids}` form).
fn read_config(path: &Path) -> Result<(LoraSpec, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |field: &str, message: String| Error::Data {
        file: path.to_path_buf(),
        line: 0,
        field: Some(field.to_string()),
        message,
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Data {
        file: path.to_path_buf(),
        line: e.line(),
        field: None,
        message: format!("not valid JSON: {e}"),
    })?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(bad(
                "peft_type",
                format!("{other:?}: only LORA adapters are supported"),
            ));
        }
    }
    let rank = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("r", "a positive integer rank is required".into()))?
        as usize;
    let alpha = match get("lora_alpha") {
        None => 8.0, // PEFT's default
        Some(a) => a
            .as_f64()
            .filter(|a| a.is_finite() && *a > 0.0)
            .ok_or_else(|| bad("lora_alpha", format!("{a}: a positive finite number")))?,
    };
    let use_rslora = match get("use_rslora") {
        None => false,
        Some(b) => b
            .as_bool()
            .ok_or_else(|| bad("use_rslora", format!("{b}: true or false")))?,
    };
    let targets = match get("target_modules") {
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str().and_then(Target::from_hf_name).ok_or_else(|| {
                    bad(
                        "target_modules",
                        format!(
                            "{n}: t1-train adapts q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => {
            return Err(bad(
                "target_modules",
                format!("{other}: a list of module names (a regex string is not supported)"),
            ));
        }
        None => return Err(bad("target_modules", "required".into())),
    };
    if targets.is_empty() {
        return Err(bad("target_modules", "an empty list".into()));
    }
    let (tokens, head) = match get("trainable_token_indices") {
        None => (Vec::new(), false),
        Some(x) => {
            token_indices(x).map_err(|m| bad("trainable_token_indices", format!("{x}: {m}")))?
        }
    };
    let refused: [(&str, fn(&Value) -> bool, &str); 13] = [
        (
            "lora_bias",
            |x| x.as_bool() == Some(true),
            "a trained bias on lora_B is not supported",
        ),
        (
            "use_qalora",
            |x| x.as_bool() == Some(true),
            "QA-LoRA is not supported",
        ),
        (
            "layer_replication",
            |_| true,
            "layer replication is not supported",
        ),
        (
            "exclude_modules",
            |_| true,
            "exclude_modules is not supported: list the target modules instead",
        ),
        (
            "target_parameters",
            |_| true,
            "adapters on bare parameters are not supported",
        ),
        (
            "alora_invocation_tokens",
            |_| true,
            "activated LoRA is not supported",
        ),
        (
            "use_dora",
            |x| x.as_bool() == Some(true),
            "DoRA is not supported",
        ),
        (
            "bias",
            |x| x.as_str() != Some("none"),
            "only bias = \"none\" (no trained biases)",
        ),
        (
            "fan_in_fan_out",
            |x| x.as_bool() == Some(true),
            "fan_in_fan_out is for GPT-2-style Conv1D layers, which these models do not have",
        ),
        (
            "layers_to_transform",
            |_| true,
            "adapters on a subset of layers are not supported",
        ),
        (
            "modules_to_save",
            |x| x.as_array().is_none_or(|a| !a.is_empty()),
            "fully trained extra modules are not supported",
        ),
        (
            "rank_pattern",
            |x| x.as_object().is_none_or(|o| !o.is_empty()),
            "per-module ranks are not supported",
        ),
        (
            "alpha_pattern",
            |x| x.as_object().is_none_or(|o| !o.is_empty()),
            "per-module alphas are not supported",
        ),
    ];
    for (field, is_refused, why) in refused {
        if let Some(x) = get(field)
            && is_refused(x)
        {
            return Err(bad(field, format!("{x}: {why}")));
        }
    }
    Ok((
        LoraSpec {
            rank,
            alpha,
            use_rslora,
            targets,
            tokens,
        },
        head,
    ))
}

/// PEFT's `trainable_token_indices`: a list of token ids (the embedding's rows), or
/// `{"embed_tokens": ids, "lm_head": ids}` (the head's rows too; the same ids).
fn token_indices(x: &Value) -> std::result::Result<(Vec<u32>, bool), String> {
    let ids = |v: &Value| -> std::result::Result<Vec<u32>, String> {
        v.as_array()
            .ok_or("a list of token ids expected")?
            .iter()
            .map(|i| {
                i.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| format!("{i} is not a token id"))
            })
            .collect()
    };
    match x {
        Value::Array(_) => Ok((ids(x)?, false)),
        Value::Object(m) => {
            let mut embed = None;
            let mut head = None;
            for (k, v) in m {
                match k.as_str() {
                    "embed_tokens" => embed = Some(ids(v)?),
                    "lm_head" => head = Some(ids(v)?),
                    other => {
                        return Err(format!(
                            "module {other:?}: t1-train trains token rows of embed_tokens and lm_head only"
                        ));
                    }
                }
            }
            let embed = embed.ok_or("the rows of embed_tokens must be listed")?;
            match head {
                Some(h) if h != embed => {
                    Err("lm_head must list the same token ids as embed_tokens".into())
                }
                h => Ok((embed, h.is_some())),
            }
        }
        _ => Err("a list of token ids, or {module name: list of token ids}".into()),
    }
}

/// `(layer, target, 0 for A / 1 for B)` of a PEFT key (with or without the adapter name PEFT
/// keeps in memory, `….lora_A.default.weight`).
fn parse_key(name: &str) -> Option<(usize, Target, usize)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (path, factor) = rest.rsplit_once('.')?;
    let factor = match factor {
        "lora_A" => 0,
        "lora_B" => 1,
        _ => return None,
    };
    let t = Target::ALL.into_iter().find(|t| t.hf_path() == path)?;
    Some((layer, t, factor))
}

/// A tensor's values as f32 (F32, BF16 or F16 in the file).
fn floats(view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let d = view.data();
    match view.dtype() {
        safetensors::Dtype::F32 => Ok(d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        safetensors::Dtype::BF16 => Ok(d
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect()),
        safetensors::Dtype::F16 => Ok(d
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()),
        other => Err(format!("dtype {other:?}: F32, BF16 or F16 expected")),
    }
}

/// IEEE half → single (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: ±f · 2^-24
            let v = f as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn host<B: Backend>(t: Tensor<B, 2>) -> (Vec<f32>, [usize; 2]) {
    let dims = t.dims();
    (
        t.into_data().convert::<f32>().to_vec().expect("f32 values"),
        dims,
    )
}

/// `[rows, cols]` row-major → `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    out
}

fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_both_ways() {
        for t in Target::ALL {
            for (f, name) in [(0, "A"), (1, "B")] {
                assert_eq!(parse_key(&key(3, t, name)), Some((3, t, f)));
            }
        }
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            Some((0, Target::Q, 0))
        );
        assert_eq!(parse_key("base_model.model.lm_head.weight"), None);
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            None
        );
    }

    #[test]
    fn half_floats_convert() {
        for (h, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x8001, -5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), want, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
