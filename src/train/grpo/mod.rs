//! Stage 3 — GRPO with retrieval-rank rewards (`t1-train stage3 --config FILE`), read top to
//! bottom in [`run`]:
//!
//! 1. **sample** ([`Grpo::sample`]): `train.batch_size × train.grad_accum` training queries ×
//!    `stage3.group_size` rollouts from the current policy (`rollout::sample`;
//!    temperature/top-p/top-k), each rollout's query vector read at `<emb_token>` in the same
//!    decode loop;
//! 2. **score** ([`score`]): cosine against the document index (built from the starting model;
//!    rebuilt every `stage3.refresh_every` steps, or frozen), gold ranks and top-k in trec_eval
//!    order with the query's `excluded_ids` removed (`index::rank_gold`); each configured reward
//!    (`t1_rewards`; each rollout's outcome also carries the gold ranks of its query's bare
//!    vector, for `beats_bare`), weighted sum with abstentions left out; group-relative advantages
//!    (`advantage::group_advantages`, TRL's `scale_rewards`); the batch's logged statistics, once;
//! 3. **update** ([`update`]): the step's micro-batches (`train.batch_size` queries' rollouts
//!    each, scaled by `train::micro`), their reference log-probs when β > 0, then `stage3.iterations`
//!    (μ) optimizer steps over the same rollouts: completion-token log-probs under the policy at
//!    the sampling temperature (logits / T, as TRL), the clipped objective of `loss::grpo` with
//!    β·KL to the frozen starting model, truncated rollouts masked when `mask_truncated`. With
//!    μ = 1 the old policy is the policy itself (ratio ≡ 1, TRL); with μ > 1 it is the
//!    sampling-time log-probs the decode loop returned;
//! 4. **log** ([`log`]): the scalars below, every `train.eval_every` steps dense dev retrieval
//!    with greedy reasoning (`stage3/dev/ndcg@10`, best model kept) and a few rollouts to
//!    `rollouts.jsonl` and TensorBoard text; checkpoints every `train.save_every`.
//!
//! Data-parallel (`--workers`): each worker samples its block of the step's queries and scores
//! its rollouts; their rewards and figures are shared (`score`), so advantages, the step's cut and
//! the statistics are the whole batch's, and each worker runs the micro-batches of its own rows.
//!
//! Deviations from TRL: the micro-batches' losses are scaled so that the step's
//! gradient equals the unsplit batch's (`train::micro`); `entropy` is that of the sampling
//! distribution over the completion tokens (computed in the decode loop — the same policy TRL's
//! training forward sees at μ = 1 — rather than from a second full-vocabulary pass).
//!
//! Optional: `stage3.aux_infonce_weight` > 0 adds `loss::corpus_nce` of each live rollout's own
//! `<emb_token>` state (read from the same forward as the log-probs, with gradient) against the
//! document index, its relevant documents as positives.
//!
//! Logs `stage3/{reward, reward_std, reward/<name>, frac_reward_zero_std, gold_rank_mean,
//! gold_rank_median, hit@10, bare_gold_rank_mean, bare_hit@10, beats_bare_frac (the same
//! policy's bare query vector, ranked against the same index: how often the reasoning beat it),
//! completion_len_mean, completion_len_max, truncated_frac,
//! format_frac, clip_low, clip_high, clip_region, kl, entropy, loss, aux_infonce (when on),
//! rollouts_per_s, lr, grad_norm, tokens_per_s}` and where a step's wall clock went:
//! `stage3/time/{refresh_s, sample_s, rank_reward_s, reference_s, policy_s, optimizer_s}` (index
//! rebuild, decode loop, ranking + rewards + advantages, reference log-probs, policy forward +
//! backward, clip + AdamW); on a step that re-encodes the index, `stage3/index/{docs,
//! docs_per_s}` (the corpus size and the refresh's speed, so refresh cost reads against corpus
//! size).

mod log;
mod score;
mod setup;
mod update;

use std::collections::HashSet;
use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::Rng;
use t1_rewards::Reward;

use crate::config::{Config, ModelSection, QueryView, Stage3Section};
use crate::data::{Dataset, Query};
use crate::error::Result;
use crate::index::DocIndex;
use crate::model::Decoder;
use crate::model::generate::Sampler;
use crate::rollout::{RolloutBatch, RolloutOptions, sample};
use crate::train::common::{Goal, StageSummary, Trainer};

use log::{BatchTimes, PhaseClock};

/// Runs stage 3 to `train.steps` (or resumes it).
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    resume: bool,
    device: &B::Device,
) -> Result<StageSummary> {
    let tr = Trainer::<B>::start(cfg, "stage3", resume, Goal::Maximize, "ndcg@10", device)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let mut g = Grpo::setup(cfg, tr, &ds, device)?;
    while g.tr.running() {
        g.tr.stop_if_interrupted()?;
        let mut clock = PhaseClock::<B>::start(device);
        let refreshed = g.refresh_index()?;
        let refresh = clock.lap();
        let batch = g.sample()?;
        let sample = clock.lap();
        let scored = score::score(&g, &batch)?;
        let rank_reward = clock.lap();
        let step = update::prepare(&g, &batch, &scored);
        let mut times = BatchTimes::new(refresh, sample, rank_reward, clock.lap());
        times.refreshed_docs = refreshed.then(|| g.ds.corpus.len());
        for iteration in 0..g.s3.iterations {
            if !g.tr.running() {
                break;
            }
            let pass = update::policy_pass(&mut g, &batch, &scored, &step);
            let (whole, shares) = log::scalars(&batch, &scored, &pass, &times, iteration);
            g.tr.step_parts(&log::pairs(&whole), &log::pairs(&shares))?;
            log::after_step(&mut g, &batch, &scored)?;
        }
    }
    g.tr.finish(g.last_dev)
}

/// A training query with its judged documents (indices into the corpus).
struct Target<'a> {
    query: &'a Query,
    gold: Vec<(usize, i32)>,
    excluded: HashSet<usize>,
}

/// The step's sampled queries (indices into the targets, one per group) and their rollouts.
struct Sampled<B: AutodiffBackend> {
    picked: Vec<usize>,
    rollouts: RolloutBatch<B::InnerBackend>,
}

/// What stage 3 keeps across steps.
struct Grpo<'a, B: AutodiffBackend> {
    cfg: &'a Config,
    ds: &'a Dataset,
    s3: Stage3Section,
    m: ModelSection,
    tr: Trainer<B>,
    device: B::Device,
    targets: Vec<Target<'a>>,
    rewards: Vec<Box<dyn Reward>>,
    weights: Vec<f32>,
    sampler: Sampler,
    /// The frozen starting model the KL is taken to (β > 0).
    reference: Option<Decoder<B::InnerBackend>>,
    index: DocIndex<B::InnerBackend>,
    /// The step the index was built at.
    built_at: u64,
    rollouts_path: PathBuf,
    last_dev: Vec<(String, f64)>,
}

impl<B: AutodiffBackend> Grpo<'_, B> {
    /// Re-encodes the corpus with the current policy every `stage3.refresh_every` steps; whether
    /// it did.
    fn refresh_index(&mut self) -> Result<bool> {
        let every = self.s3.refresh_every;
        let step = self.tr.state.step;
        if every > 0 && step % every == 0 && step != self.built_at {
            self.index = setup::encode(self.cfg, self.ds, &self.tr, &self.tr.model.valid())?;
            self.built_at = step;
            self.keep_index_in_checkpoints()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A re-encoded index goes into every checkpoint taken before the next re-encoding (a
    /// resume between two refreshes ranks against it rather than re-encoding with the
    /// resumed model, which an uninterrupted run would not have done): `refreshed-index.safetensors`.
    fn keep_index_in_checkpoints(&mut self) -> Result<()> {
        if self.s3.refresh_every == 0 {
            return Ok(());
        }
        let vectors = self.index.vectors.clone();
        let truncated = self.index.truncated;
        let ids = self.ds.corpus.ids.clone();
        let meta = setup::checkpoint_index_meta(self.cfg, self.ds, self.built_at)?;
        let every = self.s3.refresh_every;
        self.tr.stage_files = Some(Box::new(move |dir: &std::path::Path, step: u64| {
            if step % every == 0 {
                return Ok(()); // a resume at a re-encoding step re-encodes, as the run does there
            }
            let index = DocIndex {
                vectors: vectors.clone(),
                truncated,
            };
            index.save(&dir.join(setup::CHECKPOINT_INDEX), &ids, meta.clone())?;
            Ok(())
        }));
        Ok(())
    }

    /// The step's queries (`batch_size × grad_accum` of the epoch order) and `G` rollouts each
    /// from the current policy, every row on its own stream of a fresh seed from the run's RNG.
    fn sample(&mut self) -> Result<Sampled<B>> {
        let t = &self.cfg.raw.train;
        // data-parallel: every worker draws the whole step's queries and samples its block's
        let world = crate::dist::world();
        let per = t.batch_size.saturating_mul(t.grad_accum.max(1));
        let all = self
            .tr
            .next_examples(self.targets.len(), per.saturating_mul(world.size));
        let own = world.block(per);
        let picked = all[own.clone()].to_vec();
        let queries: Vec<&Query> = picked.iter().map(|&i| self.targets[i].query).collect();
        let opts = RolloutOptions {
            group: self.s3.group_size,
            sampler: self.sampler.clone(),
            max_query_tokens: self.m.max_query_tokens,
            max_new_tokens: self.m.max_reasoning_tokens,
            seed: self.tr.rng.random::<u64>(),
            // a rollout draws from the stream of its row in the whole step
            first_stream: (own.start * self.s3.group_size) as u64,
            repetition_penalty: self.m.repetition_penalty,
        };
        let rollouts = sample(&self.tr.model.valid(), &self.tr.tok, &queries, &opts)?;
        Ok(Sampled { picked, rollouts })
    }
}

impl<B: AutodiffBackend> Sampled<B> {
    /// The target rollout `i` answers.
    fn target<'t, 'a>(&self, g: &'t Grpo<'a, B>, i: usize) -> &'t Target<'a> {
        &g.targets[self.picked[self.rollouts.query_of(i)]]
    }
}

/// The dev evaluation's query view: the model's own greedy reasoning.
const DEV_VIEW: QueryView = QueryView::Generated;
