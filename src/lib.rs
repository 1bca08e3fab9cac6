//! t1-train: teach an LLM backbone to reason before it retrieves.
//!
//! Data flows config → data → model → rollout → index → rewards → advantage → loss → optimizer →
//! metrics; `commands` wires them for each CLI subcommand. See `DESIGN.md` (shared) and the README.

pub mod advantage;
pub mod bm25;
pub mod checkpoint;
pub mod checksums;
pub mod commands;
pub mod config;
pub mod curriculum;
pub mod data;
pub mod datagen;
pub mod error;
pub mod eval;
pub mod fsio;
pub mod index;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod rollout;
pub mod run;
pub mod train;

pub use error::{Error, Result};
