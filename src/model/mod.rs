//! The backbone: decoder (config, attention, MLP, RoPE, norm), HF weight I/O, tokenizer views,
//! generation. Generic over `B: Backend`; the concrete backend is named only in `main.rs`.

pub mod attention;
pub mod config;
pub mod decoder;
pub mod fused;
pub mod generate;
pub mod head;
pub mod kernels;
pub mod latent;
pub mod linear;
pub mod memory;
pub mod tokenizer;
pub mod weights;

pub use config::{DecoderConfig, Family, RopeScaling};
pub use decoder::{Decoder, KvCache};
pub use generate::{Embed, GenerateOptions, Rollout, Sampler, StopReason, generate};
pub use tokenizer::T1Tokenizer;
pub use weights::{load_hf, save_hf};
