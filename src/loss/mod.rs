//! Losses: pure tensor functions with documented shapes. Nothing here reads files or logs; the
//! stage loops in `train/` call them and log what they return.

pub mod contrastive;
pub mod grpo;
pub mod latent;
pub mod sft;

pub use contrastive::{InfoNce, corpus_nce, info_nce};
pub use grpo::{GrpoOut, GrpoParams, KlEstimator, LossType, grpo_loss};
pub use sft::{Sft, sft_loss};
