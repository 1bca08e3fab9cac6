//! t1-train: teach an LLM backbone to reason before it retrieves.
//!
//! Data flows config → data → model → rollout → index → rewards → advantage → loss → train →
//! eval/metrics; `commands` wires them for each CLI subcommand. See `DESIGN.md` (shared) and the README.

// In pipeline order, lowest layer first (scripts/import_layers.py checks that no module imports
// one listed after its layer; README "Layout").

// the ground floor: errors, atomic writes, checksums, metric sinks, the workers of a run
pub mod checksums;
pub mod dist;
pub mod error;
pub mod fsio;
pub mod metrics;

pub mod config;

pub mod data;

pub mod model;

pub mod rollout;

pub mod index;

pub mod advantage;

pub mod loss;

// what training reports through
pub mod eval;
pub mod run;

pub mod train;

// the CLI's wiring
pub mod commands;

pub use error::{Error, Result};
