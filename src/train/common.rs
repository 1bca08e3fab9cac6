//! What every stage loop shares: loading the starting backbone, the epoch order of training
//! examples, dense evaluation, and the optimizer-step bookkeeping ([`Trainer`]: accumulation,
//! global-norm clipping, LR schedule, logging, periodic eval, best tracking, checkpoints,
//! resume, Ctrl-C).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsAccumulator, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, Best, RngState, TrainState};
use crate::config::{Config, ModelSection, QueryView};
use crate::data::{Dataset, Query};
use crate::error::{Error, Result};
use crate::eval::{Report, Run, evaluate};
use crate::index::{DocIndex, embed_last};
use crate::metrics::{MetricsSink, progress_bar};
use crate::model::generate::{Embed, GenerateOptions, Sampler, generate};
use crate::model::latent::{LatentOptions, latent_vectors};
use crate::model::peft::{Adapter, save_model};
use crate::model::{Decoder, DecoderConfig, T1Tokenizer, save_hf};
use crate::run::RunDir;
use crate::train::micro::MicroBatch;
use crate::train::optim::{AdamW, adamw, clip_global_norm, lr_at};

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
    let spec = cfg.raw.lora.spec(tok);
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
    if fresh || !dir.join(crate::checksums::FILE).is_file() {
        let tmp = run_root.join(".base.tmp");
        let written = (|| {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            }
            save_hf(base, &tmp)?;
            tok.save(&tmp.join("tokenizer.json"))?;
            crate::checksums::write(&tmp)?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))
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

/// Example order of an epoch: a permutation of `0..n` from (seed, epoch) alone, so a resumed
/// run sees the same order.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch + 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Query-view token ids for `view` (not `Generated`): prompt + reasoning (gold or empty) +
/// `</think><emb_token>`.
pub fn query_view_ids(
    tok: &T1Tokenizer,
    q: &Query,
    view: QueryView,
    m: &ModelSection,
) -> Result<Vec<u32>> {
    let reasoning = match view {
        QueryView::GoldReasoning => q.reasoning.as_deref().unwrap_or(""),
        _ => "",
    };
    Ok(tok
        .query_with_reasoning(
            &q.text,
            reasoning,
            m.max_query_tokens,
            m.max_reasoning_tokens,
        )?
        .0)
}

/// Query vectors `[q, d]` (not normalised) for `queries` under `view`; `Generated` decodes
/// greedily with the KV cache and reads `<emb_token>` in the same loop, and also returns the
/// decoded reasoning (one per query); `Latent` runs the `latent` view's K steps after the prompt
/// (`model::latent`).
pub fn query_vectors<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    queries: &[&Query],
    view: QueryView,
    m: &ModelSection,
    latent: &LatentOptions,
    batch_size: usize,
) -> Result<(Tensor<B, 2>, Option<Vec<String>>)> {
    if view == QueryView::Latent {
        let prompts = queries
            .iter()
            .map(|q| tok.query_prompt(&q.text, m.max_query_tokens))
            .collect::<Result<Vec<_>>>()?;
        return Ok((
            latent_vectors(model, &prompts, tok.pad, latent, batch_size)?,
            None,
        ));
    }
    if view != QueryView::Generated {
        let seqs = queries
            .iter()
            .map(|q| query_view_ids(tok, q, view, m))
            .collect::<Result<Vec<_>>>()?;
        return Ok((embed_last(model, &seqs, batch_size, tok.pad, |_| {}), None));
    }
    let texts: Vec<&str> = queries.iter().map(|q| q.text.as_str()).collect();
    let (vectors, reasoning) = greedy_reasoning(
        model,
        tok,
        &texts,
        m.max_query_tokens,
        m.max_reasoning_tokens,
        batch_size,
    )?;
    Ok((vectors, Some(reasoning)))
}

/// The model's greedy reasoning for each query text (query view, KV cache, `batch_size` at a
/// time) with the `<emb_token>` state read in the same loop: vectors `[q, d]` (not normalised)
/// and the decoded reasoning (special tokens dropped).
pub fn greedy_reasoning<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    texts: &[&str],
    max_query_tokens: usize,
    max_reasoning_tokens: usize,
    batch_size: usize,
) -> Result<(Tensor<B, 2>, Vec<String>)> {
    let opts = GenerateOptions {
        sampler: Sampler::Greedy,
        max_new_tokens: max_reasoning_tokens,
        stop: tok.eos.into_iter().chain([tok.end_think]).collect(),
        embed: Some(Embed {
            end_think: tok.end_think,
            emb: tok.emb,
        }),
        pad: tok.pad,
        seed: 0,
    };
    let d = model.config().hidden_size;
    let mut flat = Vec::with_capacity(texts.len() * d);
    let mut reasoning = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|t| tok.query_prompt(t, max_query_tokens))
            .collect::<Result<Vec<_>>>()?;
        for r in generate(model, &prompts, &opts, |_| {})? {
            reasoning.push(tok.decode(&r.tokens, false)?);
            flat.extend(
                r.embedding
                    .ok_or_else(|| Error::Runtime("rollout without embedding".into()))?,
            );
        }
    }
    Ok((
        Tensor::from_data(
            burn::tensor::TensorData::new(flat, [texts.len(), d]),
            &model.device(),
        ),
        reasoning,
    ))
}

/// Dense retrieval on `split`: documents through the document view, queries through `view`,
/// cosine scores, `excluded_ids` removed, trec_eval-exact metrics. Returns the report, the run
/// and, for the `generated` view, the greedy reasoning of each of the split's queries (in
/// `Dataset::split_queries` order).
pub fn dense_eval<B: Backend>(
    model: &Decoder<B>,
    tok: &T1Tokenizer,
    ds: &Dataset,
    split: &str,
    view: QueryView,
    cfg: &Config,
) -> Result<(Report, Run, Option<Vec<String>>)> {
    let m = model_section(cfg)?;
    let batch = cfg.raw.train.eval_batch_size;
    let index = DocIndex::build(model, tok, &ds.corpus, m.max_doc_tokens, batch, |_| {})?;
    let queries = ds.split_queries(split)?;
    let (qv, reasoning) = query_vectors(
        model,
        tok,
        &queries,
        view,
        m,
        &cfg.raw.latent.options(),
        batch,
    )?;
    let (report, run) = rank_and_score(&index, qv, ds, split, &queries, cfg)?;
    Ok((report, run, reasoning))
}

/// Ranks the corpus of `index` for query vectors `qv` `[q, d]` (the split's `queries`, in
/// order), `excluded_ids` removed, `eval.depth` kept, and scores the run exactly as trec_eval.
pub fn rank_and_score<B: Backend>(
    index: &DocIndex<B>,
    qv: Tensor<B, 2>,
    ds: &Dataset,
    split: &str,
    queries: &[&Query],
    cfg: &Config,
) -> Result<(Report, Run)> {
    let batch = cfg.raw.train.eval_batch_size;
    // excluded documents leave each query's ranking here, so the run keeps `depth` real hits
    let excluded_idx: Vec<std::collections::HashSet<usize>> =
        queries.iter().map(|q| ds.excluded(q)).collect();
    let depth = cfg.raw.eval.depth.min(ds.corpus.len());
    let top = crate::index::top_k(index, qv, &ds.corpus.ids, depth, batch, &excluded_idx)?;
    let mut run = Run::new();
    for (q, hits) in queries.iter().zip(top) {
        let hits: Vec<(String, f64)> = hits
            .into_iter()
            .map(|(i, s)| (ds.corpus.ids[i].clone(), s as f64))
            .collect();
        run.insert(q.id.clone(), hits);
    }
    let excluded: HashMap<String, Vec<String>> = queries
        .iter()
        .filter(|q| !q.excluded_ids.is_empty())
        .map(|q| (q.id.clone(), q.excluded_ids.clone()))
        .collect();
    Ok((evaluate(ds.split(split)?, &run, &excluded), run))
}

/// SHA-256 of what a run means: the resolved config minus what may change on resume
/// (`train.steps` can grow, `train.max_nonfinite_steps`, `[logging]`) and minus where the run
/// folder is (`run.output_dir`: a moved run folder is the same run); the paths it reads (dataset,
/// model, tokenizer, index, reward scripts) canonicalised, so neither the working directory nor
/// the spelling of the config path changes it.
pub fn config_hash(cfg: &Config) -> Result<String> {
    fn canonical(p: &mut PathBuf) {
        if let Ok(c) = std::fs::canonicalize(&*p) {
            *p = c;
        }
    }
    let mut raw = cfg.raw.clone();
    raw.train.steps = 0;
    raw.train.max_nonfinite_steps = crate::config::TrainSection::default().max_nonfinite_steps;
    raw.train.gradient_checkpointing = false; // the same losses and gradients either way
    raw.logging = Default::default();
    raw.run.output_dir = None;
    canonical(&mut raw.data.dataset);
    if let Some(m) = &mut raw.model {
        m.path.as_mut().map(canonical);
        m.tokenizer.as_mut().map(canonical);
    }
    raw.stage3.index.as_mut().map(canonical);
    for r in &mut raw.stage3.rewards {
        if let t1_rewards::RewardSpec::Script { path, .. } = r {
            canonical(path);
        }
    }
    let text =
        toml::to_string(&raw).map_err(|e| Error::Runtime(format!("cannot hash config: {e}")))?;
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

/// Direction of the metric that picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Minimize,
    Maximize,
}

type Optim<B> = OptimizerAdaptor<AdamW, Decoder<B>, B>;

/// The optimizer-step machinery shared by the stages. A stage owns its data and loss; per step
/// it calls [`Trainer::backward`] for each micro-batch of its [`crate::train::micro::StepPlan`] and then
/// [`Trainer::step`].
pub struct Trainer<B: AutodiffBackend> {
    pub cfg: Config,
    pub stage: &'static str,
    pub run_dir: RunDir,
    pub sinks: Box<dyn MetricsSink>,
    pub bar: ProgressBar,
    pub model: Decoder<B>,
    pub tok: T1Tokenizer,
    /// With `[lora]`: the adapters' settings and base (`model` then trains only the adapters
    /// and token rows; checkpoints and `best/` are adapter folders).
    pub adapter: Option<Adapter>,
    optim: Optim<B>,
    accum: GradientsAccumulator<Decoder<B>>,
    pub state: TrainState,
    /// RNG for anything random in the stage (negatives top-up, sampling), saved in checkpoints.
    pub rng: ChaCha8Rng,
    goal: Goal,
    metric: String,
    step_started: Instant,
    /// The training device (synchronised before reading the optimizer's clock).
    device: B::Device,
    /// Tokens processed since the last logged step (for tokens/s).
    pub tokens: usize,
    /// `Σ scale · loss` of this step's micro-batches so far: the step's loss, logged by
    /// [`Self::step`] as `<stage>/loss`.
    step_loss: f64,
    /// This loop polls for Ctrl-C / SIGTERM between steps (the handler then waits for it).
    _polling: crate::run::PollGuard,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Starts a stage: fresh from `[model]`, or from the run's latest checkpoint with `resume`.
    pub fn start(
        cfg: &Config,
        stage: &'static str,
        resume: bool,
        goal: Goal,
        metric: &str,
        device: &B::Device,
    ) -> Result<Self> {
        // the lock first: a second process on this folder is refused before anything is read
        // or written; config.resolved.toml only once the run is accepted
        let run_dir = RunDir::lock(cfg)?;
        let hash = config_hash(cfg)?;
        let t = &cfg.raw.train;
        let mut optim = adamw((t.beta1, t.beta2), t.eps, t.weight_decay).init::<B, Decoder<B>>();
        let latest = checkpoint::latest(run_dir.root())?;
        let (model, tok, state, adapter) = match (resume, latest) {
            (true, Some(dir)) => {
                let (mut adapter, mut base_now) = (None, None);
                let (model, record, state) = checkpoint::load::<B, _>(&dir, device, || {
                    let (base, tok) = load_backbone::<B>(cfg, device)?;
                    adapter = Some(lora_adapter(cfg, run_dir.root(), &base, &tok, false)?);
                    base_now = Some(checkpoint::base_fingerprint(&base));
                    Ok(base)
                })?;
                if state.stage != stage {
                    return Err(Error::Usage(format!(
                        "{}: checkpoint of {}, cannot resume it as {stage}",
                        dir.display(),
                        state.stage
                    )));
                }
                if state.config_hash != hash {
                    return Err(Error::Config {
                        location: cfg.source.display().to_string(),
                        message: format!(
                            "the config differs from the one {} was trained with (only train.steps, train.max_nonfinite_steps, train.gradient_checkpointing and [logging] may change on resume)",
                            dir.display()
                        ),
                    });
                }
                if adapter.is_some() != cfg.raw.lora.enabled {
                    return Err(Error::Config {
                        location: format!("{} (key 'lora.enabled')", cfg.source.display()),
                        message: format!(
                            "{} is {}, but lora.enabled = {}",
                            dir.display(),
                            if adapter.is_some() {
                                "a LoRA checkpoint"
                            } else {
                                "a full-weights checkpoint"
                            },
                            cfg.raw.lora.enabled
                        ),
                    });
                }
                if let (Some(then), Some(now)) = (&state.base_fingerprint, &base_now)
                    && let Some(diff) = checkpoint::fingerprint_mismatch(then, now)
                {
                    return Err(Error::Config {
                        location: format!("{} (key 'model')", cfg.source.display()),
                        message: format!(
                            "the base model the config gives now is not the one the adapters in \
                             {} were trained on ({diff}); restore that base (model.path, its \
                             files, or the previous stage's best/) or start a new run",
                            dir.display()
                        ),
                    });
                }
                optim = optim.load_record(record);
                let tok = T1Tokenizer::load(&dir.join("tokenizer.json"))?;
                (model, tok, state, adapter)
            }
            (true, None) => {
                return Err(Error::Usage(format!(
                    "--resume: no checkpoint in {}",
                    checkpoint::root(run_dir.root()).display()
                )));
            }
            (false, Some(dir)) => {
                return Err(Error::Usage(format!(
                    "{} already has checkpoints ({}): pass --resume to continue, or pick another run.name",
                    run_dir.root().display(),
                    dir.display()
                )));
            }
            (false, None) => {
                let (model, tok) = load_backbone::<B>(cfg, device)?;
                let base_fingerprint = cfg
                    .raw
                    .lora
                    .enabled
                    .then(|| checkpoint::base_fingerprint(&model));
                let (model, adapter) = attach_lora(cfg, run_dir.root(), model, &tok)?;
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.raw.run.seed);
                rng.set_stream(0xC0FFEE);
                let state = TrainState {
                    stage: stage.to_string(),
                    step: 0,
                    epoch: 0,
                    position: 0,
                    rng: RngState::of(&rng),
                    best: None,
                    config_hash: hash,
                    nonfinite_steps: 0,
                    nonfinite_in_a_row: 0,
                    base_fingerprint,
                };
                (model, tok, state, adapter)
            }
        };
        let model = match cfg.raw.lora.base_dtype.half() {
            Some(want) => {
                let dtype =
                    crate::model::lora::half_dtype::<B>(want, device).map_err(|message| {
                        Error::Config {
                            location: format!("{} (key 'lora.base_dtype')", cfg.source.display()),
                            message,
                        }
                    })?;
                model.with_base_dtype(dtype)?
            }
            None => model,
        };
        let model = model.with_recompute(t.gradient_checkpointing);
        check_lengths(cfg, model.config())?;
        check_batch_fits(
            cfg,
            model.config(),
            stage,
            adapter.as_ref().map(|a| &a.spec),
        )?;
        run_dir.write_resolved(cfg)?;
        if resume {
            // what was logged after the checkpoint is logged again by this run: once each
            crate::metrics::truncate_after(
                &run_dir.metrics_path(),
                &run_dir.tensorboard_dir(),
                state.step,
            )?;
        }
        let rng = state.rng.restore()?;
        let bar = progress_bar(t.steps, stage, cfg.raw.logging.progress);
        bar.set_position(state.step);
        let sinks = Box::new(run_dir.sinks(&cfg.raw.logging, bar.clone())?);
        Ok(Trainer {
            cfg: cfg.clone(),
            stage,
            run_dir,
            sinks,
            bar,
            model,
            tok,
            adapter,
            optim,
            accum: GradientsAccumulator::new(),
            state,
            rng,
            goal,
            metric: metric.to_string(),
            step_started: Instant::now(),
            device: device.clone(),
            tokens: 0,
            step_loss: 0.0,
            _polling: crate::run::PollGuard::new(),
        })
    }

    /// Whether the stage has steps left.
    pub fn running(&self) -> bool {
        self.state.step < self.cfg.raw.train.steps
    }

    /// The next `n` example indices of the epoch order (crossing into the next epoch as needed).
    pub fn next_examples(&mut self, n_examples: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        let seed = self.cfg.raw.run.seed;
        let mut order = epoch_order(n_examples, seed, self.state.epoch);
        while out.len() < n {
            if self.state.position >= n_examples {
                self.state.epoch += 1;
                self.state.position = 0;
                order = epoch_order(n_examples, seed, self.state.epoch);
            }
            out.push(order[self.state.position]);
            self.state.position += 1;
        }
        out
    }

    /// Backward of micro-batch `mb`'s `loss` at its share (`loss · mb.scale`, plus `extra`: a
    /// term already weighted that is differentiated with it but not part of the logged loss,
    /// e.g. stage 3's auxiliary InfoNCE), accumulated until [`Self::step`]. Returns `loss`'s
    /// value; `mb.scale` times it adds to the step's logged loss.
    pub fn backward(
        &mut self,
        mb: &MicroBatch,
        loss: Tensor<B, 1>,
        extra: Option<Tensor<B, 1>>,
    ) -> f64 {
        let value = loss.clone().into_scalar().elem::<f64>();
        self.step_loss += mb.scale * value;
        let objective = match extra {
            Some(extra) => loss * mb.scale + extra,
            None => loss * mb.scale,
        };
        // with train.gradient_checkpointing the model replays its layers here
        let grads = self.model.backward(objective);
        self.accum.accumulate(&self.model, grads);
        value
    }

    /// Clip, schedule, AdamW step; logs `stage/{loss, lr, grad_norm, tokens_per_s,
    /// time/optimizer_s, peak_rss_mib}` plus `scalars` (the loss is what [`Self::backward`]
    /// accumulated).
    ///
    /// A step whose loss or gradient norm is NaN/inf is skipped instead: no update, the
    /// step still counts, `stage/nonfinite_steps` is logged. More than `train.max_nonfinite_steps`
    /// of them in a row stop the run with a checkpoint of the weights as the last finite update
    /// left them (the skipped steps did not touch them) and an error saying what to change.
    pub fn step(&mut self, scalars: &[(&str, f64)]) -> Result<()> {
        let t = &self.cfg.raw.train;
        if let Some(r) = &self.model.recompute {
            // forwards no loss was differentiated through are not kept past the step
            r.clear();
        }
        let grads = self.accum.grads();
        let max = (t.max_grad_norm > 0.0).then_some(t.max_grad_norm);
        let (grads, norm) = clip_global_norm(&self.model, grads, max);
        let loss = std::mem::take(&mut self.step_loss);
        if !loss.is_finite() || !norm.is_finite() {
            return self.skip_nonfinite(loss, norm);
        }
        self.state.nonfinite_in_a_row = 0;
        let lr = lr_at(
            self.state.step,
            t.steps,
            t.warmup_steps,
            t.lr,
            t.min_lr_ratio,
            t.schedule,
        );
        let optimizer_started = Instant::now();
        self.model = self.optim.step(lr, self.model.clone(), grads);
        // GPU backends queue work: wait for the update before reading the clock (no-op on CPU)
        let _ = B::sync(&self.device);
        let optimizer_secs = optimizer_started.elapsed().as_secs_f64();
        // finite loss and gradients can still make non-finite weights (an lr of 1e300, an
        // overflowing update): such weights are never kept, logged as trained, or saved
        if !crate::model::weights::all_finite(&self.model.valid()) {
            return Err(self.nonfinite_update(lr));
        }
        self.state.step += 1;
        let secs = self.step_started.elapsed().as_secs_f64().max(1e-9);
        let mut all: Vec<(String, f64)> = std::iter::once(("loss", loss))
            .chain(scalars.iter().copied())
            .map(|(k, v)| (format!("{}/{k}", self.stage), v))
            .collect();
        all.push((format!("{}/lr", self.stage), lr));
        all.push((format!("{}/grad_norm", self.stage), norm));
        all.push((format!("{}/time/optimizer_s", self.stage), optimizer_secs));
        all.push((
            format!("{}/tokens_per_s", self.stage),
            self.tokens as f64 / secs,
        ));
        // the process's peak resident memory so far (what `t1-train plan` predicts)
        if let Some(peak) = super::plan::rss_bytes(true) {
            all.push((
                format!("{}/peak_rss_mib", self.stage),
                peak / (1u64 << 20) as f64,
            ));
        }
        if self.state.step % self.cfg.raw.logging.log_every == 0 || !self.running() {
            let pairs: Vec<(&str, f64)> = all.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.sinks.scalars(self.state.step, &pairs)?;
            // durable every logged step: a kill leaves no step half-logged or unlogged
            self.sinks.flush()?;
        }
        self.bar
            .set_message(format!("loss {loss:.4} lr {lr:.2e} |g| {norm:.2}"));
        self.bar.set_position(self.state.step);
        self.tokens = 0;
        self.step_started = Instant::now();
        Ok(())
    }

    /// The error of an update that left non-finite weights: the run stops without saving them.
    fn nonfinite_update(&self, lr: f64) -> Error {
        let name = crate::model::weights::first_nonfinite(&self.model.valid())
            .unwrap_or_else(|| "a parameter".into());
        let latest = checkpoint::latest(self.run_dir.root())
            .ok()
            .flatten()
            .map(|p| {
                format!(
                    "the latest checkpoint {} predates it (continue from it with --resume after the change)",
                    p.display()
                )
            })
            .unwrap_or_else(|| "no checkpoint was written before it".into());
        Error::Runtime(format!(
            "{} step {}: the optimizer update (lr {lr:e}) made {name} NaN or infinite although the \
             loss and gradients were finite; stopped without saving these weights — {latest}. \
             Lower train.lr or set train.max_grad_norm",
            self.stage,
            self.state.step + 1
        ))
    }

    /// The non-finite branch of [`Self::step`].
    fn skip_nonfinite(&mut self, loss: f64, norm: f64) -> Result<()> {
        self.state.step += 1;
        self.state.nonfinite_steps += 1;
        self.state.nonfinite_in_a_row += 1;
        let (step, stage) = (self.state.step, self.stage);
        self.sinks.scalars(
            step,
            &[(
                &format!("{stage}/nonfinite_steps"),
                self.state.nonfinite_steps as f64,
            )],
        )?;
        self.sinks.flush()?;
        let limit = self.cfg.raw.train.max_nonfinite_steps;
        let row = self.state.nonfinite_in_a_row;
        self.bar.println(format!(
            "{stage} step {step}: loss {loss}, gradient norm {norm} — update skipped ({row} in a row,              train.max_nonfinite_steps = {limit})"
        ));
        self.bar.set_position(step);
        self.tokens = 0;
        self.step_started = Instant::now();
        if row <= limit {
            return Ok(());
        }
        let name = self.save()?;
        Err(Error::Runtime(format!(
            "{stage}: loss or gradients were not finite for {row} steps in a row (steps {}–{step}); \
             stopped. Those steps made no update, so checkpoint {name} holds the last good weights. \
             Lower train.lr, set train.max_grad_norm, or check the data and the starting model",
            step + 1 - row
        )))
    }

    /// Whether periodic eval / checkpoint is due after this step.
    pub fn eval_due(&self) -> bool {
        let e = self.cfg.raw.train.eval_every;
        !self.running() || (e > 0 && self.state.step % e == 0)
    }

    pub fn save_due(&self) -> bool {
        !self.running() || self.state.step % self.cfg.raw.train.save_every == 0
    }

    /// Records a dev metric: logs it, and when it beats the best so far saves the model to
    /// `runs/<name>/best/` (an HF folder the next stage can start from).
    pub fn record_eval(&mut self, metrics: &[(&str, f64)]) -> Result<()> {
        let tagged: Vec<(String, f64)> = metrics
            .iter()
            .map(|(k, v)| (format!("{}/dev/{k}", self.stage), *v))
            .collect();
        let pairs: Vec<(&str, f64)> = tagged.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.sinks.scalars(self.state.step, &pairs)?;
        self.sinks.flush()?;
        let Some(&(_, value)) = metrics.iter().find(|(k, _)| *k == self.metric) else {
            return Ok(());
        };
        if !value.is_finite() {
            // a NaN/inf dev metric is never the best (and never blocks a finite one later)
            self.bar.println(format!(
                "{} step {}: dev {} is {value}: not a candidate for best/",
                self.stage, self.state.step, self.metric
            ));
            return Ok(());
        }
        let better = match &self.state.best {
            None => true,
            Some(b) => match self.goal {
                Goal::Minimize => value < b.value,
                Goal::Maximize => value > b.value,
            },
        };
        if better {
            let dir = self.best_dir();
            let tmp = self.run_dir.root().join(".best.tmp");
            // what this model is: read by `t1-train index` (model step) and the curriculum report
            let about = serde_json::json!({
                "stage": self.stage,
                "step": self.state.step,
                "metric": format!("dev/{}", self.metric),
                "value": value,
            });
            let written = (|| {
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
                }
                save_model(&self.model.valid(), self.adapter.as_ref(), &tmp)?;
                self.tok.save(&tmp.join("tokenizer.json"))?;
                crate::run::write_atomic(&tmp.join("t1-best.json"), about.to_string().as_bytes())?;
                crate::checksums::write(&tmp)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::Runtime(format!(
                    "the best model (step {}) was not written ({e}); {} is unchanged and {}",
                    self.state.step,
                    dir.display(),
                    checkpoint::how_to_go_on(self.run_dir.root())
                )));
            }
            // swap by renames, so a crash at any point leaves a complete best/ or .best.old/
            let old = self.run_dir.root().join(".best.old");
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            if dir.exists() {
                std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            self.state.best = Some(Best {
                metric: self.metric.clone(),
                value,
                step: self.state.step,
                checkpoint: format!("step-{:06}", self.state.step),
            });
        }
        Ok(())
    }

    /// Dense retrieval on the dev split through `view`: logs `<stage>/dev/*`, keeps the best
    /// model (via [`Self::record_eval`]) and returns the metrics.
    pub fn eval_dev_dense(&mut self, ds: &Dataset, view: QueryView) -> Result<Vec<(String, f64)>> {
        let (report, _, _) = dense_eval(
            &self.model.valid(),
            &self.tok,
            ds,
            &self.cfg.raw.data.dev_split,
            view,
            &self.cfg,
        )?;
        let named = report.mean.named();
        self.record_eval(&named)?;
        Ok(named.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    /// `runs/<name>/best/`.
    pub fn best_dir(&self) -> PathBuf {
        self.run_dir.root().join("best")
    }

    /// Writes a checkpoint and prunes old ones.
    pub fn save(&mut self) -> Result<String> {
        self.state.rng = RngState::of(&self.rng);
        let name = checkpoint::save(
            self.run_dir.root(),
            &self.model,
            self.adapter.as_ref(),
            &self.tok,
            self.optim.to_record(),
            &self.state,
        )?;
        checkpoint::prune(
            self.run_dir.root(),
            self.cfg.raw.train.keep_checkpoints,
            &[],
        )?;
        self.sinks.flush()?;
        Ok(name)
    }

    pub fn run_root(&self) -> &Path {
        self.run_dir.root()
    }

    /// On Ctrl-C: saves a checkpoint at the current step and returns the `Interrupted` error the
    /// loop passes up (exit code 1, with how to continue).
    pub fn stop_if_interrupted(&mut self) -> Result<()> {
        if !crate::run::interrupted() {
            return Ok(());
        }
        let name = self.save()?;
        Err(Error::Interrupted(format!(
            "{} saved at step {} ({name}); continue with --resume",
            self.stage, self.state.step
        )))
    }

    /// Closes the progress bar, flushes the sinks and reports the stage.
    pub fn finish(mut self, last_dev: Vec<(String, f64)>) -> Result<StageSummary> {
        self.bar.finish_and_clear();
        self.sinks.flush()?;
        Ok(StageSummary {
            steps: self.state.step,
            best: self
                .state
                .best
                .as_ref()
                .map(|b| (b.metric.clone(), b.value, b.step)),
            best_dir: self.best_dir(),
            last_dev,
        })
    }
}

/// What a finished stage reports.
#[derive(Debug, Clone)]
pub struct StageSummary {
    pub steps: u64,
    /// Best dev value of the stage's selection metric and its step.
    pub best: Option<(String, f64, u64)>,
    /// Where the best model was saved (an HF folder).
    pub best_dir: PathBuf,
    /// Last dev metrics.
    pub last_dev: Vec<(String, f64)>,
}
