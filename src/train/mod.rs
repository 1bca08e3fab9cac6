//! Training loops: one file per stage, plus the pieces they share (optimizer, checkpoints).

pub mod common;
pub mod grpo;
pub mod latent;
pub mod micro;
pub mod optim;
pub mod plan;
pub mod stage1;
pub mod stage2;
