//! Rewards for t1-train's GRPO stage: pure functions over plain data — no tensors, no I/O.
//!
//! A reward sees one rollout's [`RolloutOutcome`] (where its query vector ranked the gold
//! documents, the top-k list, its text and length) and returns `Some(value)`, or `None` to
//! abstain for that rollout (as TRL: an abstaining reward is left out of that rollout's weighted sum).
//! Built-ins live one per file in [`builtin`]; [`script`] runs sandboxed Rhai rewards; [`spec`]
//! is the TOML side (`[[stage3.rewards]]`) and the weighted combination.

pub mod builtin;
pub mod script;
pub mod spec;
pub mod types;

pub use spec::{BareMetric, NAMES, RewardSpec, combine};
pub use types::{Reward, RewardError, RolloutOutcome, ScoredDoc};
