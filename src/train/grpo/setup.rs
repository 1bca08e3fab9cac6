//! Stage 3's set-up: the training queries with their judgments, the rewards, the frozen
//! starting model (reference and frozen-index source) and the first document index.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use t1_rewards::Reward;

use super::{Grpo, Target};
use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::index::DocIndex;
use crate::model::Decoder;
use crate::model::generate::Sampler;
use crate::model::load::{load_backbone, model_section};
use crate::train::common::Trainer;

impl<'a, B: AutodiffBackend> Grpo<'a, B> {
    pub(super) fn setup(
        cfg: &'a Config,
        mut tr: Trainer<B>,
        ds: &'a Dataset,
        device: &B::Device,
    ) -> Result<Self> {
        let m = model_section(cfg)?.clone();
        let s3 = cfg.raw.stage3.clone();
        let rewards: Vec<Box<dyn Reward>> = s3
            .rewards
            .iter()
            .map(|r| r.build().map_err(|e| Error::Runtime(e.0)))
            .collect::<Result<_>>()?;
        let weights: Vec<f32> = s3.rewards.iter().map(|r| r.weight()).collect();
        // The starting model: the frozen reference (β > 0) and, on resume, what a frozen index
        // is rebuilt from (so a resumed run ranks against the same index as an uninterrupted
        // one). With LoRA the starting model is the base under the adapters (frozen, so
        // unchanged by training): a view sharing its tensors, not a second copy in memory (TRL +
        // PEFT's disable_adapter()). In full fine-tuning at β = 0 a copy is loaded only on the
        // resume of a run with a frozen index it encodes itself (`train::plan` counts it there,
        // for the set-up alone: it is dropped once the index is built).
        let starting = if tr.adapter.is_some() {
            Some(tr.model.valid().base_view())
        } else if s3.beta > 0.0 || s3.resume_encodes_frozen_index(tr.state.step) {
            Some(load_backbone::<B>(cfg, device)?.0.valid())
        } else {
            None
        };
        let reference = if s3.beta > 0.0 {
            starting.clone()
        } else {
            None
        };
        let targets = targets(cfg, ds)?;
        let sampler = Sampler::Random {
            temperature: s3.temperature,
            top_k: s3.top_k,
            top_p: s3.top_p,
        };
        let step = tr.state.step;
        let every = s3.refresh_every;
        // the resume of a run between two re-encodings: the index in force, from the checkpoint
        let between = every > 0 && step % every != 0;
        let kept = match between {
            true => checkpoint_index::<B>(&tr, ds, device)?,
            false => None,
        };
        let built_at = match &kept {
            Some(_) => step - step % every,
            None => step,
        };
        // before the first re-encoding (or with none) the starting index: `stage3.index`, or the
        // starting model's; after it, the index in force, re-encoded with the resumed weights at
        // a re-encoding step (as the uninterrupted run does there)
        let first = every == 0 || step < every;
        let started = std::time::Instant::now();
        let (index, encoded) = match (kept, &s3.index, &starting) {
            (Some(kept), _, _) => (kept, false),
            (None, Some(path), _) if first => (saved_index::<B>(cfg, ds, path, device)?, false),
            (None, None, Some(start)) if every == 0 => (encode(cfg, ds, &tr, start)?, true),
            _ => (encode(cfg, ds, &tr, &tr.model.valid())?, true),
        };
        if encoded {
            let secs = started.elapsed().as_secs_f64();
            tr.sinks.text(
                step,
                "stage3/index",
                &format!(
                    "{} documents encoded in {secs:.1} s ({:.0} documents/s)",
                    ds.corpus.len(),
                    ds.corpus.len() as f64 / secs.max(1e-9)
                ),
            )?;
        }
        let mut g = Grpo {
            cfg,
            ds,
            s3,
            m,
            built_at,
            rollouts_path: tr.run_root().join("rollouts.jsonl"),
            tr,
            device: device.clone(),
            targets,
            rewards,
            weights,
            sampler,
            reference,
            index,
            last_dev: Vec::new(),
        };
        g.keep_index_in_checkpoints()?;
        Ok(g)
    }
}

/// The file a checkpoint keeps stage 3's re-encoded index in (`Grpo::keep_index_in_checkpoints`).
pub(super) const CHECKPOINT_INDEX: &str = "refreshed-index.safetensors";

/// What a checkpoint's index file says it was built from.
pub(super) fn checkpoint_index_meta(
    cfg: &Config,
    ds: &Dataset,
    built_at: u64,
) -> Result<crate::index::IndexMeta> {
    Ok(crate::index::IndexMeta::new(
        format!("the stage-3 policy at step {built_at}"),
        String::new(),
        Some(built_at),
        &cfg.raw.data.dataset,
        &ds.corpus,
        model_section(cfg)?,
    ))
}

/// The re-encoded index the resumed checkpoint kept; `None` (with a note) for a checkpoint
/// written before checkpoints kept it, which then re-encodes with the resumed weights.
fn checkpoint_index<B: AutodiffBackend>(
    tr: &Trainer<B>,
    ds: &Dataset,
    device: &B::Device,
) -> Result<Option<DocIndex<B::InnerBackend>>> {
    let Some(dir) = crate::run::checkpoint::latest(tr.run_root())? else {
        return Ok(None);
    };
    let path = dir.join(CHECKPOINT_INDEX);
    if !path.exists() {
        crate::metrics::warn(
            &tr.bar,
            format!(
                "stage3: {} keeps no re-encoded index; the resume re-encodes the corpus with its \
             weights (an uninterrupted run would have ranked against the index of the last \
             re-encoding until the next)",
                dir.display()
            ),
        );
        return Ok(None);
    }
    let (index, meta, ids) = DocIndex::load(&path, device)?;
    if ids != ds.corpus.ids || meta.corpus_sha256 != crate::index::corpus_hash(&ds.corpus) {
        return Err(Error::Data {
            file: path,
            line: 0,
            field: Some("t1.doc_ids".into()),
            message: "the checkpoint's index was built from another corpus than the dataset's \
                      corpus.jsonl"
                .into(),
        });
    }
    Ok(Some(index))
}

/// The corpus encoded by `model`'s document view (shared among data-parallel workers).
pub(super) fn encode<B: AutodiffBackend>(
    cfg: &Config,
    ds: &Dataset,
    tr: &Trainer<B>,
    model: &Decoder<B::InnerBackend>,
) -> Result<DocIndex<B::InnerBackend>> {
    // data-parallel: each worker encodes its block of the corpus and gathers the rest
    DocIndex::build_shared(
        model,
        &tr.tok,
        &ds.corpus,
        model_section(cfg)?.max_doc_tokens,
        cfg.raw.train.eval_batch_size,
    )
}

/// The training queries that have a relevant document; none is an error naming the qrels file.
fn targets<'a>(cfg: &Config, ds: &'a Dataset) -> Result<Vec<Target<'a>>> {
    let split = &cfg.raw.data.train_split;
    let qrels = ds.split(split)?;
    let targets: Vec<Target> = ds
        .split_queries(split)?
        .into_iter()
        .map(|q| Target {
            query: q,
            gold: ds.relevant(qrels, &q.id),
            excluded: ds.excluded(q),
        })
        .filter(|t| !t.gold.is_empty())
        .collect();
    if targets.is_empty() {
        return Err(Error::data(
            ds.root.join("qrels").join(format!("{split}.tsv")),
            0,
            None,
            "stage3: no training query has a relevant document (every judgment has score ≤ 0)",
        ));
    }
    Ok(targets)
}

/// `stage3.index`: a saved index, checked against the corpus (ids and content) and the model in
/// `model.path`.
fn saved_index<B: AutodiffBackend>(
    cfg: &Config,
    ds: &Dataset,
    path: &std::path::Path,
    device: &B::Device,
) -> Result<DocIndex<B::InnerBackend>> {
    let (index, meta, ids) = DocIndex::load(path, device)?;
    if ids != ds.corpus.ids {
        return Err(Error::Data {
            file: path.to_path_buf(),
            line: 0,
            field: Some("t1.doc_ids".into()),
            message: "the document ids differ from the dataset's corpus.jsonl (order included)"
                .into(),
        });
    }
    let model_sha = match &model_section(cfg)?.path {
        Some(dir) => crate::index::model_hash(dir)?,
        None => {
            return Err(Error::Config {
                location: format!("{} (key 'stage3.index')", cfg.source.display()),
                message: "a saved index needs the model it was built from in model.path".into(),
            });
        }
    };
    crate::index::check_index(
        path,
        &meta,
        &crate::index::corpus_hash(&ds.corpus),
        Some(&model_sha),
    )?;
    Ok(index)
}
