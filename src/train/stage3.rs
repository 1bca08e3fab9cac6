//! Stage 3 — GRPO with retrieval-rank rewards (`t1-train stage3 --config FILE`).
//!
//! Per step, top to bottom:
//! 1. **sample**: `train.batch_size` training queries × `stage3.group_size` rollouts from the
//!    current policy (`rollout::sample`; temperature/top-p/top-k), each rollout's query vector read
//!    at `<emb_token>` in the same decode loop;
//! 2. **rank**: cosine against the document index (built from the starting model; rebuilt every
//!    `stage3.refresh_every` steps, or frozen), gold ranks and top-k in trec_eval order with the
//!    query's `excluded_ids` removed (`index::rank_gold`);
//! 3. **reward**: each configured reward (`t1_rewards`), weighted sum with abstentions left out;
//! 4. **advantage**: group-relative (`advantage::group_advantages`, TRL's `scale_rewards`);
//! 5. **loss**: completion-token log-probs under the policy at the sampling temperature
//!    (logits / T, as TRL), the clipped objective of `loss::grpo` with β·KL to the frozen
//!    starting model when β > 0, truncated rollouts masked when `mask_truncated`;
//! 6. **update**: `stage3.iterations` (μ) optimizer steps over the same rollouts. With μ = 1 the
//!    old policy is the policy itself (ratio ≡ 1, TRL); with μ > 1 it is the sampling-time
//!    log-probs the decode loop returned.
//!
//! Deviations from TRL: one process; the rollouts of a step are split into up to
//! `train.grad_accum` micro-batches for the backward, each scaled by its share of the whole batch
//! (rows for grpo/dr_grpo, completion tokens for bnpo; `dapo` normalises by the whole batch's
//! completion tokens), so the gradient equals the unsplit batch's for any split; `entropy` is that of the sampling
//! distribution over the completion tokens (computed in the decode loop — the same policy TRL's
//! training forward sees at μ = 1 — rather than from a second full-vocabulary pass).
//!
//! Optional: `stage3.aux_infonce_weight` > 0 adds `loss::corpus_nce` of each live rollout's own
//! `<emb_token>` state (read from the same forward as the log-probs, with gradient) against the
//! document index, its relevant documents as positives.
//!
//! Logs `stage3/{reward, reward_std, reward/<name>, frac_reward_zero_std, gold_rank_mean,
//! gold_rank_median, hit@10, completion_len_mean, completion_len_max, truncated_frac,
//! format_frac, clip_low, clip_high, clip_region, kl, entropy, loss, aux_infonce (when on),
//! rollouts_per_s, lr, grad_norm, tokens_per_s}` and where a step's wall clock went:
//! `stage3/time/{refresh_s, sample_s, rank_reward_s, reference_s, policy_s, optimizer_s}` (index
//! rebuild, decode loop, ranking + rewards + advantages, reference log-probs, policy forward +
//! backward, clip + AdamW); every `train.eval_every` steps dense dev retrieval with greedy reasoning
//! (`stage3/dev/ndcg@10`, best model kept) and a few rollouts to `rollouts.jsonl` and
//! TensorBoard text.

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use t1_rewards::{Reward, RolloutOutcome, combine};

use crate::advantage::group_advantages;
use crate::config::{Config, QueryView};
use crate::data::{Dataset, Query};
use crate::error::{Error, Result};
use crate::index::{DocIndex, rank_gold};
use crate::loss::{GrpoParams, LossType, corpus_nce, grpo_loss};
use crate::model::Decoder;
use crate::model::generate::Sampler;
use crate::rollout::{Completions, RolloutOptions, completions, logprobs, sample};
use crate::train::common::StageSummary;
use crate::train::common::{Goal, Trainer, load_backbone, model_section};

/// A training query with its judged documents (indices into the corpus).
struct Target<'a> {
    query: &'a Query,
    gold: Vec<(usize, i32)>,
    excluded: HashSet<usize>,
}

/// Wall-clock seconds per phase of a step. `lap` waits for the device's queued work first
/// (`Backend::sync`; a no-op on the CPU backend), so asynchronous GPU backends time each phase's
/// own work rather than its launches.
struct PhaseClock<'a, B: AutodiffBackend> {
    device: &'a B::Device,
    since: Instant,
}

impl<'a, B: AutodiffBackend> PhaseClock<'a, B> {
    fn start(device: &'a B::Device) -> Self {
        Self {
            device,
            since: Instant::now(),
        }
    }

    /// Seconds since the previous lap (or the start); restarts the clock.
    fn lap(&mut self) -> f64 {
        // a failed sync surfaces at the next tensor read with its own error; timing stays best-effort
        let _ = B::sync(self.device);
        let secs = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        secs
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs stage 3 to `train.steps` (or resumes it).
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    resume: bool,
    device: &B::Device,
) -> Result<StageSummary> {
    let mut tr = Trainer::<B>::start(cfg, "stage3", resume, Goal::Maximize, "ndcg@10", device)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let m = model_section(cfg)?.clone();
    let s3 = cfg.raw.stage3.clone();
    let t = cfg.raw.train.clone();
    let rewards: Vec<Box<dyn Reward>> = s3
        .rewards
        .iter()
        .map(|r| r.build().map_err(|e| Error::Runtime(e.0)))
        .collect::<Result<_>>()?;
    let weights: Vec<f32> = s3.rewards.iter().map(|r| r.weight()).collect();
    // the frozen reference: the stage's starting model
    // The starting model: the frozen reference (β > 0) and, on resume, what a frozen index is
    // rebuilt from (so a resumed run ranks against the same index as an uninterrupted one).
    // With LoRA the starting model is the base under the adapters (frozen, so unchanged by
    // training): a view sharing its tensors, not a second copy in memory (TRL + PEFT's
    // disable_adapter()).
    let starting = if tr.adapter.is_some() {
        Some(tr.model.valid().base_view())
    } else if s3.beta > 0.0 || tr.state.step > 0 {
        Some(load_backbone::<B>(cfg, device)?.0.valid())
    } else {
        None
    };
    let reference = if s3.beta > 0.0 {
        starting.clone()
    } else {
        None
    };
    let qrels = ds.split(&cfg.raw.data.train_split)?;
    let targets: Vec<Target> = ds
        .split_queries(&cfg.raw.data.train_split)?
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
            ds.root
                .join("qrels")
                .join(format!("{}.tsv", cfg.raw.data.train_split)),
            0,
            None,
            "stage3: no training query has a relevant document (every judgment has score ≤ 0)",
        ));
    }
    let sampler = Sampler::Random {
        temperature: s3.temperature,
        top_k: s3.top_k,
        top_p: s3.top_p,
    };
    let params = |num_items: f64| GrpoParams {
        epsilon_low: s3.epsilon,
        epsilon_high: s3.epsilon_high.unwrap_or(s3.epsilon),
        beta: s3.beta,
        kl: s3.kl_estimator,
        loss_type: s3.loss_type,
        max_completion_length: m.max_reasoning_tokens,
        num_items,
    };
    let tok = tr.tok.clone();
    let build_index = |model: &Decoder<B::InnerBackend>| {
        DocIndex::build(
            model,
            &tok,
            &ds.corpus,
            m.max_doc_tokens,
            t.eval_batch_size,
            |_| {},
        )
    };
    let mut index = match (&s3.index, &starting, s3.refresh_every) {
        (Some(path), _, _) => {
            let (index, meta, ids) = DocIndex::load(path, device)?;
            if ids != ds.corpus.ids {
                return Err(Error::Data {
                    file: path.clone(),
                    line: 0,
                    field: Some("t1.doc_ids".into()),
                    message:
                        "the document ids differ from the dataset's corpus.jsonl (order included)"
                            .into(),
                });
            }
            let model_sha = match &m.path {
                Some(dir) => crate::index::model_hash(dir)?,
                None => {
                    return Err(Error::Config {
                        location: format!("{} (key 'stage3.index')", cfg.source.display()),
                        message: "a saved index needs the model it was built from in model.path"
                            .into(),
                    });
                }
            };
            crate::index::check_index(
                path,
                &meta,
                &crate::index::corpus_hash(&ds.corpus),
                Some(&model_sha),
            )?;
            index
        }
        (None, Some(start), 0) => build_index(start)?,
        _ => build_index(&tr.model.valid())?,
    };
    let mut built_at = tr.state.step;
    let rollouts_path = tr.run_root().join("rollouts.jsonl");
    let mut last_dev = Vec::new();
    while tr.running() {
        tr.stop_if_interrupted()?;
        let mut clock = PhaseClock::<B>::start(device);
        if s3.refresh_every > 0
            && tr.state.step % s3.refresh_every == 0
            && tr.state.step != built_at
        {
            index = build_index(&tr.model.valid())?;
            built_at = tr.state.step;
        }
        let refresh_secs = clock.lap();
        // 1. sample
        let picked = tr.next_examples(targets.len(), t.batch_size);
        let qs: Vec<&Query> = picked.iter().map(|&i| targets[i].query).collect();
        let seed = tr.rng.random::<u64>();
        let policy = tr.model.valid();
        let opts = RolloutOptions {
            group: s3.group_size,
            sampler: sampler.clone(),
            max_query_tokens: m.max_query_tokens,
            max_new_tokens: m.max_reasoning_tokens,
            seed,
        };
        let batch = sample(&policy, &tr.tok, &qs, &opts)?;
        let sample_secs = clock.lap();
        let n = batch.rollouts.len();
        let g = s3.group_size;
        // 2. rank, 3. reward
        let scores = index.scores(batch.embeddings.clone().detach())?;
        let mut per_fn: Vec<Vec<Option<f32>>> = vec![Vec::with_capacity(n); rewards.len()];
        let mut combined = Vec::with_capacity(n);
        let mut best_ranks = Vec::with_capacity(n);
        for (i, row) in scores.iter().enumerate() {
            let target = &targets[picked[i / g]];
            let (gold, top_k, num_docs) = rank_gold(
                row,
                &ds.corpus.ids,
                &target.gold,
                &target.excluded,
                s3.reward_top_k,
            );
            let ro = &batch.rollouts[i];
            let outcome = RolloutOutcome {
                gold,
                top_k,
                num_docs,
                text: batch.texts[i].clone(),
                num_tokens: ro.tokens.len(),
                truncated: ro.truncated(),
                format_ok: batch.format_ok[i],
            };
            best_ranks.extend(outcome.best_gold_rank().map(|r| r as f64));
            let values = rewards
                .iter()
                .map(|r| {
                    r.try_score(&outcome)
                        .map_err(|e| Error::Runtime(format!("reward {}: {e}", r.name())))
                })
                .collect::<Result<Vec<_>>>()?;
            // a NaN/inf reward is a defect of the reward (usually a script dividing by zero): the
            // run stops naming it and the rollout rather than learning nothing silently
            if let Some((k, v)) = values
                .iter()
                .enumerate()
                .find_map(|(k, v)| v.filter(|x| !x.is_finite()).map(|x| (k, x)))
            {
                return Err(nonfinite_reward(
                    cfg,
                    k,
                    rewards[k].name(),
                    v,
                    target.query,
                    i % g,
                    &batch.texts[i],
                ));
            }
            for (k, v) in values.iter().enumerate() {
                per_fn[k].push(*v);
            }
            combined.push(combine(&values, &weights));
        }
        // 4. advantages
        let adv = group_advantages(&combined, g, s3.scale_rewards);
        if let Some(i) = adv.values.iter().position(|a| !a.is_finite()) {
            return Err(Error::Config {
                location: format!("{} (key 'stage3.rewards')", cfg.source.display()),
                message: format!(
                    "the advantages of query '{}' are not finite (its group's rewards {:?} overflow \
                     f32 arithmetic); keep rewards within a sane range, e.g. |r| ≤ 1e6",
                    targets[picked[i / g]].query.id,
                    &combined[(i / g) * g..(i / g + 1) * g]
                ),
            });
        }
        // mean entropy of the sampling distribution over the completion tokens that get a loss
        let live_entropies: Vec<f32> = batch
            .rollouts
            .iter()
            .filter(|r| !(s3.mask_truncated && r.truncated()))
            .flat_map(|r| r.entropies.iter().copied())
            .collect();
        let entropy = live_entropies.iter().map(|&h| h as f64).sum::<f64>()
            / live_entropies.len().max(1) as f64;
        let rank_reward_secs = clock.lap();
        // 5.–6. loss and μ updates
        let chunks: Vec<Vec<usize>> = (0..n)
            .collect::<Vec<_>>()
            .chunks(n.div_ceil(t.grad_accum.max(1)))
            .map(|c| c.to_vec())
            .collect();
        let parts: Vec<Completions<B>> = chunks
            .iter()
            .map(|c| {
                completions::<B>(
                    &batch.prompts,
                    &batch.rollouts,
                    c,
                    tr.tok.pad,
                    s3.mask_truncated,
                    device,
                )
            })
            .collect();
        let total_tokens: f64 = parts.iter().map(|c| c.tokens).sum();
        // dapo: Σ over the whole batch ÷ its tokens, each chunk taken whole
        let num_items = total_tokens;
        // each chunk's share of the unsplit batch's loss, whatever the split (the chunks may be
        // fewer than grad_accum, and the last one smaller): Σ_c scale_c · loss_c = the loss of
        // the whole batch, so its gradient is the unsplit one
        let scales: Vec<f64> = parts
            .iter()
            .zip(&chunks)
            .map(|(c, rows)| match s3.loss_type {
                LossType::Dapo => 1.0,
                LossType::Bnpo if total_tokens > 0.0 => c.tokens / total_tokens,
                _ => rows.len() as f64 / n as f64,
            })
            .collect();
        let refs: Vec<Option<Tensor<B, 2>>> = parts
            .iter()
            .map(|c| {
                reference.as_ref().map(|r| {
                    let lp = logprobs(r, &c.inner(), s3.temperature).0;
                    Tensor::from_inner(lp)
                })
            })
            .collect();
        let reference_secs = clock.lap();
        for iteration in 0..s3.iterations {
            if !tr.running() {
                break;
            }
            // its own clock: a later update must not count the previous one's step, eval and save
            let mut policy_clock = PhaseClock::<B>::start(device);
            let (mut loss_sum, mut kl, mut cl, mut ch, mut cr) = (0.0, 0.0, 0.0, 0.0, 0.0);
            let mut aux_sum = 0.0;
            for (((c, rows), rf), &scale) in parts.iter().zip(&chunks).zip(&refs).zip(&scales) {
                let a: Vec<f32> = rows.iter().map(|&i| adv.values[i]).collect();
                let a = Tensor::<B, 1>::from_data(TensorData::new(a, [rows.len()]), device);
                let (lp, emb) = logprobs(&tr.model, c, s3.temperature);
                let old = if s3.iterations == 1 {
                    lp.clone().detach()
                } else {
                    c.sampled.clone()
                };
                let out = grpo_loss(lp, old, rf.clone(), a, c.mask.clone(), &params(num_items));
                let w = c.tokens / total_tokens.max(1.0);
                loss_sum += scale * out.loss.clone().into_scalar().elem::<f64>();
                // the policy loss at its share; the auxiliary InfoNCE (a mean over the chunk's
                // rollouts whatever the loss type) at the chunk's share of rollouts
                let share = rows.len() as f64 / n as f64;
                let mut loss = out.loss * scale;
                if s3.aux_infonce_weight > 0.0 {
                    // each live rollout's own <emb_token> state against the whole index
                    let (mut pairs, mut ignore) = (Vec::new(), Vec::new());
                    for (r, &i) in rows.iter().enumerate() {
                        let target = &targets[picked[i / g]];
                        if !c.live[r] {
                            continue;
                        }
                        for &(doc, _) in target
                            .gold
                            .iter()
                            .filter(|(d, _)| !target.excluded.contains(d))
                        {
                            pairs.push((r, doc));
                            ignore.push(
                                target
                                    .gold
                                    .iter()
                                    .map(|&(d, _)| d)
                                    .chain(target.excluded.iter().copied())
                                    .collect::<Vec<_>>(),
                            );
                        }
                    }
                    let aux = corpus_nce(
                        emb,
                        Tensor::from_inner(index.vectors.clone()),
                        &pairs,
                        &ignore,
                        s3.aux_infonce_temperature.unwrap_or(0.05),
                    );
                    aux_sum += share * aux.clone().into_scalar().elem::<f64>();
                    loss = loss + aux.mul_scalar(s3.aux_infonce_weight * share);
                }
                kl += out.kl * w;
                cl += out.clip_low * w;
                ch += out.clip_high * w;
                cr += out.clip_region * w;
                tr.backward_scaled(loss, 1.0);
            }
            let policy_secs = policy_clock.lap();
            tr.tokens += total_tokens as usize;
            let scored: Vec<f64> = combined.iter().flatten().map(|&v| v as f64).collect();
            let mean = scored.iter().sum::<f64>() / scored.len().max(1) as f64;
            let std = if scored.len() > 1 {
                (scored.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (scored.len() - 1) as f64)
                    .sqrt()
            } else {
                0.0
            };
            let lens: Vec<f64> = batch
                .rollouts
                .iter()
                .map(|r| r.tokens.len() as f64)
                .collect();
            let mut scalars: Vec<(String, f64)> = vec![
                ("loss".into(), loss_sum),
                ("reward".into(), mean),
                ("reward_std".into(), std),
                ("frac_reward_zero_std".into(), adv.frac_zero_std),
                (
                    "gold_rank_mean".into(),
                    best_ranks.iter().sum::<f64>() / best_ranks.len().max(1) as f64,
                ),
                ("gold_rank_median".into(), median(best_ranks.clone())),
                (
                    "hit@10".into(),
                    best_ranks.iter().filter(|&&r| r <= 10.0).count() as f64
                        / best_ranks.len().max(1) as f64,
                ),
                (
                    "completion_len_mean".into(),
                    lens.iter().sum::<f64>() / n as f64,
                ),
                (
                    "completion_len_max".into(),
                    lens.iter().cloned().fold(0.0, f64::max),
                ),
                (
                    "truncated_frac".into(),
                    batch.rollouts.iter().filter(|r| r.truncated()).count() as f64 / n as f64,
                ),
                (
                    "format_frac".into(),
                    batch.format_ok.iter().filter(|&&f| f).count() as f64 / n as f64,
                ),
                ("clip_low".into(), cl),
                ("clip_high".into(), ch),
                ("clip_region".into(), cr),
                ("kl".into(), kl),
                ("entropy".into(), entropy),
                ("rollouts_per_s".into(), n as f64 / sample_secs.max(1e-9)),
                ("time/policy_s".into(), policy_secs),
            ];
            // the batch's own phases count once, on the first of its μ updates
            let first = iteration == 0;
            for (name, secs) in [
                ("time/refresh_s", refresh_secs),
                ("time/sample_s", sample_secs),
                ("time/rank_reward_s", rank_reward_secs),
                ("time/reference_s", reference_secs),
            ] {
                scalars.push((name.into(), if first { secs } else { 0.0 }));
            }
            if s3.aux_infonce_weight > 0.0 {
                scalars.push(("aux_infonce".into(), aux_sum));
            }
            for (r, vals) in rewards.iter().zip(&per_fn) {
                let v: Vec<f64> = vals.iter().flatten().map(|&x| x as f64).collect();
                scalars.push((
                    format!("reward/{}", r.name()),
                    v.iter().sum::<f64>() / v.len().max(1) as f64,
                ));
            }
            let pairs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            tr.step(&pairs)?;
            if tr.eval_due() {
                last_dev = tr.eval_dev_dense(&ds, QueryView::Generated)?;
                // a few rollouts of this step, for reading
                let mut text = String::new();
                let mut lines = String::new();
                for i in 0..g.min(n) {
                    let line = serde_json::json!({
                        "step": tr.state.step,
                        "query_id": qs[i / g].id,
                        "query": qs[i / g].text,
                        "reasoning": batch.texts[i],
                        "reward": combined[i],
                        "advantage": adv.values[i],
                        "truncated": batch.rollouts[i].truncated(),
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                    text.push_str(&format!(
                        "**{}** → {} (reward {:?})\n\n",
                        qs[i / g].text,
                        batch.texts[i],
                        combined[i]
                    ));
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&rollouts_path)
                    .map_err(|e| Error::io(&rollouts_path, e))?;
                f.write_all(lines.as_bytes())
                    .map_err(|e| Error::io(&rollouts_path, e))?;
                tr.sinks.text(tr.state.step, "stage3/rollouts", &text)?;
            }
            if tr.save_due() {
                tr.save()?;
            }
        }
    }
    tr.finish(last_dev)
}

/// The error for a reward that returned NaN or an infinity (or a value beyond f32): which reward
/// (`stage3.rewards[k]`, its name and, for scripts, file), which query and rollout, and what it
/// wrote. Exit code 2: the reward is input, and the run stops rather than learning nothing.
fn nonfinite_reward(
    cfg: &Config,
    k: usize,
    name: &str,
    value: f32,
    query: &Query,
    rollout: usize,
    text: &str,
) -> Error {
    let file = match &cfg.raw.stage3.rewards[k] {
        t1_rewards::RewardSpec::Script { path, .. } => format!(" (script {})", path.display()),
        _ => String::new(),
    };
    let excerpt: String = text.chars().take(160).collect();
    Error::Config {
        location: format!("{} (key 'stage3.rewards[{k}]')", cfg.source.display()),
        message: format!(
            "reward '{name}'{file} returned {value} for rollout {rollout} of query '{}' \
             (reasoning: {excerpt:?}); rewards must be finite numbers within f32 range — return \
             () to abstain instead",
            query.id
        ),
    }
}
