//! Score a step's rollouts: rank each rollout's vector against the index, judge it with every
//! configured reward, turn the group's rewards into advantages, and compute the batch's logged
//! statistics once (the μ updates of the batch all log them).
//!
//! Each sampled query is also embedded bare (the query then `</think><emb_token>`, eval's `bare`
//! view) by the same policy and ranked against the same index: one forward of the prompts,
//! no decoding. Every rollout's outcome carries those ranks (`RolloutOutcome::bare_gold`, for the
//! `beats_bare` reward and scripts), and the step logs how often the reasoning beat it.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use t1_rewards::{RolloutOutcome, combine};

use super::{Grpo, Sampled};
use crate::advantage::{Advantages, group_advantages};
use crate::config::Config;
use crate::data::Query;
use crate::error::{Error, Result};
use crate::index::{embed_last, rank_gold};
use crate::rollout::{is_live, loss_tokens};

/// A scored batch.
pub(super) struct Scored {
    /// Each rollout's weighted reward (`None`: every reward abstained) `[B·G]`.
    pub combined: Vec<Option<f32>>,
    pub adv: Advantages,
    /// The batch's statistics, as logged: `(name, value)` under `stage3/` (data-parallel: the
    /// whole batch's, the same on every worker).
    pub stats: Vec<(String, f64)>,
    /// Every rollout's loss-bearing completion tokens, every worker's in rank order: the step's
    /// micro-batches are cut from all of them (`update::prepare`).
    pub tokens: Vec<f64>,
    /// This worker's first rollout among them.
    pub first: usize,
    /// This worker's rollouts' best gold rank and their query's bare one (for `rollouts.jsonl`).
    pub ranks: Vec<(Option<usize>, Option<usize>)>,
}

/// The per-rollout figures the workers share (the statistics and the cut of the step come from
/// every worker's rollouts): one row each, these columns then a (value, present) pair per reward.
const COMBINED: usize = 0; // value, present
const BEST_RANK: usize = 2; // value, present
const LEN: usize = 4;
const TRUNCATED: usize = 5;
const FORMAT_OK: usize = 6;
const ENTROPY: usize = 7; // sum over the loss-bearing tokens, their count
const LOSS_TOKENS: usize = 9;
const BARE_RANK: usize = 10; // value, present
const REWARDS: usize = 12;

fn opt(v: Option<f64>) -> [f64; 2] {
    match v {
        Some(x) => [x, 1.0],
        None => [0.0, 0.0],
    }
}

fn get(row: &[f64], col: usize) -> Option<f64> {
    (row[col + 1] > 0.0).then_some(row[col])
}

pub(super) fn score<B: AutodiffBackend>(g: &Grpo<B>, s: &Sampled<B>) -> Result<Scored> {
    let batch = &s.rollouts;
    let n = batch.len();
    let scores = g.index.scores(batch.embeddings.clone())?;
    // the bare query's ranks of its gold documents, once per query
    let bare: Vec<_> = bare_scores(g, s)?
        .iter()
        .zip(&s.picked)
        .map(|(row, &t)| {
            let t = &g.targets[t];
            rank_gold(row, &g.ds.corpus.ids, &t.gold, &t.excluded, 0).0
        })
        .collect();
    let mask = g.s3.mask_truncated;
    let width = REWARDS + 2 * g.rewards.len();
    let mut rows: Vec<f64> = Vec::with_capacity(n * width);
    let mut combined = Vec::with_capacity(n);
    let mut ranks = Vec::with_capacity(n);
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
        let bare_gold = bare[batch.query_of(i)].clone();
        let bare_rank = bare_gold.iter().map(|(d, _)| d.rank).min();
        let outcome = RolloutOutcome {
            gold,
            top_k,
            num_docs,
            text: batch.texts[i].clone(),
            num_tokens: ro.tokens.len(),
            truncated: ro.truncated(),
            format_ok: batch.format_ok[i],
            bare_gold: Some(bare_gold),
        };
        let best_rank = outcome.best_gold_rank();
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
        let c = combine(&values, &g.weights);
        combined.push(c);
        let live = is_live(ro, mask);
        let entropy: f64 = ro.entropies.iter().map(|&h| h as f64).sum();
        rows.extend(opt(c.map(f64::from)));
        rows.extend(opt(best_rank.map(|r| r as f64)));
        rows.extend([
            ro.tokens.len() as f64,
            ro.truncated() as u8 as f64,
            batch.format_ok[i] as u8 as f64,
            if live { entropy } else { 0.0 },
            if live { ro.entropies.len() as f64 } else { 0.0 },
            loss_tokens(ro, mask) as f64,
        ]);
        rows.extend(opt(bare_rank.map(|r| r as f64)));
        ranks.push((best_rank, bare_rank));
        for v in &values {
            rows.extend(opt(v.map(f64::from)));
        }
    }
    // data-parallel: the advantages (batch-scaled rewards), the statistics and the step's cut
    // come from every worker's rollouts
    let all = shared_rows::<B::InnerBackend>(&rows, &g.device)?;
    let first = crate::dist::world().block(n).start;
    let all: Vec<&[f64]> = all.chunks(width).collect();
    let every: Vec<Option<f32>> = all
        .iter()
        .map(|r| get(r, COMBINED).map(|v| v as f32))
        .collect();
    let whole = group_advantages(&every, batch.group, g.s3.scale_rewards);
    if let Some(i) = whole.values[first..first + n]
        .iter()
        .position(|a| !a.is_finite())
    {
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
    let best_ranks: Vec<f64> = all.iter().filter_map(|r| get(r, BEST_RANK)).collect();
    let mut stats = reward_stats(&every, &whole, &best_ranks);
    stats.extend(bare_stats(&all));
    stats.extend(rollout_stats(&all));
    for (k, r) in g.rewards.iter().enumerate() {
        let v: Vec<f64> = all
            .iter()
            .filter_map(|row| get(row, REWARDS + 2 * k))
            .collect();
        stats.push((
            format!("reward/{}", r.name()),
            v.iter().sum::<f64>() / v.len().max(1) as f64,
        ));
    }
    let adv = Advantages {
        values: whole.values[first..first + n].to_vec(),
        frac_zero_std: whole.frac_zero_std,
    };
    Ok(Scored {
        combined,
        adv,
        stats,
        tokens: all.iter().map(|r| r[LOSS_TOKENS]).collect(),
        first,
        ranks,
    })
}

/// Scores against the index of this worker's sampled queries embedded bare (the query, then
/// `</think><emb_token>`: eval's `bare` view) by the policy that sampled the rollouts: `[queries][N]`.
fn bare_scores<B: AutodiffBackend>(g: &Grpo<B>, s: &Sampled<B>) -> Result<Vec<Vec<f32>>> {
    let tok = &g.tr.tok;
    let seqs = s
        .picked
        .iter()
        .map(|&t| {
            let q = &g.targets[t].query;
            tok.query_with_reasoning(&q.text, "", g.m.max_query_tokens, 0)
                .map(|(ids, _)| ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let model = g.tr.model.valid();
    let vectors = embed_last(
        &model,
        &seqs,
        g.cfg.raw.train.eval_batch_size,
        tok.pad,
        |_| {},
    );
    g.index.scores(vectors)
}

/// The bare query's best gold rank (mean, hit@10) over the rollouts, and the fraction of
/// rollouts whose best gold rank is strictly better than their query's bare one
/// (`beats_bare_frac`; ties count as not beating it).
fn bare_stats(rows: &[&[f64]]) -> Vec<(String, f64)> {
    let both: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((get(r, BEST_RANK)?, get(r, BARE_RANK)?)))
        .collect();
    let n = both.len().max(1) as f64;
    vec![
        (
            "bare_gold_rank_mean".into(),
            both.iter().map(|(_, b)| b).sum::<f64>() / n,
        ),
        (
            "bare_hit@10".into(),
            both.iter().filter(|(_, b)| *b <= 10.0).count() as f64 / n,
        ),
        (
            "beats_bare_frac".into(),
            both.iter().filter(|(own, b)| own < b).count() as f64 / n,
        ),
    ]
}

/// Every worker's `rows` in rank order (each holds as many); one process: `rows` itself.
fn shared_rows<D: burn::tensor::backend::Backend>(
    rows: &[f64],
    device: &D::Device,
) -> Result<Vec<f64>> {
    let world = crate::dist::world();
    if !world.is_distributed() {
        return Ok(rows.to_vec());
    }
    let mine: Vec<f32> = rows.iter().map(|&v| v as f32).collect();
    let all = world.all_gather::<D>("the rollouts' rewards and figures", &mine, device)?;
    Ok(all.into_iter().map(f64::from).collect())
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
/// distribution over the completion tokens that get a loss (`rows`: the shared figures).
fn rollout_stats(rows: &[&[f64]]) -> Vec<(String, f64)> {
    let n = rows.len().max(1) as f64;
    let col = |c: usize| rows.iter().map(move |r| r[c]);
    let entropy = col(ENTROPY).sum::<f64>() / col(ENTROPY + 1).sum::<f64>().max(1.0);
    vec![
        ("completion_len_mean".into(), col(LEN).sum::<f64>() / n),
        ("completion_len_max".into(), col(LEN).fold(0.0, f64::max)),
        ("truncated_frac".into(), col(TRUNCATED).sum::<f64>() / n),
        ("format_frac".into(), col(FORMAT_OK).sum::<f64>() / n),
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
