//! Configuration: TOML → raw serde structs (`deny_unknown_fields`) → [`RawConfig::validate`] →
//! [`Config`] (paths resolved against the config file's folder, cross-field checks done once).
//!
//! Errors name the file, line and key:
//! `configs/x.toml:12:1: unknown field 'lernig_rate' in [eval], expected one of ...`.
//! `--set key=value` overrides are applied to the parsed table before deserialising; an error
//! that only the override causes names the override.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::metrics::ProgressMode;

// The closed sets the config names (each matched where it acts: the schedule in
// train::optim, the loss type and KL estimator in loss::grpo, reward scaling in advantage,
// the trajectory loss in loss::latent, the latent feed and pooling in model::latent, the
// adapter targets in model::lora).

/// The names `model.preset` takes (`model::DecoderConfig::preset` builds each).
pub const MODEL_PRESETS: &[&str] = &["tiny"];

/// Learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Half-cosine from the peak down to `min_lr_ratio · peak` at the last step.
    #[default]
    Cosine,
    /// Straight line from the peak down to `min_lr_ratio · peak` at the last step.
    Linear,
    /// The peak, held.
    Constant,
}

/// How per-token losses are averaged (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then over sequences.
    Grpo,
    /// Mean over all tokens of the micro-batch.
    Bnpo,
    /// Sum over all tokens ÷ the active tokens of the whole generation batch (DAPO).
    #[default]
    Dapo,
    /// Sum ÷ (sequences × max_completion_length) (Dr. GRPO).
    DrGrpo,
}

/// KL estimator between the policy and the reference, per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    K1,
    K2,
    /// TRL's choice: low variance, unbiased, non-negative.
    #[default]
    K3,
}

/// How rewards are scaled after subtracting the group mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (GRPO).
    #[default]
    Group,
    /// Divide by the std of the whole batch.
    Batch,
    /// No scaling (Dr. GRPO).
    None,
}

/// How the K latent states are aligned with the explicit trajectory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trajectory {
    /// 1 − cosine between latent state k and explicit segment end k.
    #[default]
    Cosine,
    /// KL between their score distributions over the batch's documents, per step.
    Kl,
}

/// What one latent step feeds to the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentFeed {
    /// `softmax(logits / τ) · E`.
    #[default]
    SoftToken,
    /// The last-layer state as it is.
    Hidden,
}

/// How the K states become one query vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentPooling {
    #[default]
    Mean,
    Last,
}

/// The linear layers an adapter can sit on, by their HF (and PEFT `target_modules`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The HF module name (`q_proj`, …, `down_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The target of an HF module name, or `None`.
    pub fn from_hf_name(name: &str) -> Option<LoraTarget> {
        LoraTarget::ALL.into_iter().find(|t| t.hf_name() == name)
    }
}

/// A whole run configuration, as written in TOML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Run identity and output location.
    pub run: RunSection,
    /// The dataset (BEIR layout + reasoning, DESIGN §5).
    pub data: DataSection,
    /// Where metrics go. Default: TensorBoard + JSONL + console.
    #[serde(default)]
    pub logging: LoggingSection,
    /// Evaluation settings used by `t1-train eval` and periodic evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// The backbone a stage starts from and the token budgets of the views. Required by the
    /// stages and by dense evaluation.
    #[serde(default)]
    pub model: Option<ModelSection>,
    /// The optimisation loop shared by the stages (batch, optimizer, schedule, checkpoints).
    #[serde(default)]
    pub train: TrainSection,
    /// Stage-2 (contrastive) settings.
    #[serde(default)]
    pub stage2: Stage2Section,
    /// Stage-3 (GRPO) settings.
    #[serde(default)]
    pub stage3: Stage3Section,
    /// LaSER latent reasoning (`t1-train latent`, `eval.query_view = "latent"`). Written to the
    /// resolved config only when it differs from the defaults.
    #[serde(default, skip_serializing_if = "LatentSection::is_default")]
    pub latent: LatentSection,
    /// LoRA adapters instead of full fine-tuning (any stage). Written to the resolved config
    /// only when it differs from the defaults.
    #[serde(default, skip_serializing_if = "LoraSection::is_default")]
    pub lora: LoraSection,
}

/// LoRA (issue 22): the backbone frozen, low-rank adapters `W + (α/r)·A·B` on the listed
/// projections of every layer, and the rows of the T1 tokens trained in full, saved as a PEFT
/// adapter (`adapter_config.json` + `adapter_model.safetensors`). A stage that starts from a
/// LoRA stage's `best/` starts from its merged model with fresh adapters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Train adapters (true) or every weight (false). Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Adapter rank r. Default 16.
    #[serde(default = "default_lora_rank")]
    pub rank: usize,
    /// Scale numerator: the update is `(alpha / rank)·A·B` (PEFT's `lora_alpha`). Default 32.
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// rsLoRA: scale by `alpha / √rank` instead. Default false.
    #[serde(default)]
    pub use_rslora: bool,
    /// Projections that get an adapter, by their HF names (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`). Default all seven.
    #[serde(default = "default_lora_targets")]
    pub target_modules: Vec<String>,
    /// Train the embedding rows (and an untied LM head's rows) of `<think>`, `</think>` and
    /// `<emb_token>` in full beside the adapters (PEFT's `trainable_token_indices`): added tokens
    /// start as the mean row, and a frozen mean `<emb_token>` could not learn to pool. Default true.
    #[serde(default = "yes")]
    pub train_new_tokens: bool,
    /// Dropout on the adapter input. Only 0 is accepted for now (no seeded mask yet, so a run
    /// with dropout could not be resumed exactly). Default 0.
    #[serde(default)]
    pub dropout: f64,
    /// The dtype the frozen base's projection weights (q/k/v/o/gate/up/down of every layer) are
    /// held in: `f32`, `bf16` (f16 where the backend lacks bf16), or `f16`. Adapters, token
    /// rows, norms, embeddings, the LM head, gradients and AdamW state stay f32. Halves the
    /// weights that dominate a LoRA run's memory on GPU backends; on the CPU backend the half
    /// matmuls are slower than its f32 kernels (docs/lora.md). Default `f32`.
    #[serde(default, skip_serializing_if = "BaseDType::is_f32")]
    pub base_dtype: BaseDType,
}

/// [`LoraSection::base_dtype`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseDType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl BaseDType {
    /// The default (left out of the config hash, so older LoRA checkpoints still resume).
    pub fn is_f32(&self) -> bool {
        *self == BaseDType::F32
    }

    /// The half dtype asked for (`None` for f32).
    pub fn half(self) -> Option<burn::tensor::FloatDType> {
        use burn::tensor::FloatDType;
        match self {
            BaseDType::F32 => None,
            BaseDType::Bf16 => Some(FloatDType::BF16),
            BaseDType::F16 => Some(FloatDType::F16),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        toml::from_str("").expect("every lora field has a default")
    }
}

impl LoraSection {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_lora_rank() -> usize {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_lora_targets() -> Vec<String> {
    LoraTarget::ALL
        .iter()
        .map(|t| t.hf_name().to_string())
        .collect()
}

/// LaSER (DESIGN §1): the latent query view and its self-distillation objective.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatentSection {
    /// K: latent steps after the query prompt (no token is decoded). Default 3.
    #[serde(default = "default_latent_steps")]
    pub steps: usize,
    /// What a latent step feeds to the next: `soft_token` (`softmax(logits / soft_temperature) · E`,
    /// E = the input embedding table) or `hidden` (the raw last-layer state). Default `soft_token`.
    #[serde(default)]
    pub feed: LatentFeed,
    /// τ of the soft token's softmax. Default 1.0.
    #[serde(default = "default_temp_f64")]
    pub soft_temperature: f64,
    /// Query vector from the K last-layer states: `mean` or `last`. Default `mean`.
    #[serde(default)]
    pub pooling: LatentPooling,
    /// Temperature of the latent (student) view's scores: its InfoNCE and the student side of
    /// the output alignment. Default 0.02.
    #[serde(default = "default_latent_tau")]
    pub temperature: f64,
    /// Temperature of the explicit (teacher) view's scores: its InfoNCE and the teacher side of
    /// the alignments. Default 0.02.
    #[serde(default = "default_latent_tau")]
    pub teacher_temperature: f64,
    /// λ₁: weight of the explicit view's InfoNCE. Default 1.
    #[serde(default = "default_one_f64")]
    pub explicit_weight: f64,
    /// λ₂: weight of the output alignment KL(P_explicit ‖ P_latent) over the batch's documents.
    /// Default 10.
    #[serde(default = "default_output_weight")]
    pub output_weight: f64,
    /// λ₃: weight of the trajectory alignment. Default 0.1.
    #[serde(default = "default_trajectory_weight")]
    pub trajectory_weight: f64,
    /// Trajectory alignment: `cosine` (1 − cos between latent state k and the explicit state at
    /// the end of reasoning segment k) or `kl` (per step, KL between their score distributions
    /// over the batch's documents). Default `cosine`.
    #[serde(default)]
    pub trajectory: Trajectory,
    /// The explicit view is a teacher: no gradient flows through its side of the alignments
    /// (its own InfoNCE still trains it). Default true.
    #[serde(default = "yes")]
    pub detach_teacher: bool,
    /// Documents per query in a training step: a relevant one + hard negatives (as stage 2).
    /// Default 4.
    #[serde(default = "default_latent_group")]
    pub group_size: usize,
    /// Weight of the stage-1 SFT loss on the explicit view's gold reasoning, so the same
    /// checkpoint keeps writing reasoning for the explicit view. Default 0.1.
    #[serde(default = "default_sft_weight")]
    pub sft_weight: f64,
}

impl Default for LatentSection {
    fn default() -> Self {
        toml::from_str("").expect("every latent field has a default")
    }
}

impl LatentSection {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_latent_steps() -> usize {
    3
}
fn default_temp_f64() -> f64 {
    1.0
}
fn default_latent_tau() -> f64 {
    0.02
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_output_weight() -> f64 {
    10.0
}
fn default_trajectory_weight() -> f64 {
    0.1
}
fn default_latent_group() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stage3Section {
    /// G: rollouts per query (≥ 2). Default 4.
    #[serde(default = "default_group3")]
    pub group_size: usize,
    /// μ: optimisation passes over one batch of rollouts (μ = 1 ⇒ ratio ≡ 1). Default 1.
    #[serde(default = "one_usize")]
    pub iterations: usize,
    /// Lower clip ε of the importance ratio. Default 0.2.
    #[serde(default = "default_eps_clip")]
    pub epsilon: f64,
    /// Upper clip (DAPO clip-higher). Default: `epsilon`.
    #[serde(default)]
    pub epsilon_high: Option<f64>,
    /// KL weight β to the frozen reference (the starting model). Default 0.0 (no reference kept).
    #[serde(default)]
    pub beta: f64,
    /// `k1`, `k2` or `k3`. Default `k3`.
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// `grpo`, `bnpo`, `dapo` or `dr_grpo`. Default `dapo` (TRL's default).
    #[serde(default)]
    pub loss_type: LossType,
    /// `group`, `batch` or `none`. Default `group`.
    #[serde(default)]
    pub scale_rewards: ScaleRewards,
    /// Rollouts that hit `max_new_tokens` without `</think>` get no loss. Default true.
    #[serde(default = "yes")]
    pub mask_truncated: bool,
    /// Sampling temperature. Default 1.0.
    #[serde(default = "default_temp")]
    pub temperature: f32,
    /// Nucleus sampling mass. Default 1.0.
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Top-k sampling (unset = off).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Rebuild the document index with the current model every N steps (0 = frozen). Default 0.
    #[serde(default)]
    pub refresh_every: u64,
    /// Documents in each rollout's top-k list handed to rewards. Default 10.
    #[serde(default = "default_reward_top_k")]
    pub reward_top_k: usize,
    /// A saved index (`t1-train index`) of the starting model to rank against instead of
    /// encoding the corpus at start; refused unless its model and corpus hashes match
    /// `model.path` and `data.dataset`. Relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
    /// Weight of the auxiliary InfoNCE of each rollout's own `<emb_token>` state against the
    /// document index (its relevant documents as positives, the whole corpus as negatives),
    /// added to the GRPO loss. Default 0 (off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aux_infonce_weight: f64,
    /// Temperature τ of that InfoNCE. Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_infonce_temperature: Option<f64>,
    /// The rewards, combined with their weights (at least one).
    #[serde(default = "default_rewards")]
    pub rewards: Vec<t1_rewards::RewardSpec>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for Stage3Section {
    fn default() -> Self {
        toml::from_str("").expect("every stage3 field has a default")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model folder to start from (`config.json`, safetensors, `tokenizer.json`), e.g. the
    /// previous stage's `runs/<name>/best`. Relative to the config file. Exclusive with `preset`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A named preset initialised from `run.seed` (`tiny`). Needs `tokenizer`.
    #[serde(default)]
    pub preset: Option<String>,
    /// `tokenizer.json` for a preset (its vocabulary sizes the model). Relative to the config file.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Query tokens kept in the query view. Default 64.
    #[serde(default = "default_query_tokens")]
    pub max_query_tokens: usize,
    /// Reasoning tokens kept when teacher forcing, and generated at most. Default 128.
    #[serde(default = "default_reasoning_tokens")]
    pub max_reasoning_tokens: usize,
    /// Title + text tokens kept in the document view (longer documents are cut and counted). Default 256.
    #[serde(default = "default_doc_tokens")]
    pub max_doc_tokens: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps in the stage. Default 200.
    #[serde(default = "default_steps")]
    pub steps: u64,
    /// Examples per micro-batch (stage 3: queries, each with its `stage3.group_size` rollouts).
    /// Default 16.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size × grad_accum, in every
    /// stage; stage 3 samples the step's batch_size × grad_accum queries at once, as TRL's
    /// generation batch). Default 1.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Peak learning rate. Default 1e-3.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine/linear). Default 0.1.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps. Default 10.
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// `cosine`, `linear` or `constant` after warm-up. Default `cosine`.
    #[serde(default)]
    pub schedule: Schedule,
    /// AdamW decoupled weight decay. Default 0.0.
    #[serde(default)]
    pub weight_decay: f32,
    /// AdamW β1. Default 0.9.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// AdamW β2. Default 0.999.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// AdamW ε. Default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Clip the global gradient norm to this (0 = no clipping; the norm is logged either way). Default 1.0.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Evaluate on the dev split every N optimizer steps (and at the end). 0 = only at the end. Default 50.
    #[serde(default = "default_every")]
    pub eval_every: u64,
    /// Checkpoint every N optimizer steps (and at the end). Default 50.
    #[serde(default = "default_every")]
    pub save_every: u64,
    /// `step-*` checkpoints kept (the best one is always kept). Default 2.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Sequences per forward pass when encoding documents and queries for evaluation. Default 32.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Steps in a row whose loss or gradient norm is NaN/inf that are skipped (no update, counted
    /// in `<stage>/nonfinite_steps`) before the run stops with a checkpoint of the last good
    /// weights; 0 = stop at the first. May change on resume. Default 3.
    #[serde(
        default = "default_max_nonfinite",
        skip_serializing_if = "is_default_max_nonfinite"
    )]
    pub max_nonfinite_steps: u64,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    /// (`model::recompute`): activation memory of one layer plus each layer's input, each layer
    /// run forward twice; the same losses and gradients. May change on resume. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gradient_checkpointing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").expect("every train field has a default")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Section {
    /// InfoNCE temperature τ. Default 0.05.
    #[serde(default = "default_tau")]
    pub temperature: f64,
    /// Documents per query: the positive + (group_size − 1) hard negatives from
    /// `hard_negatives.jsonl` (queries with fewer are topped up from random documents). Default 2.
    #[serde(default = "default_group")]
    pub group_size: usize,
    /// Add the document→query term. Default false.
    #[serde(default)]
    pub symmetric: bool,
    /// Weight of a joint SFT term on the gold reasoning, so generation does not decay. Default 0.1.
    #[serde(default = "default_sft_weight")]
    pub sft_weight: f64,
    /// Mine hard negatives with the current model at step 0 and every N steps (0 = use
    /// `hard_negatives.jsonl` only). Default 0.
    #[serde(default)]
    pub mine_every: u64,
    /// Mined negatives kept per query. Default 20.
    #[serde(default = "default_mine_depth")]
    pub mine_depth: usize,
    /// Best-ranked non-relevant documents skipped when mining (likely unjudged positives). Default 0.
    #[serde(default)]
    pub mine_skip: usize,
}

impl Default for Stage2Section {
    fn default() -> Self {
        toml::from_str("").expect("every stage2 field has a default")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run name: outputs go to `<output_dir>/<name>/`. Letters, digits, `-`, `_`, `.` only.
    pub name: String,
    /// Folder holding run folders. Relative to the config file. Default: `runs` in the working directory.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Seed for every random choice in the run (sampling, shuffling, init). Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Dataset folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`). Relative to the config file.
    pub dataset: PathBuf,
    /// Split used for training. Default `train`.
    #[serde(default = "default_train")]
    pub train_split: String,
    /// Split used for periodic evaluation. Default `dev`.
    #[serde(default = "default_dev")]
    pub dev_split: String,
    /// Split used for final reports. Default `test`.
    #[serde(default = "default_test")]
    pub test_split: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// Write TensorBoard event files under the run folder. Default true.
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Write `metrics.jsonl` under the run folder. Default true.
    #[serde(default = "yes")]
    pub jsonl: bool,
    /// Progress bars: `auto` (only on a terminal), `always`, `never`. Default `auto`.
    #[serde(default)]
    pub progress: ProgressMode,
    /// Log scalars every N steps. Default 1.
    #[serde(default = "one")]
    pub log_every: u64,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            tensorboard: true,
            jsonl: true,
            progress: ProgressMode::Auto,
            log_every: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Split to evaluate with `t1-train eval`. Default: the data section's `test_split`.
    #[serde(default)]
    pub split: Option<String>,
    /// Retriever used by `t1-train eval`. Default `bm25` (the lexical baseline).
    #[serde(default)]
    pub retriever: RetrieverKind,
    /// What stands for the query: `bare` (the query alone), `gold_reasoning` (query + its gold
    /// reasoning from `queries.jsonl`), `generated` (dense only: the model writes its own
    /// reasoning, greedy) or `latent` (dense only: K latent steps, `[latent]`). Default `bare`.
    #[serde(default)]
    pub query_view: QueryView,
    /// BM25 k1 (term-frequency saturation). Default 0.9 (Pyserini's default).
    #[serde(default = "default_k1")]
    pub bm25_k1: f32,
    /// BM25 b (length normalisation). Default 0.4 (Pyserini's default).
    #[serde(default = "default_b")]
    pub bm25_b: f32,
    /// Documents kept per query in the TREC run file. Default 1000; must be ≥ 100 for Recall@100.
    #[serde(default = "default_depth")]
    pub depth: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            split: None,
            retriever: RetrieverKind::default(),
            query_view: QueryView::default(),
            bm25_k1: default_k1(),
            bm25_b: default_b(),
            depth: default_depth(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrieverKind {
    /// Okapi BM25 over whitespace/punctuation tokens (lower-cased).
    #[default]
    Bm25,
    /// The `[model]`: cosine between `<emb_token>` states of the query and document views.
    Dense,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryView {
    /// The query text alone.
    #[default]
    Bare,
    /// The query followed by its gold reasoning (an upper bound for what reasoning can add).
    GoldReasoning,
    /// The model's own greedy reasoning (dense retrieval only): how T1 is used at query time.
    Generated,
    /// LaSER: K latent steps after the prompt, no decoding (dense retrieval only; `[latent]`).
    Latent,
}

fn default_seed() -> u64 {
    42
}
fn default_train() -> String {
    "train".into()
}
fn default_dev() -> String {
    "dev".into()
}
fn default_test() -> String {
    "test".into()
}
fn yes() -> bool {
    true
}
fn one() -> u64 {
    1
}
fn default_k1() -> f32 {
    0.9
}
fn default_b() -> f32 {
    0.4
}
fn default_depth() -> usize {
    1000
}
fn default_query_tokens() -> usize {
    64
}
fn default_reasoning_tokens() -> usize {
    128
}
fn default_doc_tokens() -> usize {
    256
}
fn default_steps() -> u64 {
    200
}
fn default_batch() -> usize {
    16
}
fn one_usize() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-3
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_warmup() -> u64 {
    10
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_eps() -> f32 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_every() -> u64 {
    50
}
fn default_keep() -> usize {
    2
}
fn default_max_nonfinite() -> u64 {
    3
}
fn is_default_max_nonfinite(n: &u64) -> bool {
    *n == default_max_nonfinite()
}
fn default_eval_batch() -> usize {
    32
}
fn default_tau() -> f64 {
    0.05
}
fn default_group() -> usize {
    2
}
fn default_sft_weight() -> f64 {
    0.1
}
fn default_mine_depth() -> usize {
    20
}
fn default_group3() -> usize {
    4
}
fn default_eps_clip() -> f64 {
    0.2
}
fn default_temp() -> f32 {
    1.0
}
fn default_top_p() -> f32 {
    1.0
}
fn default_reward_top_k() -> usize {
    10
}
fn default_rewards() -> Vec<t1_rewards::RewardSpec> {
    vec![t1_rewards::RewardSpec::Ndcg { k: 10, weight: 1.0 }]
}

/// The validated configuration with absolute paths.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The config file it was loaded from.
    pub source: PathBuf,
    /// Every section, with paths resolved.
    #[serde(flatten)]
    pub raw: RawConfig,
    /// `<output_dir>/<run.name>`.
    pub run_dir: PathBuf,
}

impl Config {
    /// Loads, overrides, validates and resolves a config file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let raw: RawConfig = load_toml(path, overrides)?;
        raw.validate(path)
    }

    /// Like [`Config::load`], with `[model]` replaced by `path = model` (no preset, no separate
    /// tokenizer) before validation: how a curriculum starts a stage from the previous one's
    /// best model whatever the stage's own file says.
    pub fn load_from_model(path: &Path, overrides: &[String], model: &Path) -> Result<Self> {
        let src = read_config(path)?;
        let mut table: toml::Table =
            toml::from_str(&src).map_err(|e| located_error(path, &src, &e))?;
        for ov in overrides {
            apply_override(&mut table, ov)?;
        }
        let section = table
            .entry("model")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(m) = section {
            m.remove("preset");
            m.remove("tokenizer");
            m.insert(
                "path".into(),
                toml::Value::String(model.display().to_string()),
            );
        }
        let raw = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| Error::Config {
            location: format!("{} (started from {})", path.display(), model.display()),
            message: tidy(e.message()),
        })?;
        raw.validate(path)
    }

    /// The resolved config as TOML (written into the run folder before step 0).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(&self.raw)
            .map_err(|e| Error::Runtime(format!("cannot serialise the resolved config: {e}")))
    }

    /// The split `t1-train eval` evaluates.
    pub fn eval_split(&self) -> &str {
        self.raw
            .eval
            .split
            .as_deref()
            .unwrap_or(&self.raw.data.test_split)
    }
}

impl RawConfig {
    /// Cross-field checks and path resolution, once, at load.
    pub fn validate(mut self, path: &Path) -> Result<Config> {
        let err = |key: &str, message: String| Error::Config {
            location: format!("{} (key '{key}')", path.display()),
            message,
        };
        // paths resolve against the config's folder made absolute, so a run means the same
        // whichever working directory or spelling of the config path started it
        let parent = path.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let base_buf = std::path::absolute(parent).map_err(|e| Error::io(parent, e))?;
        let base = base_buf.as_path();
        let name = &self.run.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
            || name.len() > 200
        {
            return Err(err(
                "run.name",
                format!(
                    "run name {name:?} must be 1–200 characters, only letters, digits, '-', '_', '.', not starting with '.'"
                ),
            ));
        }
        self.data.dataset = resolve(base, &self.data.dataset);
        if !self.data.dataset.is_dir() {
            return Err(err(
                "data.dataset",
                format!(
                    "dataset folder {} does not exist",
                    self.data.dataset.display()
                ),
            ));
        }
        for (key, split) in [
            ("data.train_split", &self.data.train_split),
            ("data.dev_split", &self.data.dev_split),
            ("data.test_split", &self.data.test_split),
        ] {
            if split.is_empty() || split.contains(['/', '\\']) {
                return Err(err(
                    key,
                    format!("split name {split:?} must be a plain file stem"),
                ));
            }
        }
        let output_dir = match &self.run.output_dir {
            Some(dir) => resolve(base, dir),
            None => PathBuf::from("runs"),
        };
        self.run.output_dir = Some(output_dir.clone());
        if self.logging.log_every == 0 {
            return Err(err("logging.log_every", "must be at least 1".into()));
        }
        let e = &self.eval;
        if !(e.bm25_k1 >= 0.0 && e.bm25_k1.is_finite()) {
            return Err(err(
                "eval.bm25_k1",
                format!("must be ≥ 0, got {}", e.bm25_k1),
            ));
        }
        if !(0.0..=1.0).contains(&e.bm25_b) {
            return Err(err(
                "eval.bm25_b",
                format!("must be in [0, 1], got {}", e.bm25_b),
            ));
        }
        if e.depth < 100 {
            return Err(err(
                "eval.depth",
                format!("must be ≥ 100 so Recall@100 is exact, got {}", e.depth),
            ));
        }
        if e.retriever == RetrieverKind::Bm25
            && matches!(e.query_view, QueryView::Generated | QueryView::Latent)
        {
            return Err(err(
                "eval.query_view",
                format!(
                    "`{}` needs a model: use it with retriever = \"dense\"",
                    if e.query_view == QueryView::Latent {
                        "latent"
                    } else {
                        "generated"
                    }
                ),
            ));
        }
        if e.retriever == RetrieverKind::Dense && self.model.is_none() {
            return Err(err(
                "eval.retriever",
                "dense retrieval needs a [model] section".into(),
            ));
        }
        if let Some(m) = &mut self.model {
            match (&m.path, &m.preset) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(err(
                        "model.path",
                        "set exactly one of model.path (an HF folder) and model.preset".into(),
                    ));
                }
                // Existence is checked when the model is loaded: a curriculum's later stage
                // names a folder that an earlier stage has not written yet.
                (Some(p), None) => m.path = Some(resolve(base, p)),
                (None, Some(name)) => {
                    if !MODEL_PRESETS.contains(&name.as_str()) {
                        return Err(err(
                            "model.preset",
                            format!(
                                "unknown model preset '{name}'; presets: {} (or give a HF model \
                                 folder)",
                                MODEL_PRESETS.join(", ")
                            ),
                        ));
                    }
                    let Some(t) = &m.tokenizer else {
                        return Err(err(
                            "model.tokenizer",
                            "a preset needs a tokenizer.json (its vocabulary sizes the model)"
                                .into(),
                        ));
                    };
                    let t = resolve(base, t);
                    if !t.is_file() {
                        return Err(err(
                            "model.tokenizer",
                            format!("{} does not exist", t.display()),
                        ));
                    }
                    m.tokenizer = Some(t);
                }
            }
            for (key, v) in [
                ("model.max_query_tokens", m.max_query_tokens),
                ("model.max_reasoning_tokens", m.max_reasoning_tokens),
                ("model.max_doc_tokens", m.max_doc_tokens),
            ] {
                if v == 0 {
                    return Err(err(key, "must be at least 1".into()));
                }
            }
        }
        let t = &self.train;
        let positive = [
            ("train.steps", t.steps as f64),
            ("train.batch_size", t.batch_size as f64),
            ("train.grad_accum", t.grad_accum as f64),
            ("train.save_every", t.save_every as f64),
            ("train.keep_checkpoints", t.keep_checkpoints as f64),
            ("train.eval_batch_size", t.eval_batch_size as f64),
        ];
        for (key, v) in positive {
            if v < 1.0 {
                return Err(err(key, "must be at least 1".into()));
            }
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(err("train.lr", format!("must be > 0, got {}", t.lr)));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(err(
                "train.min_lr_ratio",
                format!("must be in [0, 1], got {}", t.min_lr_ratio),
            ));
        }
        if t.warmup_steps > t.steps {
            return Err(err(
                "train.warmup_steps",
                format!(
                    "{} warm-up steps exceed train.steps = {}",
                    t.warmup_steps, t.steps
                ),
            ));
        }
        for (key, b) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(err(key, format!("must be in [0, 1), got {b}")));
            }
        }
        if !(t.eps > 0.0 && t.eps.is_finite()) {
            return Err(err(
                "train.eps",
                format!("must be > 0 and finite, got {}", t.eps),
            ));
        }
        for (key, v) in [
            ("train.weight_decay", t.weight_decay as f64),
            ("train.max_grad_norm", t.max_grad_norm),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(err(key, format!("must be ≥ 0 and finite, got {v}")));
            }
        }
        let s2 = &self.stage2;
        if !(s2.temperature > 0.0 && s2.temperature.is_finite()) {
            return Err(err(
                "stage2.temperature",
                format!("must be > 0, got {}", s2.temperature),
            ));
        }
        if s2.group_size == 0 {
            return Err(err(
                "stage2.group_size",
                "must be at least 1 (the positive)".into(),
            ));
        }
        if !(s2.sft_weight >= 0.0 && s2.sft_weight.is_finite()) {
            return Err(err(
                "stage2.sft_weight",
                format!("must be ≥ 0 and finite, got {}", s2.sft_weight),
            ));
        }
        let l = &self.latent;
        if l.steps == 0 {
            return Err(err("latent.steps", "must be at least 1".into()));
        }
        for (key, v) in [
            ("latent.soft_temperature", l.soft_temperature),
            ("latent.temperature", l.temperature),
            ("latent.teacher_temperature", l.teacher_temperature),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(err(key, format!("must be > 0, got {v}")));
            }
        }
        for (key, v) in [
            ("latent.explicit_weight", l.explicit_weight),
            ("latent.output_weight", l.output_weight),
            ("latent.trajectory_weight", l.trajectory_weight),
            ("latent.sft_weight", l.sft_weight),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(err(key, format!("must be ≥ 0, got {v}")));
            }
        }
        if l.group_size == 0 {
            return Err(err(
                "latent.group_size",
                "must be at least 1 (the positive)".into(),
            ));
        }
        let s3 = &mut self.stage3;
        if s3.group_size < 2 {
            return Err(err(
                "stage3.group_size",
                "must be at least 2 (advantages are group-relative)".into(),
            ));
        }
        if s3.iterations == 0 {
            return Err(err("stage3.iterations", "must be at least 1".into()));
        }
        if !(s3.aux_infonce_weight >= 0.0 && s3.aux_infonce_weight.is_finite()) {
            return Err(err(
                "stage3.aux_infonce_weight",
                format!("must be ≥ 0 and finite, got {}", s3.aux_infonce_weight),
            ));
        }
        if let Some(t) = s3
            .aux_infonce_temperature
            .filter(|t| !(*t > 0.0 && t.is_finite()))
        {
            return Err(err(
                "stage3.aux_infonce_temperature",
                format!("must be > 0, got {t}"),
            ));
        }
        if let Some(eh) = s3.epsilon_high.filter(|e| !(*e >= 0.0 && e.is_finite())) {
            return Err(err(
                "stage3.epsilon_high",
                format!("must be ≥ 0 and finite, got {eh}"),
            ));
        }
        let eh = s3.epsilon_high.unwrap_or(s3.epsilon);
        if !(0.0..1.0).contains(&s3.epsilon) {
            return Err(err(
                "stage3.epsilon",
                format!(
                    "epsilon must be in [0, 1) and epsilon_high ≥ 0, got {} / {eh}",
                    s3.epsilon
                ),
            ));
        }
        if !(s3.beta >= 0.0 && s3.beta.is_finite()) {
            return Err(err(
                "stage3.beta",
                format!("must be ≥ 0 and finite, got {}", s3.beta),
            ));
        }
        if !(s3.temperature > 0.0 && s3.temperature.is_finite()) {
            return Err(err(
                "stage3.temperature",
                format!("must be > 0 and finite, got {}", s3.temperature),
            ));
        }
        if !(s3.top_p > 0.0 && s3.top_p <= 1.0) {
            return Err(err(
                "stage3.top_p",
                format!("must be in (0, 1], got {}", s3.top_p),
            ));
        }
        if s3.top_k == Some(0) {
            return Err(err("stage3.top_k", "must be at least 1".into()));
        }
        if s3.rewards.is_empty() {
            return Err(err(
                "stage3.rewards",
                format!(
                    "at least one reward is needed; names: {}",
                    t1_rewards::NAMES.join(", ")
                ),
            ));
        }
        if let Some(p) = &s3.index {
            let p = resolve(base, p);
            if !p.is_file() {
                return Err(err(
                    "stage3.index",
                    format!(
                        "index file {} does not exist (write it with `t1-train index`)",
                        p.display()
                    ),
                ));
            }
            s3.index = Some(p);
        }
        for (i, r) in s3.rewards.iter_mut().enumerate() {
            r.resolve(base);
            r.build()
                .map_err(|e| err(&format!("stage3.rewards[{i}]"), e.0))?;
        }
        let l = &self.lora;
        if l.rank == 0 {
            return Err(err("lora.rank", "must be at least 1".into()));
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            return Err(err(
                "lora.alpha",
                format!("must be a finite number > 0, got {}", l.alpha),
            ));
        }
        if !(l.dropout.is_finite() && (0.0..1.0).contains(&l.dropout)) {
            return Err(err(
                "lora.dropout",
                format!("must be in [0, 1), got {}", l.dropout),
            ));
        }
        if l.dropout > 0.0 {
            return Err(err(
                "lora.dropout",
                format!(
                    "{} is not supported yet: only 0 (adapter dropout needs a seeded mask for \
                     exact resume, not written yet)",
                    l.dropout
                ),
            ));
        }
        if l.base_dtype != BaseDType::F32 && !l.enabled {
            return Err(err(
                "lora.base_dtype",
                format!(
                    "{:?} needs lora.enabled = true: only a frozen base can be held in half \
                     precision (the weights AdamW updates stay f32)",
                    l.base_dtype
                ),
            ));
        }
        if l.target_modules.is_empty() {
            return Err(err("lora.target_modules", "an empty list".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, name) in l.target_modules.iter().enumerate() {
            if LoraTarget::from_hf_name(name).is_none() {
                return Err(err(
                    &format!("lora.target_modules[{i}]"),
                    format!(
                        "unknown module {name:?}; names: {}",
                        default_lora_targets().join(", ")
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(err(
                    &format!("lora.target_modules[{i}]"),
                    format!("{name:?} listed twice"),
                ));
            }
        }
        let run_dir = output_dir.join(&self.run.name);
        Ok(Config {
            source: path.to_path_buf(),
            raw: self,
            run_dir,
        })
    }
}

/// `p` against `base`, with `.` and `..` folded lexically (`configs/../runs` → `runs`).
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// A config file's text; a missing, unreadable or non-UTF-8 file is a config error (exit 2).
pub fn read_config(path: &Path) -> Result<String> {
    let bytes = std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                std::fs::read(path)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|e| Error::Config {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
    String::from_utf8(bytes).map_err(|e| Error::Config {
        location: path.display().to_string(),
        message: format!("not UTF-8 text: {e}"),
    })
}

/// Reads a TOML file into `T`, applying `key.path=value` overrides.
///
/// Errors from the file name `file:line:col`, the enclosing `[section]` and the key on that line;
/// errors that only appear after overrides name the overrides.
pub fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let src = read_config(path)?;
    let parsed: std::result::Result<T, toml::de::Error> = toml::from_str(&src);
    let value = match parsed {
        Ok(v) => v,
        Err(e) => return Err(located_error(path, &src, &e)),
    };
    if overrides.is_empty() {
        return Ok(value);
    }
    let mut table: toml::Table = toml::from_str(&src).map_err(|e| located_error(path, &src, &e))?;
    for ov in overrides {
        apply_override(&mut table, ov)?;
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| Error::Config {
        location: format!(
            "{} with --set {}",
            path.display(),
            overrides.join(" --set ")
        ),
        message: tidy(e.message()),
    })
}

/// `a.b.c=value`: the value is parsed as a TOML value (`3`, `1e-4`, `true`, `"x"`, `[1,2]`),
/// falling back to a bare string.
fn apply_override(table: &mut toml::Table, ov: &str) -> Result<()> {
    let bad = |m: &str| Error::Config {
        location: format!("--set {ov}"),
        message: m.to_string(),
    };
    let (key, val) = ov
        .split_once('=')
        .ok_or_else(|| bad("expected key=value, e.g. --set run.seed=7"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment"));
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", val.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(val.trim().to_string()));
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(bad(&format!("'{p}' is not a table"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Turns a toml error into `file:line:col: message (in [section], key 'k')`.
fn located_error(path: &Path, src: &str, e: &toml::de::Error) -> Error {
    let Some(span) = e.span() else {
        return Error::Config {
            location: path.display().to_string(),
            message: tidy(e.message()),
        };
    };
    let (line, col) = line_col(src, span.start);
    let line_text = src.lines().nth(line - 1).unwrap_or("");
    let section = src
        .lines()
        .take(line)
        .filter_map(|l| {
            let t = l.trim();
            (t.starts_with('[') && t.ends_with(']')).then(|| t.to_string())
        })
        .last();
    let mut message = tidy(e.message());
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let mut ctx = Vec::new();
    if let Some(s) = section {
        ctx.push(format!("in {s}"));
    }
    if let Some(k) = key
        && !message.contains(&format!("'{k}'"))
    {
        ctx.push(format!("key '{k}'"));
    }
    if !ctx.is_empty() {
        message = format!("{message} ({})", ctx.join(", "));
    }
    Error::Config {
        location: format!("{}:{line}:{col}", path.display()),
        message,
    }
}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// serde quotes names with backticks; we print them with single quotes.
fn tidy(m: &str) -> String {
    m.trim().replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        assert_eq!(
            resolve(Path::new("configs"), Path::new("../runs")),
            PathBuf::from("runs")
        );
        assert_eq!(
            resolve(Path::new("/a/b"), Path::new("./c/../d")),
            PathBuf::from("/a/b/d")
        );
        assert_eq!(
            resolve(Path::new("x"), Path::new("/abs")),
            PathBuf::from("/abs")
        );
        assert_eq!(
            resolve(Path::new(""), Path::new("../up")),
            PathBuf::from("../up")
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn override_parses_toml_values_and_falls_back_to_strings() {
        let mut t = toml::Table::new();
        apply_override(&mut t, "run.seed=7").unwrap();
        apply_override(&mut t, "run.name=abc").unwrap();
        apply_override(&mut t, "eval.bm25_b=0.5").unwrap();
        assert_eq!(t["run"]["seed"].as_integer(), Some(7));
        assert_eq!(t["run"]["name"].as_str(), Some("abc"));
        assert_eq!(t["eval"]["bm25_b"].as_float(), Some(0.5));
        assert!(apply_override(&mut t, "noequals").is_err());
        assert!(apply_override(&mut t, "run..x=1").is_err());
    }
}
