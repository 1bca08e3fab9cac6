//! Data: BEIR-layout loading with reasoning (DESIGN §5) and the dataset summary that
//! `t1-train data DIR` prints. Tokenised views live with the model.

mod beir;
pub mod datagen;
mod summary;

pub use beir::{Corpus, Dataset, Qrels, Query, load_corpus, load_qrels, load_queries};
pub use summary::{LengthStats, Summary};
