//! Regenerates the embedded default dataset and its tokenizer (deterministic).
//!
//! `cargo run --bin make-default-data` writes `curricula/default/data/` (BEIR layout + reasoning)
//! and `curricula/default/tokenizer.json`. See `src/data/datagen.rs` for what the data tests.

use std::path::PathBuf;

use clap::Parser;
use t1_train::data::datagen::{WorldSize, generate, train_tokenizer};

#[derive(Parser)]
#[command(about = "Regenerate the embedded default dataset and tokenizer (deterministic)")]
struct Args {
    /// Output folder of the curriculum (data goes to OUT/data, the tokenizer to OUT/tokenizer.json).
    #[arg(long, default_value = "curricula/default")]
    out: PathBuf,
    /// Seed of the world.
    #[arg(long, default_value_t = t1_train::data::datagen::DEFAULT_SEED)]
    seed: u64,
    /// Tokenizer vocabulary size (special tokens included).
    #[arg(long, default_value_t = t1_train::data::datagen::DEFAULT_VOCAB)]
    vocab: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let generated = generate(args.seed, &WorldSize::default());
    generated.write(&args.out.join("data"))?;
    let tok = train_tokenizer(&generated.texts(), args.vocab)?;
    std::fs::write(args.out.join("tokenizer.json"), tok)?;
    println!(
        "wrote {}/data and {}/tokenizer.json",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
