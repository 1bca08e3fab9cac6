//! The backbone: decoder (config, attention, MLP, RoPE, norm), HF weight I/O, tokenizer views,
//! generation. Generic over `B: Backend`; the concrete backend is named only in `main.rs`.
//!
//! Every op the decoder runs is in [`ops`] (burn's generic tensor ops, what GPU backends run);
//! the CPU backend's own kernels sit behind one seam in [`cpu`] (`T1_KERNELS=generic` turns them
//! off).

pub mod config;
pub mod cpu;
pub mod decoder;
pub mod generate;
pub mod latent;
pub mod load;
pub mod lora;
pub mod memory;
mod ops;
pub mod peft;
pub mod recompute;
pub mod tokenizer;
pub mod weights;

pub use config::{DecoderConfig, Family, RopeScaling};
pub use decoder::{Decoder, KvCache};
pub use generate::{
    Embed, GenerateOptions, Rollout, Sampler, StopReason, generate, sampling_bytes_read,
};
pub use lora::{Lora, LoraSpec, Target, TokenRows};
pub use peft::{is_adapter_dir, load_model};
pub use peft::{load_peft, save_peft};
pub use tokenizer::T1Tokenizer;
pub use weights::{load_hf, save_hf};
