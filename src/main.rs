//! The `t1-train` command line. Exit codes: 0 ok, 2 bad usage/config/data, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use t1_train::config::{Config, QueryView};
use t1_train::model::Sampler;
use t1_train::train::StageKind;
use t1_train::{Error, commands};

/// The compute backend: CPU (flex) by default, CUDA with `--features cuda`, wgpu (Vulkan/Metal/
/// DX12) with `--features wgpu` (CUDA wins when both are on).
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
type Compute = burn::backend::Flex;
#[cfg(feature = "cuda")]
type Compute = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type Compute = burn::backend::Wgpu;
/// The compute backend with autodiff, for the training stages.
type Train = burn::backend::Autodiff<Compute>;

/// `t1-train stage1|stage2|stage3|latent`: runs the stage and prints where it ended. With
/// `--workers` / `--nodes` this process launches the workers (itself again, once per local
/// device) and watches them; a worker (`T1_RANK` set) joins the others and runs its share.
fn stage(kind: StageKind, a: &StageArgs) -> Result<(), Error> {
    let cfg = Config::load(&a.config, &a.overrides)?;
    let device = Default::default();
    if let Some(join) = t1_train::dist::Join::from_env()? {
        let id = t1_train::train::common::config_hash(&cfg)?;
        let world = t1_train::dist::init::<Compute>(&join, &device, &id)?;
        let s = kind.run::<Train>(&cfg, a.resume, &device)?;
        if world.is_main() {
            report_stage(kind.name(), &s);
        }
        return Ok(());
    }
    let layout = a.dist.layout();
    layout.check()?;
    if layout.world_size() > 1 {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return t1_train::run::launch::run(&layout, &args);
    }
    let s = kind.run::<Train>(&cfg, a.resume, &device)?;
    report_stage(kind.name(), &s);
    Ok(())
}

fn report_stage(stage: &str, s: &t1_train::train::common::StageSummary) {
    let dev: Vec<String> = s
        .last_dev
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    if dev.is_empty() {
        println!("{stage}: {} steps; no dev evaluation", s.steps);
    } else {
        println!("{stage}: {} steps; last dev: {}", s.steps, dev.join(", "));
    }
    if let Some((metric, value, step)) = &s.best {
        println!(
            "best dev {metric} {value:.4} at step {step}: {}",
            s.best_dir.display()
        );
    }
}

#[derive(Parser)]
#[command(
    name = "t1-train",
    version,
    about = "Train an LLM backbone to reason before it retrieves",
    long_about = "Train an LLM backbone to reason before it retrieves.\n\n\
        A query's vector is the hidden state of <emb_token> written after the model's own reasoning; \
        documents are embedded in one pass. Training is a curriculum: stage1 (supervised reasoning), \
        stage2 (contrastive embedding), stage3 (GRPO with rewards from the ranks of relevant documents \
        in a live index).\n\n\
        Exit codes: 0 ok, 2 bad usage, config or data, 1 failure while running.",
    after_help = "Start with the embedded default:  t1-train eval --config configs/default.toml\n\
        Validate a dataset:                t1-train data curricula/default/data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config FILE`, `--resume`, `--set key=value`.
#[derive(Args)]
struct StageArgs {
    /// TOML config (see configs/ and docs/configuration.md). Relative paths inside it
    /// resolve against its folder.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Continue the run in the config's run folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Override a config value, e.g. `--set run.seed=7 --set stage1.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    dist: DistArgs,
}

/// Data-parallel launch, as torchrun's: `--workers` processes on this machine (one per device),
/// `--nodes` machines. Each worker takes its share of every step's batch (`train.batch_size ×
/// train.grad_accum` examples per worker); rank 0 writes the run folder.
#[derive(Args)]
struct DistArgs {
    /// Worker processes on this machine (one per device; torchrun's --nproc-per-node).
    #[arg(long, env = "T1_WORKERS", default_value_t = 1, value_name = "N")]
    workers: usize,
    /// Machines taking part (torchrun's --nnodes).
    #[arg(long, env = "T1_NODES", default_value_t = 1, value_name = "M")]
    nodes: usize,
    /// This machine's index among them, 0 on the coordinator's (torchrun's --node-rank).
    #[arg(long, env = "T1_NODE_RANK", default_value_t = 0, value_name = "R")]
    node_rank: usize,
    /// Node rank 0's HOST:PORT, reachable from every machine (torchrun's --master-addr and
    /// --master-port); 127.0.0.1:29500 on one machine. Each worker also listens on PORT + 1 + its
    /// local index.
    #[arg(long, env = "T1_COORDINATOR", value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Seconds a worker waits for the others at an exchange before it stops with an error (a
    /// worker that died or hangs).
    #[arg(long, env = "T1_DIST_TIMEOUT", default_value_t = t1_train::run::launch::DEFAULT_TIMEOUT_S, value_name = "SECS")]
    dist_timeout: u64,
    /// The first port this machine's workers listen on, one each (default: the coordinator's
    /// port + 1).
    #[arg(long, value_name = "PORT")]
    worker_port: Option<u16>,
}

impl DistArgs {
    fn layout(&self) -> t1_train::run::launch::Layout {
        t1_train::run::launch::Layout {
            workers: self.workers,
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            timeout_s: self.dist_timeout,
            worker_port: self.worker_port,
        }
    }
}

/// `--config FILE`, `--set key=value`.
#[derive(Args)]
struct ConfigArgs {
    /// TOML config. Relative paths inside it resolve against its folder.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Override a config value, e.g. `--set eval.query_view=gold_reasoning` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// `eval`: `--config FILE`, `--set key=value`, `--views …`.
#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    base: ConfigArgs,
    /// Compare query views of the config's model instead of one run: dense retrieval with each
    /// (comma-separated: bare, gold_reasoning, generated, mixed, latent) and the time to encode a query,
    /// one at a time and batched. Writes runs/<name>/eval/views.{md,json}.
    #[arg(long, value_delimiter = ',', value_name = "VIEW,...")]
    views: Vec<String>,
    /// With --views: queries timed one at a time (the first N of the split); 0 = no timing (one
    /// pass per view, for quality alone).
    #[arg(long, default_value_t = 32, value_name = "N")]
    latency_queries: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Stage 1, supervised reasoning: teacher-forced cross-entropy on the gold reasoning and the
    /// closing `</think><emb_token>`, prompt masked out.
    Stage1(StageArgs),
    /// Stage 2, contrastive embedding: InfoNCE between `<emb_token>` states of the query view
    /// (with gold reasoning) and document views, with in-batch and hard negatives.
    Stage2(StageArgs),
    /// Stage 3, GRPO: sample G reasoning rollouts per query, rank the gold documents in a live
    /// index, turn ranks into rewards (chosen in the config), update the shared backbone.
    Stage3(StageArgs),
    /// LaSER, latent reasoning: self-distil the explicit view (query + gold reasoning) into K
    /// latent steps after the query prompt, so queries need no decoding (`[latent]` in the config).
    Latent(StageArgs),
    /// Run a curriculum file: its stages in order, each from the best checkpoint of the one
    /// before, ending with an evaluation report in the run folder.
    Curriculum {
        /// Curriculum TOML (see curricula/).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Override a value in every stage's config (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[command(flatten)]
        dist: DistArgs,
    },
    /// Evaluate retrieval on a split: nDCG@10, Recall@10/100, MRR@10 exactly as trec_eval, plus a
    /// TREC run file and a JSON report under runs/<name>/eval/.
    Eval(EvalArgs),
    /// Encode the config's corpus with its model's document view and save the index (one
    /// safetensors file) with the model's weights hash and step and the corpus hash it was built
    /// from. Default output: runs/<name>/index/index.safetensors.
    Index {
        #[command(flatten)]
        args: ConfigArgs,
        /// Where to write the index file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Query a trained model and its index, interactively or from a file of queries.
    Search {
        /// Model folder (HF layout: config.json, model.safetensors, tokenizer.json).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Index file written by `t1-train index`.
        #[arg(long, value_name = "FILE")]
        index: PathBuf,
        /// One query; without it, queries are read from --queries or standard input.
        #[arg(long)]
        query: Option<String>,
        /// A file of queries, one per line.
        #[arg(long, value_name = "FILE")]
        queries: Option<PathBuf>,
        /// Documents to show per query.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
    },
    /// Sample from a model for a prompt (greedy by default), with the KV-cache decode loop that
    /// stage 3 uses for rollouts. Plain text is continued as is; with `--query` the prompt is a
    /// query put in the query view (chat template when the model has one, instruction,
    /// `<think>`), sampling stops at `</think>`, and `<emb_token>` is fed to read the query vector.
    Generate {
        /// Model folder (HF layout: config.json, model.safetensors or shards, tokenizer.json).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// The prompt text (with --query: the query).
        #[arg(long)]
        prompt: String,
        /// Treat the prompt as a query and build the query view around it.
        #[arg(long)]
        query: bool,
        /// Maximum tokens to sample per sample.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 means greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Keep only the k most likely tokens before sampling.
        #[arg(long)]
        top_k: Option<usize>,
        /// Hugging Face's repetition penalty: tokens already in the prompt or the sample have
        /// their logits divided by it (multiplied when negative); 1 = off.
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Samples to draw (decoded together as one batch).
        #[arg(short = 'n', long, default_value_t = 1)]
        num_samples: usize,
        /// Seed: sample i uses stream i of it, so results repeat exactly.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Merge a LoRA stage's adapter folder (e.g. runs/<name>/best) into its base and write one
    /// HF folder (config.json, model.safetensors, tokenizer) that transformers loads without peft.
    Merge {
        /// The adapter folder (adapter_config.json, adapter_model.safetensors, tokenizer.json);
        /// an HF folder is copied as is.
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// The new HF folder (must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the predicted peak memory of a stage under a config, per component (weights,
    /// gradients, moments, reference, activations, KV cache, index), without loading weights.
    Plan {
        #[command(flatten)]
        args: ConfigArgs,
        /// The stage to plan: stage1, stage2, stage3 or latent.
        #[arg(long, default_value = "stage3")]
        stage: String,
        /// Plan for another architecture: an HF config.json (e.g. Qwen3-8B's) in place of the
        /// config's model, with the config's tokenizer, batch, lengths and options.
        #[arg(long, value_name = "FILE")]
        arch: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Plan for a GPU backend (burn's generic ops, half-precision matmuls without f32
        /// copies) whatever backend this binary runs: to plan a CUDA run on a CPU machine.
        #[arg(long)]
        gpu: bool,
    },
    /// Validate a BEIR dataset folder (errors name file, line and field) and print a summary:
    /// queries, documents, judgments per split, length percentiles.
    Data {
        /// Dataset folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the configuration reference (every section and key with its type, default and
    /// doc, from the field docs in src/config/) as a markdown table.
    ConfigReference {
        /// Write it into this markdown file between its config-reference markers instead
        /// (docs/configuration.md).
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
}

/// The backend and, on the CPU backend, which kernels run (`T1_KERNELS`), as one line.
fn backend_line() -> Result<String, Error> {
    let kernels = t1_train::model::cpu::Kernels::from_env()?;
    Ok(if cfg!(any(feature = "cuda", feature = "wgpu")) {
        let name = if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "wgpu"
        };
        format!("backend: {name} (burn's generic ops)")
    } else {
        let what = match kernels {
            t1_train::model::cpu::Kernels::Fused => "the CPU kernels where they apply",
            t1_train::model::cpu::Kernels::Generic => "burn's generic ops, as on GPU backends",
        };
        format!(
            "backend: cpu, kernels: {} ({what}; {}=fused|generic)",
            kernels.name(),
            t1_train::model::cpu::Kernels::ENV
        )
    })
}

fn run(cli: Cli) -> Result<(), Error> {
    t1_train::run::install_interrupt_handler()?;
    let backend = backend_line()?;
    if !matches!(
        cli.command,
        Command::Data { .. } | Command::ConfigReference { .. }
    ) {
        eprintln!("{backend}");
    }
    match cli.command {
        Command::ConfigReference { write: None } => {
            print!("{}", t1_train::config::reference_table())
        }
        Command::ConfigReference { write: Some(file) } => {
            let doc = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
            let new =
                t1_train::config::splice_reference(&doc).map_err(|message| Error::Config {
                    location: file.display().to_string(),
                    message,
                })?;
            t1_train::fsio::write_atomic(&file, new.as_bytes())?;
            println!("{}: configuration reference written", file.display());
        }
        Command::Data { dir } => {
            let summary = commands::data(&dir)?;
            println!("{}: ok", dir.display());
            println!("{summary}");
        }
        Command::Eval(EvalArgs {
            base: a,
            views,
            latency_queries,
        }) if !views.is_empty() => {
            let cfg = Config::load(&a.config, &a.overrides)?;
            let views = views
                .iter()
                .map(|v| {
                    serde_json::from_value(serde_json::Value::String(v.trim().to_string()))
                        .map_err(|_| Error::Config {
                            location: "--views".into(),
                            message: format!(
                                "unknown query view '{v}'; views: bare, gold_reasoning, generated, mixed, latent"
                            ),
                        })
                })
                .collect::<Result<Vec<QueryView>, Error>>()?;
            let report = commands::eval_views::<Compute>(
                &cfg,
                &views,
                latency_queries,
                &Default::default(),
            )?;
            print!("{}", report.markdown());
            println!(
                "report and TREC runs: {}",
                cfg.run_dir.join("eval").display()
            );
        }
        Command::Eval(EvalArgs { base: a, .. }) => {
            let cfg = Config::load(&a.config, &a.overrides)?;
            let report = commands::eval::<Compute>(&cfg, &Default::default())?;
            println!(
                "{} on {} ({} queries): {}",
                cfg.raw.run.name,
                cfg.eval_split(),
                report.num_queries,
                report.mean
            );
            println!(
                "report and TREC run: {}",
                cfg.run_dir.join("eval").display()
            );
        }
        Command::Stage1(a) => stage(StageKind::Stage1, &a)?,
        Command::Stage2(a) => stage(StageKind::Stage2, &a)?,
        Command::Stage3(a) => stage(StageKind::Stage3, &a)?,
        Command::Latent(a) => stage(StageKind::Latent, &a)?,
        Command::Curriculum {
            file,
            overrides,
            dist,
        } => {
            let c = t1_train::train::curriculum::load(&file)?;
            let device = Default::default();
            if let Some(join) = t1_train::dist::Join::from_env()? {
                // a worker: every stage in turn with the others, rank 0 alone reporting
                let id = t1_train::train::curriculum::config_id(&c, &overrides)?;
                let world = t1_train::dist::init::<Compute>(&join, &device, &id)?;
                let report =
                    t1_train::train::curriculum::run::<Train>(&c, &overrides, &device, |l| {
                        if world.is_main() {
                            eprintln!("{l}")
                        }
                    })?;
                if world.is_main() {
                    println!("{}", report.markdown());
                    println!(
                        "report: {}",
                        c.output_dir.join(&c.name).join("report.md").display()
                    );
                }
                return Ok(());
            }
            let layout = dist.layout();
            layout.check()?;
            if layout.world_size() > 1 {
                let args: Vec<String> = std::env::args().skip(1).collect();
                return t1_train::run::launch::run(&layout, &args);
            }
            let report =
                t1_train::train::curriculum::run::<Train>(&c, &overrides, &device, |line| {
                    eprintln!("{line}")
                })?;
            println!("{}", report.markdown());
            println!(
                "report: {}",
                c.output_dir.join(&c.name).join("report.md").display()
            );
        }
        Command::Index { args: a, out } => {
            let cfg = Config::load(&a.config, &a.overrides)?;
            let (path, meta) =
                commands::index::<Compute>(&cfg, out.as_deref(), &Default::default())?;
            println!(
                "{}: {} documents × {} dims from {}{} (corpus sha256 {}…)",
                path.display(),
                meta.num_docs,
                meta.dim,
                meta.model,
                meta.model_step
                    .map(|s| format!(" at step {s}"))
                    .unwrap_or_default(),
                &meta.corpus_sha256[..12]
            );
        }
        Command::Search {
            model,
            index,
            query,
            queries,
            k,
        } => {
            let texts: Vec<String> = match (query, queries) {
                (Some(q), _) => vec![q],
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| Error::io(&f, e))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
                (None, None) => {
                    // every line or an error naming it: a non-UTF-8 line must not end the input
                    let mut texts = Vec::new();
                    for (i, line) in std::io::stdin().lines().enumerate() {
                        let line = line.map_err(|e| Error::Data {
                            file: PathBuf::from("<standard input>"),
                            line: i + 1,
                            field: None,
                            message: format!("cannot read the query: {e}"),
                        })?;
                        let line = line.trim();
                        if !line.is_empty() {
                            texts.push(line.to_string());
                        }
                    }
                    texts
                }
            };
            if texts.is_empty() {
                return Err(Error::Runtime(
                    "no queries (give --query, --queries FILE or lines on standard input)".into(),
                ));
            }
            let answers =
                commands::search::<Compute>(&model, &index, &texts, k, &Default::default())?;
            for (q, (reasoning, hits)) in texts.iter().zip(answers) {
                println!("query: {q}");
                println!("reasoning: {}", reasoning.trim());
                for h in hits {
                    let about = match (&h.title, &h.text) {
                        (Some(t), Some(x)) => {
                            let x: String = x.chars().take(100).collect();
                            format!("  {t}{}{x}", if t.is_empty() { "" } else { ": " })
                        }
                        _ => String::new(),
                    };
                    println!("{:>4}. {:.4}  {}{about}", h.rank, h.score, h.id);
                }
                println!();
            }
        }
        Command::Plan {
            args: a,
            stage,
            arch,
            json,
            gpu,
        } => {
            let cfg = Config::load(&a.config, &a.overrides)?;
            // the CPU kernels run on the CPU backend unless T1_KERNELS=generic forces them off
            let cpu = !gpu && cfg!(not(any(feature = "cuda", feature = "wgpu")));
            let fused =
                cpu && t1_train::model::cpu::kernels() == t1_train::model::cpu::Kernels::Fused;
            let p = t1_train::train::plan::for_config(&cfg, &stage, arch.as_deref(), cpu, fused)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p).expect("plain data"));
            } else {
                print!("{}", p.render());
            }
        }
        Command::Merge { model, out } => {
            commands::merge::<Compute>(&model, &out, &Default::default())?;
            println!("{}: merged HF model folder", out.display());
        }
        Command::Generate {
            model,
            prompt,
            query,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            num_samples,
            seed,
        } => {
            if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
                return Err(Error::Config {
                    location: "--repetition-penalty".into(),
                    message: format!("must be finite and > 0 (1 = off), got {repetition_penalty}"),
                });
            }
            let req = commands::GenerateRequest {
                model,
                prompt,
                query,
                sampler: Sampler::from_args(temperature, top_k, top_p)?,
                max_new_tokens,
                num_samples,
                seed,
                repetition_penalty,
            };
            let samples = commands::generate::<Compute>(&req, &Default::default())?;
            let n = samples.len();
            for (i, s) in samples.iter().enumerate() {
                let emb = s
                    .embedding_norm
                    .map(|x| format!(", <emb_token> state norm {x:.3}"))
                    .unwrap_or_default();
                println!(
                    "--- sample {}/{n}: {} tokens, stopped by {}, mean log-prob {:.3}{emb}",
                    i + 1,
                    s.tokens,
                    s.stop,
                    s.mean_logprob
                );
                println!("{}{}", s.prompt, s.text);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // clap prints usage errors and exits with 2
    t1_train::model::cpu::tune_allocator();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
