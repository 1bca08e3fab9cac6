//! Rewards as configured in TOML (`[[stage3.rewards]]`): a closed set selected by `name`, each
//! with its own parameters and a `weight`. An unknown name or parameter fails at config load,
//! listing what exists (serde internally tagged enum + `deny_unknown_fields`).
//!
//! ```toml
//! [[stage3.rewards]]
//! name = "ndcg"
//! k = 10
//! weight = 1.0
//!
//! [[stage3.rewards]]
//! name = "script"
//! path = "../rewards/scripts/top3_bonus.rhai"
//! weight = 0.5
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builtin::{
    beats_bare::BeatsBare, format::Format, hit::Hit, length_penalty::LengthPenalty, ndcg::Ndcg,
    rank_margin::RankMargin, recall::Recall, reciprocal_rank::ReciprocalRank,
};
use crate::script::{DEFAULT_MAX_OPERATIONS, ScriptReward};
use crate::types::{Reward, RewardError};

fn one() -> f32 {
    1.0
}
fn ten() -> usize {
    10
}
fn max_ops() -> u64 {
    DEFAULT_MAX_OPERATIONS
}

/// One configured reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardSpec {
    /// 1 / rank of the best gold document.
    ReciprocalRank {
        #[serde(default = "one")]
        weight: f32,
    },
    /// nDCG@k (trec_eval gains). Default k 10.
    Ndcg {
        #[serde(default = "ten")]
        k: usize,
        #[serde(default = "one")]
        weight: f32,
    },
    /// Recall@k. Default k 10.
    Recall {
        #[serde(default = "ten")]
        k: usize,
        #[serde(default = "one")]
        weight: f32,
    },
    /// 1 if a gold document is within the top k. Default k 10.
    Hit {
        #[serde(default = "ten")]
        k: usize,
        #[serde(default = "one")]
        weight: f32,
    },
    /// Best gold score minus best non-gold score in the top k.
    RankMargin {
        #[serde(default = "one")]
        weight: f32,
    },
    /// 1 when the rollout closed `</think>` itself.
    Format {
        #[serde(default = "one")]
        weight: f32,
    },
    /// −tokens / max_tokens, −1 when truncated.
    LengthPenalty {
        max_tokens: usize,
        #[serde(default = "one")]
        weight: f32,
    },
    /// 1 when the rollout's reasoning ranks the gold documents better than the same model's bare
    /// query at this step (`metric(rollout) > metric(bare) + margin`), else 0. `metric`: one of
    /// `ndcg`, `reciprocal_rank`, `recall`, `hit` (with `k`). Defaults ndcg, k 10, margin 0.
    BeatsBare {
        #[serde(default)]
        metric: BareMetric,
        #[serde(default = "ten")]
        k: usize,
        #[serde(default)]
        margin: f32,
        #[serde(default = "one")]
        weight: f32,
    },
    /// A Rhai script defining `fn reward(o)`; `path` relative to the config file.
    Script {
        path: PathBuf,
        #[serde(default = "one")]
        weight: f32,
        /// Cap on script operations per rollout. Default 100000.
        #[serde(default = "max_ops")]
        max_operations: u64,
    },
}

/// The rank metric `beats_bare` compares the rollout and the bare query by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BareMetric {
    #[default]
    Ndcg,
    ReciprocalRank,
    Recall,
    Hit,
}

/// Every reward name, for error messages.
pub const NAMES: [&str; 9] = [
    "reciprocal_rank",
    "ndcg",
    "recall",
    "hit",
    "rank_margin",
    "format",
    "length_penalty",
    "beats_bare",
    "script",
];

impl RewardSpec {
    pub fn weight(&self) -> f32 {
        match self {
            RewardSpec::ReciprocalRank { weight }
            | RewardSpec::Ndcg { weight, .. }
            | RewardSpec::Recall { weight, .. }
            | RewardSpec::Hit { weight, .. }
            | RewardSpec::RankMargin { weight }
            | RewardSpec::Format { weight }
            | RewardSpec::LengthPenalty { weight, .. }
            | RewardSpec::BeatsBare { weight, .. }
            | RewardSpec::Script { weight, .. } => *weight,
        }
    }

    /// Resolves a script path against `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        if let RewardSpec::Script { path, .. } = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }

    /// Checks parameters and builds the reward (scripts are compiled here).
    pub fn build(&self) -> Result<Box<dyn Reward>, RewardError> {
        let positive = |what: &str, v: usize| {
            if v == 0 {
                Err(RewardError(format!("{what} must be at least 1")))
            } else {
                Ok(())
            }
        };
        if !self.weight().is_finite() {
            return Err(RewardError(format!(
                "weight must be finite, got {}",
                self.weight()
            )));
        }
        Ok(match self {
            RewardSpec::ReciprocalRank { .. } => Box::new(ReciprocalRank),
            RewardSpec::Ndcg { k, .. } => {
                positive("ndcg: k", *k)?;
                Box::new(Ndcg { k: *k })
            }
            RewardSpec::Recall { k, .. } => {
                positive("recall: k", *k)?;
                Box::new(Recall { k: *k })
            }
            RewardSpec::Hit { k, .. } => {
                positive("hit: k", *k)?;
                Box::new(Hit { k: *k })
            }
            RewardSpec::RankMargin { .. } => Box::new(RankMargin),
            RewardSpec::Format { .. } => Box::new(Format),
            RewardSpec::LengthPenalty { max_tokens, .. } => {
                positive("length_penalty: max_tokens", *max_tokens)?;
                Box::new(LengthPenalty {
                    max_tokens: *max_tokens,
                })
            }
            RewardSpec::BeatsBare {
                metric, k, margin, ..
            } => {
                if !margin.is_finite() {
                    return Err(RewardError(format!(
                        "beats_bare: margin must be finite, got {margin}"
                    )));
                }
                // the metric is the built-in rank reward of that name, built (and checked) as one
                let metric = match metric {
                    BareMetric::Ndcg => RewardSpec::Ndcg { k: *k, weight: 1.0 },
                    BareMetric::Recall => RewardSpec::Recall { k: *k, weight: 1.0 },
                    BareMetric::Hit => RewardSpec::Hit { k: *k, weight: 1.0 },
                    BareMetric::ReciprocalRank => RewardSpec::ReciprocalRank { weight: 1.0 },
                }
                .build()
                .map_err(|e| RewardError(format!("beats_bare: {e}")))?;
                Box::new(BeatsBare {
                    metric,
                    margin: *margin,
                })
            }
            RewardSpec::Script {
                path,
                max_operations,
                ..
            } => Box::new(ScriptReward::load(path, *max_operations)?),
        })
    }
}

/// The weighted sum of one rollout's rewards with abstentions left out (TRL's `nansum(r · w)`),
/// or `None` when every reward abstained: the rollout is unscorable, leaves the group baseline
/// and gets advantage 0 (TRL 1.16 `_generate_and_score_completions`).
pub fn combine(values: &[Option<f32>], weights: &[f32]) -> Option<f32> {
    let mut any = false;
    let sum = values
        .iter()
        .zip(weights)
        .filter_map(|(v, w)| v.map(|v| v * w))
        .inspect(|_| any = true)
        .sum();
    any.then_some(sum)
}
