//! Update: cut the step's rollouts into micro-batches (`train::micro`, the one place their
//! losses are scaled), take the frozen reference's log-probs once, then one policy pass per
//! μ iteration: every micro-batch's forward, `loss::grpo` (plus the optional auxiliary InfoNCE)
//! and backward, accumulated for the trainer's optimizer step.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::log::PhaseClock;
use super::score::Scored;
use super::{Grpo, Sampled};
use crate::loss::{GrpoParams, corpus_nce, grpo_loss};
use crate::rollout::{Completions, completions, logprobs};
use crate::train::micro::{MicroBatch, StepPlan, rollout_plan};

/// The step's micro-batches, ready for the μ passes.
pub(super) struct Prepared<B: AutodiffBackend> {
    plan: StepPlan,
    /// Each micro-batch's training tensors.
    parts: Vec<Completions<B>>,
    /// Each micro-batch's reference log-probs (β > 0).
    refs: Vec<Option<Tensor<B, 2>>>,
}

/// What one pass logs: the clip and KL statistics (token-weighted over the micro-batches), the
/// auxiliary InfoNCE (row-weighted) and the pass's time.
pub(super) struct Pass {
    pub kl: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
    pub aux_infonce: Option<f64>,
    pub policy_secs: f64,
}

/// Micro-batches of `train.batch_size` queries' rollouts each, scaled by the loss type, with
/// their tensors and reference log-probs. Data-parallel: the step's micro-batches are cut from
/// every worker's rollouts (`scored.tokens`), and each worker keeps those of its own rollouts.
pub(super) fn prepare<B: AutodiffBackend>(
    g: &Grpo<B>,
    s: &Sampled<B>,
    scored: &Scored,
) -> Prepared<B> {
    let batch = &s.rollouts;
    let mask = g.s3.mask_truncated;
    let per = g.cfg.raw.train.batch_size * batch.group;
    let whole = rollout_plan(&scored.tokens, per, g.s3.loss_type);
    if whole.num_items == 0.0 && mask {
        // nothing to learn from: say so, or a run trains nothing without a word
        crate::metrics::warn(
            &g.tr.bar,
            format!(
                "stage3 step {}: every rollout reached model.max_reasoning_tokens = {} without \
             </think> and stage3.mask_truncated drops them all: this step updates nothing (raise \
             the limit, or set mask_truncated = false)",
                g.tr.state.step + 1,
                g.m.max_reasoning_tokens
            ),
        );
    }
    let own = scored.first..scored.first + batch.len();
    let plan = StepPlan {
        micro: whole
            .micro
            .iter()
            .filter(|mb| own.contains(&mb.rows.start))
            .map(|mb| MicroBatch {
                rows: mb.rows.start - own.start..mb.rows.end - own.start,
                scale: mb.scale,
            })
            .collect(),
        num_items: whole.num_items,
    };
    let parts: Vec<Completions<B>> = plan
        .micro
        .iter()
        .map(|mb| {
            let rows: Vec<usize> = mb.rows.clone().collect();
            completions::<B>(
                &batch.prompts,
                &batch.rollouts,
                &rows,
                g.tr.tok.pad,
                mask,
                &g.device,
            )
        })
        .collect();
    let refs = parts
        .iter()
        .map(|c| {
            g.reference.as_ref().map(|r| {
                let lp = logprobs(r, &c.inner(), g.s3.temperature).0;
                Tensor::from_inner(lp)
            })
        })
        .collect();
    Prepared { plan, parts, refs }
}

/// One μ iteration: every micro-batch's policy forward, loss and backward at its scale.
pub(super) fn policy_pass<B: AutodiffBackend>(
    g: &mut Grpo<B>,
    s: &Sampled<B>,
    scored: &Scored,
    step: &Prepared<B>,
) -> Pass {
    // its own clock: a later update must not count the previous one's step, eval and save
    let mut clock = PhaseClock::<B>::start(&g.device);
    let s3 = g.s3.clone();
    // the whole step's rollouts (every worker's)
    let n = scored.tokens.len();
    let total_tokens = step.plan.num_items;
    let params = GrpoParams {
        epsilon_low: s3.epsilon,
        epsilon_high: s3.epsilon_high.unwrap_or(s3.epsilon),
        beta: s3.beta,
        kl: s3.kl_estimator,
        loss_type: s3.loss_type,
        max_completion_length: g.m.max_reasoning_tokens,
        num_items: total_tokens,
    };
    let aux_on = s3.aux_infonce_weight > 0.0;
    let mut pass = Pass {
        kl: 0.0,
        clip_low: 0.0,
        clip_high: 0.0,
        clip_region: 0.0,
        aux_infonce: aux_on.then_some(0.0),
        policy_secs: 0.0,
    };
    for ((mb, c), rf) in step.plan.micro.iter().zip(&step.parts).zip(&step.refs) {
        let a: Vec<f32> = mb.rows.clone().map(|i| scored.adv.values[i]).collect();
        let a = Tensor::<B, 1>::from_data(TensorData::new(a, [mb.rows.len()]), &g.device);
        let (lp, emb) = logprobs(&g.tr.model, c, s3.temperature);
        let old = if s3.iterations == 1 {
            lp.clone().detach()
        } else {
            c.sampled.clone()
        };
        let out = grpo_loss(lp, old, rf.clone(), a, c.mask.clone(), &params);
        // the auxiliary InfoNCE is a mean over the micro-batch's rollouts whatever the loss
        // type: weighted by its share of rows
        let extra = aux_on.then(|| {
            let share = mb.rows.len() as f64 / n as f64;
            let aux = aux_infonce(g, s, mb.rows.clone(), c, emb);
            *pass.aux_infonce.as_mut().expect("aux on") +=
                share * aux.clone().into_scalar().elem::<f64>();
            aux.mul_scalar(s3.aux_infonce_weight * share)
        });
        let w = c.tokens / total_tokens.max(1.0);
        pass.kl += out.kl * w;
        pass.clip_low += out.clip_low * w;
        pass.clip_high += out.clip_high * w;
        pass.clip_region += out.clip_region * w;
        g.tr.backward(mb, out.loss, extra);
    }
    pass.policy_secs = clock.lap();
    g.tr.tokens += step.parts.iter().map(|c| c.tokens).sum::<f64>() as usize;
    pass
}

/// `loss::corpus_nce` of each live rollout's own `<emb_token>` state (`emb`, with gradient)
/// against the whole index, its query's relevant documents (not excluded) as positives.
fn aux_infonce<B: AutodiffBackend>(
    g: &Grpo<B>,
    s: &Sampled<B>,
    rows: std::ops::Range<usize>,
    c: &Completions<B>,
    emb: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let (mut pairs, mut ignore) = (Vec::new(), Vec::new());
    for (r, i) in rows.enumerate() {
        if !c.live[r] {
            continue;
        }
        let target = s.target(g, i);
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
    corpus_nce(
        emb,
        Tensor::from_inner(g.index.vectors.clone()),
        &pairs,
        &ignore,
        g.s3.aux_infonce_temperature.unwrap_or(0.05),
    )
}
