//! Rewards for t1-train's GRPO stage: pure functions over plain data — no tensors, no I/O.
//!
//! A reward sees one rollout's [`RolloutOutcome`] (where its query vector ranked the gold
//! documents, the top-k list, its text and length) and returns `Some(value)`, or `None` to
//! abstain for that rollout (as TRL: an abstaining reward is left out of that rollout's weighted sum).
//! Built-in rewards and script rewards arrive with the GRPO stage; this crate fixes the types
//! they share so the trainer and the rewards agree on one contract.

pub mod types;

pub use types::{Reward, RolloutOutcome, ScoredDoc};
