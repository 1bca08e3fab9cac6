//! Score a step's rollouts: rank each rollout's vector against the index, judge it with every
//! configured reward, turn the group's rewards into advantages, and compute the batch's logged
//! statistics once (the μ updates of the batch all log them).

use burn::tensor::backend::AutodiffBackend;
use t1_rewards::{RolloutOutcome, combine};

use super::{Grpo, Sampled};
use crate::advantage::{Advantages, group_advantages};
use crate::config::Config;
use crate::data::Query;
use crate::error::{Error, Result};
use crate::index::rank_gold;
use crate::rollout::is_live;

/// A scored batch.
pub(super) struct Scored {
    /// Each rollout's weighted reward (`None`: every reward abstained) `[B·G]`.
    pub combined: Vec<Option<f32>>,
    pub adv: Advantages,
    /// The batch's statistics, as logged: `(name, value)` under `stage3/`.
    pub stats: Vec<(String, f64)>,
}

pub(super) fn score<B: AutodiffBackend>(g: &Grpo<B>, s: &Sampled<B>) -> Result<Scored> {
    let batch = &s.rollouts;
    let n = batch.len();
    let scores = g.index.scores(batch.embeddings.clone())?;
    let mut per_fn: Vec<Vec<Option<f32>>> = vec![Vec::with_capacity(n); g.rewards.len()];
    let mut combined = Vec::with_capacity(n);
    let mut best_ranks = Vec::with_capacity(n);
    for (i, row) in scores.iter().enumerate() {
        let target = s.target(g, i);
        let (gold, top_k, num_docs) = rank_gold(
            row,
            &g.ds.corpus.ids,
            &target.gold,
            &target.excluded,
            g.s3.reward_top_k,
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
        let values = g
            .rewards
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
                g.cfg,
                k,
                g.rewards[k].name(),
                v,
                target.query,
                batch.member_of(i),
                &batch.texts[i],
            ));
        }
        for (k, v) in values.iter().enumerate() {
            per_fn[k].push(*v);
        }
        combined.push(combine(&values, &g.weights));
    }
    let adv = group_advantages(&combined, batch.group, g.s3.scale_rewards);
    if let Some(i) = adv.values.iter().position(|a| !a.is_finite()) {
        return Err(Error::Config {
            location: format!("{} (key 'stage3.rewards')", g.cfg.source.display()),
            message: format!(
                "the advantages of query '{}' are not finite (its group's rewards {:?} overflow \
                 f32 arithmetic); keep rewards within a sane range, e.g. |r| ≤ 1e6",
                s.target(g, i).query.id,
                &combined[batch.group_rows(batch.query_of(i))]
            ),
        });
    }
    let mut stats = reward_stats(&combined, &adv, &best_ranks);
    stats.extend(rollout_stats(s, g.s3.mask_truncated));
    for (r, vals) in g.rewards.iter().zip(&per_fn) {
        let v: Vec<f64> = vals.iter().flatten().map(|&x| x as f64).collect();
        stats.push((
            format!("reward/{}", r.name()),
            v.iter().sum::<f64>() / v.len().max(1) as f64,
        ));
    }
    Ok(Scored {
        combined,
        adv,
        stats,
    })
}

/// Reward mean and (Bessel) std over the scored rollouts, the zero-std fraction, and the best
/// gold rank's mean, median and hit@10.
fn reward_stats(
    combined: &[Option<f32>],
    adv: &Advantages,
    best_ranks: &[f64],
) -> Vec<(String, f64)> {
    let scored: Vec<f64> = combined.iter().flatten().map(|&v| v as f64).collect();
    let mean = scored.iter().sum::<f64>() / scored.len().max(1) as f64;
    let std = if scored.len() > 1 {
        (scored.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (scored.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    let ranked = best_ranks.len().max(1) as f64;
    vec![
        ("reward".into(), mean),
        ("reward_std".into(), std),
        ("frac_reward_zero_std".into(), adv.frac_zero_std),
        (
            "gold_rank_mean".into(),
            best_ranks.iter().sum::<f64>() / ranked,
        ),
        ("gold_rank_median".into(), median(best_ranks.to_vec())),
        (
            "hit@10".into(),
            best_ranks.iter().filter(|&&r| r <= 10.0).count() as f64 / ranked,
        ),
    ]
}

/// Completion lengths, truncation and format rates, and the mean entropy of the sampling
/// distribution over the completion tokens that get a loss.
fn rollout_stats<B: AutodiffBackend>(s: &Sampled<B>, mask_truncated: bool) -> Vec<(String, f64)> {
    let batch = &s.rollouts;
    let n = batch.len() as f64;
    let lens: Vec<f64> = batch
        .rollouts
        .iter()
        .map(|r| r.tokens.len() as f64)
        .collect();
    let live_entropies: Vec<f32> = batch
        .rollouts
        .iter()
        .filter(|r| is_live(r, mask_truncated))
        .flat_map(|r| r.entropies.iter().copied())
        .collect();
    let entropy =
        live_entropies.iter().map(|&h| h as f64).sum::<f64>() / live_entropies.len().max(1) as f64;
    vec![
        ("completion_len_mean".into(), lens.iter().sum::<f64>() / n),
        (
            "completion_len_max".into(),
            lens.iter().cloned().fold(0.0, f64::max),
        ),
        (
            "truncated_frac".into(),
            batch.rollouts.iter().filter(|r| r.truncated()).count() as f64 / n,
        ),
        (
            "format_frac".into(),
            batch.format_ok.iter().filter(|&&f| f).count() as f64 / n,
        ),
        ("entropy".into(), entropy),
    ]
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
