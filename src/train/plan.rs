//! `t1-train plan`: the predicted peak memory of a training stage, per component, from the
//! config alone (the model's `config.json` or preset and the tokenizer; no weights are read, so a
//! laptop can plan an 8B run).
//!
//! What is counted (f32 everywhere, 4 bytes per element, but for `lora.base_dtype`):
//! - **weights**: every parameter of the (vocabulary-grown) model; with a half-precision frozen
//!   base, the layers' projection weights at 2 bytes;
//! - **gradients**: one per trained parameter (all of them, or the adapters and token rows with
//!   `[lora]`); twice that while a second micro-batch's gradients are summed into the first's;
//! - **moments**: AdamW's two per trained parameter;
//! - **reference**: a second full copy when β > 0 without LoRA (with LoRA it is the base under
//!   the adapters: no bytes); at β = 0 with a frozen index, the same copy while a `--resume`
//!   encodes the index again (`resume_copy`, in a phase of its own);
//! - **index**: the corpus vectors, `[docs, hidden]`;
//! - **activations**: what one micro-batch's forward keeps for its backward, as the CPU kernels
//!   keep it (per layer and token: the layer input and both norm outputs, the attention's
//!   `q`, `k`, `v` and output, the pre-norm `q`, `k` on Qwen3, the MLP's gate, up and SwiGLU
//!   output, the adapters' `x·A`, and the attention probabilities `[heads, keys]`), the LM head's
//!   logits (or the fused head's chunk budget) and, during backward, half a layer's worth of
//!   gradients in flight (see `train_activations`). With `train.gradient_checkpointing` only each layer's input is kept and
//!   one layer is replayed at a time;
//! - **KV cache**: keys and values of every rollout for every layer, at full length;
//! - working sets of the decode loop and of the document encoder (one layer at a time, no
//!   gradients), and the optimizer's largest parameter written anew.
//!
//! Components live in phases (decode, index refresh, update, optimizer step); the peak is the
//! largest phase plus the process baseline (the binary, tokenizer and dataset, measured while
//! planning). The figures assume every sequence runs to its length limit, so they bound a real
//! run from above; `tests/plan.rs` checks them within 20 % of measured peaks.

use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::memory::{lora_param_count, param_count, projection_count};
use crate::model::{DecoderConfig, Family, LoraSpec, T1Tokenizer};

/// One line of the plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Component {
    pub name: &'static str,
    pub bytes: f64,
    /// How the figure was reached (shapes), for the printed table.
    pub detail: String,
}

/// The plan of one stage: components, the phases they are live in, and the peak.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub stage: String,
    pub params: f64,
    pub trained: f64,
    pub components: Vec<Component>,
    /// (phase, the components live in it, their bytes)
    pub phases: Vec<(&'static str, Vec<&'static str>, f64)>,
    /// The process before training (binary, tokenizer, dataset); measured, 0 where unknown.
    pub baseline: f64,
    /// Largest phase + baseline.
    pub peak: f64,
    pub peak_phase: &'static str,
    /// Activations as the CPU kernels keep them (else as burn's generic ops do).
    pub fused: bool,
}

/// Shapes the plan needs beyond the config: the architecture, what trains, the prompt overhead
/// of the chat template and the corpus size.
pub struct Shapes<'a> {
    pub arch: &'a DecoderConfig,
    pub lora: Option<&'a LoraSpec>,
    /// The longest query prompt of the training split (template, instruction, the query cut at
    /// `model.max_query_tokens`, `<think>`).
    pub prompt: usize,
    /// The longest query with its gold reasoning (cut at `model.max_reasoning_tokens`), as
    /// stage 1 trains it.
    pub gold: usize,
    /// The longest document view (cut at `model.max_doc_tokens`).
    pub doc: usize,
    pub corpus_docs: usize,
    pub baseline: f64,
    /// The CPU backend's kernels run (else burn's generic ops: GPU backends, `T1_KERNELS=generic`).
    pub fused: bool,
    /// The backend is the CPU one (burn-flex), whatever kernels run: its half-precision matmul
    /// goes through f32 copies.
    pub cpu: bool,
}

const F32: f64 = 4.0;

/// f32 elements one decoder layer keeps per token for backward, attending over `keys` keys:
/// with the CPU kernels (`fused`), or burn's generic ops (GPU backends, `T1_KERNELS=generic`).
fn layer_saved(c: &DecoderConfig, lora: Option<&LoraSpec>, keys: usize, fused: bool) -> f64 {
    let d = c.hidden_size as f64;
    let i = c.intermediate_size as f64;
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    let qwen3 = c.family == Family::Qwen3;
    let adapters = lora.map_or(0.0, |s| (s.rank * s.targets.len()) as f64);
    let probs = c.num_attention_heads as f64 * keys as f64;
    if fused {
        // x and both norm outputs, x_mid; q, k, v after RoPE (+ their pre-norm values on Qwen3)
        // and the attention output; gate, up and SwiGLU output; P
        let head_norms = if qwen3 { q + kv } else { 0.0 };
        4.0 * d + 2.0 * q + 2.0 * kv + head_norms + 3.0 * i + adapters + probs
    } else {
        // each norm keeps its input, x / rms and its output; RoPE its input and x·R, attention
        // its q copy, k and v, exp(S) and P (and the mask, a byte each), the merged-head copy;
        // silu keeps gate and σ(gate), the products their inputs
        let rope_path = if qwen3 { 5.0 } else { 3.0 };
        6.0 * d + (rope_path + 1.0) * q + (rope_path + 1.0) * kv + 5.0 * i + adapters + 2.25 * probs
    }
}

/// f32 elements a layer's forward needs at once without autodiff (one layer at a time).
fn layer_transient(c: &DecoderConfig, keys: usize) -> f64 {
    let d = c.hidden_size as f64;
    let i = c.intermediate_size as f64;
    let q = (c.num_attention_heads * c.head_dim) as f64;
    let kv = (c.num_key_value_heads * c.head_dim) as f64;
    2.0 * d + 2.0 * q + 2.0 * kv + 3.0 * i + c.num_attention_heads as f64 * keys as f64
}

/// One forward a micro-batch differentiates: `rows` sequences of `seq` tokens whose last
/// `scored` positions go through the LM head.
#[derive(Clone, Copy)]
struct Forward {
    rows: usize,
    seq: usize,
    scored: usize,
}

/// Bytes a micro-batch's forwards keep until its backward, and the backward's excess.
fn train_activations(
    c: &DecoderConfig,
    lora: Option<&LoraSpec>,
    forwards: &[Forward],
    checkpointing: bool,
    fused: bool,
    half_on_cpu: bool,
) -> (f64, String) {
    let layers = c.num_hidden_layers as f64;
    let d = c.hidden_size as f64;
    let (mut kept, mut largest) = (0.0, 0.0f64);
    let mut shapes = Vec::new();
    for f in forwards.iter().filter(|f| f.rows > 0) {
        let tokens = (f.rows * f.seq) as f64;
        let layer = tokens * layer_saved(c, lora, f.seq, fused);
        largest = largest.max(layer);
        // the head: the scored rows' logits while they fit the fused head's budget, else its
        // chunks (burn's ops keep every chunk's exp(logits)); the final norm's tensors
        let logits = (f.rows * f.scored) as f64 * c.vocab_size as f64 * F32;
        let logits = if fused {
            logits.min(crate::model::cpu::LOGITS_BUDGET as f64)
        } else {
            logits
        };
        kept += logits + if fused { 2.0 } else { 3.0 } * tokens * d * F32;
        kept += F32
            * if checkpointing {
                layers * tokens * d
            } else {
                layers * layer
            };
        shapes.push(format!("{} × {}", f.rows, f.seq));
    }
    // Backward frees each op's kept tensors as it runs it, while the gradients it makes appear:
    // the net excess while a layer is differentiated is taken as half a layer (on the tiny
    // preset's stage 3 a whole layer over-predicted the measured peak by 7-9 %, half by ≈ 3 %).
    // With checkpointing one layer is replayed at a time on top of the kept layer inputs.
    let replayed = if checkpointing { largest } else { 0.0 };
    kept += F32 * (replayed + 0.5 * largest);
    let how = if checkpointing {
        "layer inputs + one layer replayed"
    } else {
        "every layer + half a layer of gradients"
    };
    // A half-precision base on the CPU backend: burn-flex multiplies bf16/f16 by converting
    // both operands to f32 vectors and the product back (its `matmul_bf16`), so the widest
    // projection (gate/up/down, `d × i`) holds, for the micro-batch's `m` tokens, the cast input
    // (2 bytes), its f32 copy, the weight's f32 copy, the f32 product and its half result on top
    // of the kept tensors: m·(6d + 6i) + 4·d·i bytes, in the forward and again for `dx` in
    // backward. GPU backends multiply half natively and keep no such copies.
    let half = if half_on_cpu {
        let m = forwards.iter().map(|f| f.rows * f.seq).max().unwrap_or(0) as f64;
        let i = c.intermediate_size as f64;
        m * (6.0 * d + 6.0 * i) + 4.0 * d * i
    } else {
        0.0
    };
    let how = if half > 0.0 {
        format!("{how} + burn-flex's f32 copies in a half matmul")
    } else {
        how.to_string()
    };
    (
        kept + half,
        format!("rows × tokens {}, {how}", shapes.join(" + ")),
    )
}

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// The plan of `stage` (stage1, stage2, stage3, latent) under `cfg` for the shapes `s`.
pub fn plan(cfg: &Config, stage: &str, s: &Shapes) -> Result<Plan> {
    let c = s.arch;
    let m = crate::model::load::model_section(cfg)?;
    let t = &cfg.raw.train;
    let params = param_count(c);
    let trained = s.lora.map_or(params, |spec| lora_param_count(c, spec));
    let prompt = s.prompt;
    let reasoning = m.max_reasoning_tokens;
    // a rollout at full length: prompt, reasoning, </think>, <emb_token>
    let query_seq = prompt + reasoning + 2;
    let doc_seq = s.doc;
    let layers = c.num_hidden_layers as f64;
    let kv_width = (c.num_key_value_heads * c.head_dim) as f64;
    let checkpointing = t.gradient_checkpointing;

    let mut comps: Vec<Component> = Vec::new();
    let mut add = |name: &'static str, bytes: f64, detail: String| {
        comps.push(Component {
            name,
            bytes,
            detail,
        })
    };
    // lora.base_dtype: the frozen projections in 2 bytes, the rest f32
    let half = cfg.raw.lora.base_dtype.half().filter(|_| s.lora.is_some());
    let (weight_bytes, weight_detail) = match half {
        Some(dtype) => {
            let proj = projection_count(c);
            (
                (params - proj) * F32 + proj * 2.0,
                format!(
                    "{params:.3e} parameters: the {proj:.3e} of the layers' projections in \
                     {dtype:?}, the rest f32"
                ),
            )
        }
        None => (params * F32, format!("{params:.3e} parameters, f32")),
    };
    add("weights", weight_bytes, weight_detail);
    // every stage sums grad_accum micro-batches of batch_size examples (train::micro); stage 3's
    // are batch_size queries' G rollouts each, all batch_size × grad_accum queries sampled at once
    let b = t.batch_size;
    let gold = Forward {
        rows: b,
        seq: s.gold,
        scored: s.gold - prompt + 1,
    };
    let docs = |g: usize| Forward {
        rows: b * g,
        seq: doc_seq,
        scored: 0,
    };
    let (forwards, chunks, kv_rows) = match stage {
        "stage3" => {
            let per = b * cfg.raw.stage3.group_size;
            let rollouts = Forward {
                rows: per,
                seq: query_seq,
                scored: reasoning + 3,
            };
            (
                vec![rollouts],
                t.grad_accum.max(1),
                per * t.grad_accum.max(1),
            )
        }
        "stage2" => {
            let q = Forward {
                scored: if cfg.raw.stage2.sft_weight > 0.0 {
                    gold.scored
                } else {
                    0
                },
                ..gold
            };
            (vec![q, docs(cfg.raw.stage2.group_size)], t.grad_accum, 0)
        }
        "latent" => {
            let l = &cfg.raw.latent;
            let thought = Forward {
                rows: b,
                seq: prompt + l.steps + 2,
                scored: 0,
            };
            (vec![gold, thought, docs(l.group_size)], t.grad_accum, 0)
        }
        "stage1" => (vec![gold], t.grad_accum, 0),
        other => {
            return Err(Error::Config {
                location: "--stage".into(),
                message: format!("unknown stage '{other}': stage1, stage2, stage3 or latent"),
            });
        }
    };
    let grad_copies = if chunks > 1 { 2.0 } else { 1.0 };
    add(
        "gradients",
        grad_copies * trained * F32,
        format!(
            "{trained:.3e} trained{}",
            if chunks > 1 {
                ", accumulated + one micro-batch's"
            } else {
                ""
            }
        ),
    );
    add(
        "moments",
        2.0 * trained * F32,
        "AdamW m and v per trained parameter".into(),
    );
    let reference = stage == "stage3" && cfg.raw.stage3.beta > 0.0 && s.lora.is_none();
    add(
        "reference",
        if reference { params * F32 } else { 0.0 },
        if reference {
            "a full copy (β > 0)".into()
        } else if s.lora.is_some() {
            "the base under the adapters (no copy)".into()
        } else {
            "none (β = 0)".into()
        },
    );
    // a full fine-tuning resume at β = 0 with a frozen index loads the starting model to encode
    // it again (train::grpo's set-up), and drops it once the index is built
    let resume_copy = stage == "stage3"
        && !reference
        && s.lora.is_none()
        && cfg.raw.stage3.resume_encodes_frozen_index(1);
    add(
        "resume_copy",
        if resume_copy { params * F32 } else { 0.0 },
        if resume_copy {
            "on --resume, the starting model while it encodes the frozen index".into()
        } else {
            "none".into()
        },
    );
    let index = if stage == "stage3" {
        s.corpus_docs as f64 * c.hidden_size as f64 * F32
    } else {
        0.0
    };
    add(
        "index",
        index,
        format!("{} docs × {}", s.corpus_docs, c.hidden_size),
    );
    let half_on_cpu = half.is_some() && s.cpu;
    let (acts, detail) =
        train_activations(c, s.lora, &forwards, checkpointing, s.fused, half_on_cpu);
    add("activations", acts, detail);
    // the fused CPU head takes the head as one table: with trainable token rows, a copy with
    // the rows written in is kept for backward, and backward makes its full [V, d] gradient
    let table = match s.lora {
        Some(spec)
            if s.fused && !spec.tokens.is_empty() && forwards.iter().any(|f| f.scored > 0) =>
        {
            2.0 * c.vocab_size as f64 * c.hidden_size as f64 * F32
        }
        _ => 0.0,
    };
    add(
        "head_table",
        table,
        if table > 0.0 {
            "token rows written into a copy of the head, and its gradient".into()
        } else {
            "none".into()
        },
    );
    let kv = kv_rows as f64 * query_seq as f64 * layers * 2.0 * kv_width * F32;
    add(
        "kv_cache",
        kv,
        format!("{kv_rows} rollouts × {query_seq} tokens"),
    );
    let sampled = t.batch_size * t.grad_accum.max(1);
    let decode = (sampled * prompt) as f64 * layer_transient(c, prompt) * F32
        + (kv_rows.max(sampled) as f64) * c.vocab_size as f64 * F32;
    add(
        "decode",
        if stage == "stage3" { decode } else { 0.0 },
        "prefill, one layer at a time, and one step's logits".into(),
    );
    let encode = (t.eval_batch_size * doc_seq) as f64 * layer_transient(c, doc_seq) * F32;
    add(
        "encode",
        encode,
        format!(
            "{} docs × {doc_seq} tokens, one layer at a time",
            t.eval_batch_size
        ),
    );
    let largest = c.vocab_size as f64 * c.hidden_size as f64;
    let largest = if s.lora.is_some() {
        // the largest trained tensor: the token rows or an adapter
        trained.min(largest)
    } else {
        largest.max(c.hidden_size as f64 * c.intermediate_size as f64)
    };
    add(
        "optimizer",
        largest * F32,
        "the largest trained tensor written anew".into(),
    );

    let bytes = |names: &[&'static str]| -> f64 {
        names
            .iter()
            .map(|n| comps.iter().find(|c| c.name == *n).map_or(0.0, |c| c.bytes))
            .sum()
    };
    let resident = ["weights", "moments", "reference", "index"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        resident.iter().chain(extra).copied().collect()
    };
    let mut phases = vec![
        ("update", with(&["activations", "head_table", "gradients"])),
        ("optimizer step", with(&["gradients", "optimizer"])),
        ("index encode", with(&["encode"])),
    ];
    if resume_copy {
        phases.push(("resume index encode", with(&["resume_copy", "encode"])));
    }
    if stage == "stage3" {
        phases.insert(0, ("decode", with(&["kv_cache", "decode"])));
    }
    let phases: Vec<(&'static str, Vec<&'static str>, f64)> = phases
        .into_iter()
        .map(|(p, names)| {
            let b = bytes(&names);
            (p, names, b)
        })
        .collect();
    let (peak_phase, top) = phases
        .iter()
        .map(|(p, _, b)| (*p, *b))
        .fold(("", 0.0), |a, x| if x.1 > a.1 { x } else { a });
    Ok(Plan {
        stage: stage.to_string(),
        params,
        trained,
        components: comps,
        phases,
        baseline: s.baseline,
        peak: top + s.baseline,
        peak_phase,
        fused: s.fused,
    })
}

impl Plan {
    /// The table `t1-train plan` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {:.3e} parameters, {:.3e} trained; activations as {} keep them\n\n{:<12} {:>12}  {}\n",
            self.stage,
            self.params,
            self.trained,
            if self.fused {
                "the CPU kernels"
            } else {
                "burn's generic ops (GPU backends)"
            },
            "component",
            "bytes",
            "shapes"
        );
        for c in &self.components {
            out.push_str(&format!(
                "{:<12} {:>12}  {}\n",
                c.name,
                gib(c.bytes),
                c.detail
            ));
        }
        out.push_str(&format!(
            "{:<12} {:>12}  binary, tokenizer and dataset (measured now)\n\nphases:\n",
            "process",
            gib(self.baseline)
        ));
        for (p, names, b) in &self.phases {
            out.push_str(&format!(
                "  {:<15} {:>10}  {}\n",
                p,
                gib(*b),
                names.join(" + ")
            ));
        }
        out.push_str(&format!(
            "\npredicted peak: {} ({} + process)\n",
            gib(self.peak),
            self.peak_phase
        ));
        out
    }
}

/// Resident memory of this process now (`VmRSS`) or at its peak so far (`VmHWM`), bytes.
pub fn rss_bytes(peak: bool) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let key = if peak { "VmHWM:" } else { "VmRSS:" };
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The architecture and tokenizer a config trains, without reading weights: `model.path`'s
/// `config.json` (an adapter folder's base chain followed), or the preset at the tokenizer's
/// vocabulary; grown to the tokenizer's vocabulary as the stages grow it.
pub fn architecture(cfg: &Config) -> Result<(DecoderConfig, T1Tokenizer)> {
    let m = crate::model::load::model_section(cfg)?;
    let (c, tok) = match (&m.path, &m.preset) {
        (Some(dir), _) => {
            let mut root = dir.clone();
            for _ in 0..crate::model::peft::MAX_CHAIN {
                if !crate::model::is_adapter_dir(&root) {
                    break;
                }
                root = crate::model::peft::base_of(&root)?;
            }
            let c = DecoderConfig::from_hf_file(&root.join("config.json"))?;
            (c, T1Tokenizer::load(&dir.join("tokenizer.json"))?)
        }
        (None, Some(name)) => crate::model::load::preset_config(cfg, name)?,
        (None, None) => {
            return Err(Error::Config {
                location: cfg.source.display().to_string(),
                message: "plan needs model.path or model.preset".into(),
            });
        }
    };
    Ok((c, tok))
}

/// The plan `t1-train plan` prints: `stage` of `cfg`, optionally for another architecture
/// (`arch`, an HF `config.json`: e.g. Qwen3-8B's, to plan a run before downloading it).
pub fn for_config(
    cfg: &Config,
    stage: &str,
    arch: Option<&Path>,
    cpu: bool,
    fused: bool,
) -> Result<Plan> {
    let (own, tok) = architecture(cfg)?;
    let mut c = match arch {
        Some(p) => DecoderConfig::from_hf_file(p)?,
        None => own,
    };
    c.vocab_size = c.vocab_size.max(tok.vocab_size());
    let spec = cfg
        .raw
        .lora
        .enabled
        .then(|| crate::model::LoraSpec::from_section(&cfg.raw.lora, &tok));
    let ds = crate::data::Dataset::load(&cfg.raw.data.dataset)?;
    let m = crate::model::load::model_section(cfg)?;
    let (mut prompt, mut gold) = (1, 1);
    for q in ds.split_queries(&cfg.raw.data.train_split)? {
        let r = q.reasoning.as_deref().unwrap_or("");
        let (ids, prompt_len) =
            tok.query_with_reasoning(&q.text, r, m.max_query_tokens, m.max_reasoning_tokens)?;
        prompt = prompt.max(prompt_len);
        gold = gold.max(ids.len());
    }
    // the longest document view; past DOCS_SCANNED documents the limit itself
    const DOCS_SCANNED: usize = 20_000;
    let doc = if ds.corpus.ids.len() <= DOCS_SCANNED {
        let mut longest = 1;
        for (title, text) in ds.corpus.titles.iter().zip(&ds.corpus.texts) {
            longest = longest.max(tok.doc_view(title, text, m.max_doc_tokens)?.0.len());
        }
        longest
    } else {
        tok.doc_view("", "", 0)?.0.len() + m.max_doc_tokens + 1
    };
    let baseline = rss_bytes(false).unwrap_or(0.0);
    plan(
        cfg,
        stage,
        &Shapes {
            arch: &c,
            lora: spec.as_ref(),
            prompt,
            gold,
            doc,
            corpus_docs: ds.corpus.ids.len(),
            baseline,
            fused,
            cpu,
        },
    )
}
