//! What every stage loop shares: the epoch order of training examples, the config hash a resume
//! is checked against, and the optimizer-step bookkeeping ([`Trainer`]: accumulation,
//! global-norm clipping, LR schedule, logging, periodic eval, best tracking, checkpoints,
//! resume, Ctrl-C).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsAccumulator, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::config::{Config, QueryView};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::dense::dense_eval;
use crate::metrics::{MetricsSink, progress_bar};
use crate::model::load::{
    attach_lora, check_batch_fits, check_lengths, load_backbone, lora_adapter,
};
use crate::model::peft::{Adapter, save_model};
use crate::model::{Decoder, T1Tokenizer};
use crate::run::RunDir;
use crate::run::checkpoint::{self, Best, RngState, TrainState};
use crate::train::micro::MicroBatch;
use crate::train::optim::{AdamW, adamw, clip_global_norm, lr_at};

/// Example order of an epoch: a permutation of `0..n` from (seed, epoch) alone, so a resumed
/// run sees the same order.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch + 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// SHA-256 of what a run means: the resolved config minus what may change on resume
/// (`train.steps` can grow, `train.max_nonfinite_steps`, `train.gradient_checkpointing`,
/// `train.eval_at_end`, `[logging]`) and minus where the run folder is (`run.output_dir`: a moved
/// run folder is the same run); the paths it reads (dataset, model, tokenizer, index, reward
/// scripts) canonicalised, so neither the working directory nor the spelling of the config path
/// changes it.
pub fn config_hash(cfg: &Config) -> Result<String> {
    fn canonical(p: &mut PathBuf) {
        if let Ok(c) = std::fs::canonicalize(&*p) {
            *p = c;
        }
    }
    let mut raw = cfg.raw.clone();
    raw.train.steps = 0;
    raw.train.max_nonfinite_steps = crate::config::TrainSection::default().max_nonfinite_steps;
    raw.train.gradient_checkpointing = false; // the same losses and gradients either way
    raw.train.eval_at_end = true; // what is evaluated, not what is trained
    raw.logging = Default::default();
    raw.run.output_dir = None;
    canonical(&mut raw.data.dataset);
    if let Some(m) = &mut raw.model {
        m.path.as_mut().map(canonical);
        m.tokenizer.as_mut().map(canonical);
    }
    raw.stage3.index.as_mut().map(canonical);
    for r in &mut raw.stage3.rewards {
        if let t1_rewards::RewardSpec::Script { path, .. } = r {
            canonical(path);
        }
    }
    let text =
        toml::to_string(&raw).map_err(|e| Error::Runtime(format!("cannot hash config: {e}")))?;
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

/// Direction of the metric that picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Minimize,
    Maximize,
}

type Optim<B> = OptimizerAdaptor<AdamW, Decoder<B>, B>;

/// The optimizer-step machinery shared by the stages. A stage owns its data and loss; per step
/// it calls [`Trainer::backward`] for each micro-batch of its [`crate::train::micro::StepPlan`] and then
/// [`Trainer::step`].
pub struct Trainer<B: AutodiffBackend> {
    pub cfg: Config,
    pub stage: &'static str,
    pub run_dir: RunDir,
    pub sinks: Box<dyn MetricsSink>,
    pub bar: ProgressBar,
    pub model: Decoder<B>,
    pub tok: T1Tokenizer,
    /// With `[lora]`: the adapters' settings and base (`model` then trains only the adapters
    /// and token rows; checkpoints and `best/` are adapter folders).
    pub adapter: Option<Adapter>,
    optim: Optim<B>,
    accum: GradientsAccumulator<Decoder<B>>,
    pub state: TrainState,
    /// RNG for anything random in the stage (negatives top-up, sampling), saved in checkpoints.
    pub rng: ChaCha8Rng,
    goal: Goal,
    metric: String,
    step_started: Instant,
    /// The training device (synchronised before reading the optimizer's clock).
    device: B::Device,
    /// Tokens processed since the last logged step (for tokens/s).
    pub tokens: usize,
    /// `Σ scale · loss` of this step's micro-batches so far: the step's loss, logged by
    /// [`Self::step`] as `<stage>/loss`.
    step_loss: f64,
    /// This loop polls for Ctrl-C / SIGTERM between steps (the handler then waits for it).
    _polling: crate::run::PollGuard,
    /// Data-parallel: a worker saw Ctrl-C by the last step's exchange (all workers stop together).
    interrupted_anywhere: bool,
    /// The stage's own files in each checkpoint (`checkpoint::StageFiles`).
    pub stage_files: Option<checkpoint::StageFiles>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Starts a stage: fresh from `[model]`, or from the run's latest checkpoint with `resume`.
    pub fn start(
        cfg: &Config,
        stage: &'static str,
        resume: bool,
        goal: Goal,
        metric: &str,
        device: &B::Device,
    ) -> Result<Self> {
        // the lock first: a second process on this folder is refused before anything is read
        // or written; config.resolved.toml only once the run is accepted
        // (with data-parallel workers, rank 0 alone locks and writes it; the others read it)
        let world = crate::dist::world();
        let run_dir = if world.is_main() {
            RunDir::lock(cfg)?
        } else {
            RunDir::open(cfg.run_dir.clone())
        };
        let hash = config_hash(cfg)?;
        let t = &cfg.raw.train;
        let mut optim = adamw((t.beta1, t.beta2), t.eps, t.weight_decay).init::<B, Decoder<B>>();
        let latest = checkpoint::latest(run_dir.root())?;
        let (model, tok, state, adapter) = match (resume, latest) {
            (true, Some(dir)) => {
                let (mut adapter, mut base_now) = (None, None);
                let (model, record, state) = checkpoint::load::<B, _>(&dir, device, || {
                    let (base, tok) = load_backbone::<B>(cfg, device)?;
                    adapter = Some(lora_adapter(cfg, run_dir.root(), &base, &tok, false)?);
                    base_now = Some(checkpoint::base_fingerprint(&base));
                    Ok(base)
                })?;
                if state.stage != stage {
                    return Err(Error::Usage(format!(
                        "{}: checkpoint of {}, cannot resume it as {stage}",
                        dir.display(),
                        state.stage
                    )));
                }
                if state.config_hash != hash {
                    return Err(Error::Config {
                        location: cfg.source.display().to_string(),
                        message: format!(
                            "the config differs from the one {} was trained with (only train.steps, train.max_nonfinite_steps, train.gradient_checkpointing, train.eval_at_end and [logging] may change on resume)",
                            dir.display()
                        ),
                    });
                }
                if adapter.is_some() != cfg.raw.lora.enabled {
                    return Err(Error::Config {
                        location: format!("{} (key 'lora.enabled')", cfg.source.display()),
                        message: format!(
                            "{} is {}, but lora.enabled = {}",
                            dir.display(),
                            if adapter.is_some() {
                                "a LoRA checkpoint"
                            } else {
                                "a full-weights checkpoint"
                            },
                            cfg.raw.lora.enabled
                        ),
                    });
                }
                if let (Some(then), Some(now)) = (&state.base_fingerprint, &base_now)
                    && let Some(diff) = checkpoint::fingerprint_mismatch(then, now)
                {
                    return Err(Error::Config {
                        location: format!("{} (key 'model')", cfg.source.display()),
                        message: format!(
                            "the base model the config gives now is not the one the adapters in \
                             {} were trained on ({diff}); restore that base (model.path, its \
                             files, or the previous stage's best/) or start a new run",
                            dir.display()
                        ),
                    });
                }
                optim = optim.load_record(record);
                let tok = T1Tokenizer::load(&dir.join("tokenizer.json"))?;
                (model, tok, state, adapter)
            }
            (true, None) => {
                return Err(Error::Usage(format!(
                    "--resume: no checkpoint in {}",
                    checkpoint::root(run_dir.root()).display()
                )));
            }
            (false, Some(dir)) => {
                return Err(Error::Usage(format!(
                    "{} already has checkpoints ({}): pass --resume to continue, or pick another run.name",
                    run_dir.root().display(),
                    dir.display()
                )));
            }
            (false, None) => {
                let (model, tok) = load_backbone::<B>(cfg, device)?;
                let base_fingerprint = cfg
                    .raw
                    .lora
                    .enabled
                    .then(|| checkpoint::base_fingerprint(&model));
                let (model, adapter) = attach_lora(cfg, run_dir.root(), model, &tok)?;
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.raw.run.seed);
                rng.set_stream(0xC0FFEE);
                let state = TrainState {
                    stage: stage.to_string(),
                    step: 0,
                    epoch: 0,
                    position: 0,
                    rng: RngState::of(&rng),
                    best: None,
                    config_hash: hash,
                    nonfinite_steps: 0,
                    nonfinite_in_a_row: 0,
                    base_fingerprint,
                };
                (model, tok, state, adapter)
            }
        };
        let model = match cfg.raw.lora.base_dtype.half() {
            Some(want) => {
                let dtype =
                    crate::model::lora::half_dtype::<B>(want, device).map_err(|message| {
                        Error::Config {
                            location: format!("{} (key 'lora.base_dtype')", cfg.source.display()),
                            message,
                        }
                    })?;
                let model = model.with_base_dtype(dtype)?;
                // the f32 projections just freed would otherwise stay resident
                crate::model::cpu::release_free_memory();
                model
            }
            None => model,
        };
        let model = model.with_recompute(t.gradient_checkpointing);
        check_lengths(cfg, model.config())?;
        check_batch_fits(
            cfg,
            model.config(),
            stage,
            adapter.as_ref().map(|a| &a.spec),
        )?;
        if world.is_main() {
            run_dir.write_resolved(cfg)?;
        }
        if resume && world.is_main() {
            // what was logged after the checkpoint is logged again by this run: once each
            crate::metrics::truncate_after(
                &run_dir.metrics_path(),
                &run_dir.tensorboard_dir(),
                state.step,
            )?;
        }
        // data-parallel: every worker starts from the same point (a resume reads the checkpoint
        // rank 0 wrote: the run folder must be the same one on every machine)
        world.agree::<B::InnerBackend>(
            "starting points (step/epoch/position)",
            &format!("{}/{}/{}", state.step, state.epoch, state.position),
            "a data-parallel --resume needs the run folder that rank 0 writes on every machine \
             (a shared filesystem, or a copy of it)",
            device,
        )?;
        let rng = state.rng.restore()?;
        let (bar, sinks): (ProgressBar, Box<dyn MetricsSink>) = if world.is_main() {
            let bar = progress_bar(t.steps, stage, cfg.raw.logging.progress);
            bar.set_position(state.step);
            let sinks = Box::new(run_dir.sinks(&cfg.raw.logging, bar.clone())?);
            (bar, sinks)
        } else {
            (ProgressBar::hidden(), Box::new(crate::metrics::NullSink))
        };
        Ok(Trainer {
            cfg: cfg.clone(),
            stage,
            run_dir,
            sinks,
            bar,
            model,
            tok,
            adapter,
            optim,
            accum: GradientsAccumulator::new(),
            state,
            rng,
            goal,
            metric: metric.to_string(),
            step_started: Instant::now(),
            device: device.clone(),
            tokens: 0,
            step_loss: 0.0,
            _polling: crate::run::PollGuard::new(),
            interrupted_anywhere: false,
            stage_files: None,
        })
    }

    /// Whether the stage has steps left.
    pub fn running(&self) -> bool {
        self.state.step < self.cfg.raw.train.steps
    }

    /// The next `n` example indices of the epoch order (crossing into the next epoch as needed).
    pub fn next_examples(&mut self, n_examples: usize, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        let seed = self.cfg.raw.run.seed;
        let mut order = epoch_order(n_examples, seed, self.state.epoch);
        while out.len() < n {
            if self.state.position >= n_examples {
                self.state.epoch += 1;
                self.state.position = 0;
                order = epoch_order(n_examples, seed, self.state.epoch);
            }
            out.push(order[self.state.position]);
            self.state.position += 1;
        }
        out
    }

    /// Backward of micro-batch `mb`'s `loss` at its share (`loss · mb.scale`, plus `extra`: a
    /// term already weighted that is differentiated with it but not part of the logged loss,
    /// e.g. stage 3's auxiliary InfoNCE), accumulated until [`Self::step`]. Returns `loss`'s
    /// value; `mb.scale` times it adds to the step's logged loss.
    pub fn backward(
        &mut self,
        mb: &MicroBatch,
        loss: Tensor<B, 1>,
        extra: Option<Tensor<B, 1>>,
    ) -> f64 {
        let value = loss.clone().into_scalar().elem::<f64>();
        self.backward_logged(mb, loss, extra, value);
        value
    }

    /// [`Self::backward`], with `logged` (not `loss`'s value) as this worker's share of the
    /// step's logged loss: a data-parallel contrastive worker differentiates the whole batch's
    /// loss through its own rows, so each of the workers logs a `1/workers` share of it.
    pub fn backward_logged(
        &mut self,
        mb: &MicroBatch,
        loss: Tensor<B, 1>,
        extra: Option<Tensor<B, 1>>,
        logged: f64,
    ) {
        self.step_loss += mb.scale * logged;
        let objective = match extra {
            Some(extra) => loss * mb.scale + extra,
            None => loss * mb.scale,
        };
        // with train.gradient_checkpointing the model replays its layers here
        let grads = self.model.backward(objective);
        self.accum.accumulate(&self.model, grads);
    }

    /// Clip, schedule, AdamW step; logs `stage/{loss, lr, grad_norm, tokens_per_s,
    /// time/optimizer_s, peak_rss_mib}` plus `scalars` (the loss is what [`Self::backward`]
    /// accumulated).
    ///
    /// A step whose loss or gradient norm is NaN/inf is skipped instead: no update, the
    /// step still counts, `stage/nonfinite_steps` is logged. More than `train.max_nonfinite_steps`
    /// of them in a row stop the run with a checkpoint of the weights as the last finite update
    /// left them (the skipped steps did not touch them) and an error saying what to change.
    pub fn step(&mut self, scalars: &[(&str, f64)]) -> Result<()> {
        self.step_parts(scalars, &[])
    }

    /// [`Self::step`] where the figures are `mean` (each worker's value of the same figure:
    /// averaged over data-parallel workers) and `sum` (each worker's share of it: summed).
    pub fn step_parts(&mut self, mean: &[(&str, f64)], sum: &[(&str, f64)]) -> Result<()> {
        let t = &self.cfg.raw.train;
        if let Some(r) = &self.model.recompute {
            // forwards no loss was differentiated through are not kept past the step
            r.clear();
        }
        let grads = self.accum.grads();
        // data-parallel: the workers' gradients, losses and tokens summed, the stage's figures
        // averaged, and a Ctrl-C on any worker seen by all (so every worker stops at the same step)
        let world = crate::dist::world();
        let mut extra = vec![
            self.step_loss as f32,
            self.tokens as f32,
            crate::run::interrupted() as u8 as f32,
        ];
        extra.extend(mean.iter().chain(sum).map(|(_, v)| *v as f32));
        let (grads, extra) =
            world.all_reduce_grads(self.state.step, &self.model, grads, extra, &self.device)?;
        let scalars: Vec<(&str, f64)> = if world.is_distributed() {
            self.step_loss = extra[0] as f64;
            self.tokens = extra[1] as usize;
            self.interrupted_anywhere = extra[2] > 0.0;
            let n = world.size as f64;
            let means = mean
                .iter()
                .zip(&extra[3..])
                .map(|((k, _), v)| (*k, *v as f64 / n));
            let sums = sum
                .iter()
                .zip(&extra[3 + mean.len()..])
                .map(|((k, _), v)| (*k, *v as f64));
            means.chain(sums).collect()
        } else {
            mean.iter().chain(sum).copied().collect()
        };
        let scalars = scalars.as_slice();
        let max = (t.max_grad_norm > 0.0).then_some(t.max_grad_norm);
        let (grads, norm) = clip_global_norm(&self.model, grads, max);
        let loss = std::mem::take(&mut self.step_loss);
        if !loss.is_finite() || !norm.is_finite() {
            return self.skip_nonfinite(loss, norm);
        }
        self.state.nonfinite_in_a_row = 0;
        let lr = lr_at(
            self.state.step,
            t.steps,
            t.warmup_steps,
            t.lr,
            t.min_lr_ratio,
            t.schedule,
        );
        let optimizer_started = Instant::now();
        self.model = self.optim.step(lr, self.model.clone(), grads);
        // GPU backends queue work: wait for the update before reading the clock (no-op on CPU)
        let _ = B::sync(&self.device);
        let optimizer_secs = optimizer_started.elapsed().as_secs_f64();
        // finite loss and gradients can still make non-finite weights (an lr of 1e300, an
        // overflowing update): such weights are never kept, logged as trained, or saved
        if !crate::model::weights::all_finite(&self.model.valid()) {
            return Err(self.nonfinite_update(lr));
        }
        self.state.step += 1;
        let secs = self.step_started.elapsed().as_secs_f64().max(1e-9);
        let mut all: Vec<(String, f64)> = std::iter::once(("loss", loss))
            .chain(scalars.iter().copied())
            .map(|(k, v)| (format!("{}/{k}", self.stage), v))
            .collect();
        all.push((format!("{}/lr", self.stage), lr));
        all.push((format!("{}/grad_norm", self.stage), norm));
        all.push((format!("{}/time/optimizer_s", self.stage), optimizer_secs));
        all.push((
            format!("{}/tokens_per_s", self.stage),
            self.tokens as f64 / secs,
        ));
        // the process's peak resident memory so far (what `t1-train plan` predicts)
        if let Some(peak) = super::plan::rss_bytes(true) {
            all.push((
                format!("{}/peak_rss_mib", self.stage),
                peak / (1u64 << 20) as f64,
            ));
        }
        if self.state.step % self.cfg.raw.logging.log_every == 0 || !self.running() {
            let pairs: Vec<(&str, f64)> = all.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.sinks.scalars(self.state.step, &pairs)?;
            // durable every logged step: a kill leaves no step half-logged or unlogged
            self.sinks.flush()?;
        }
        self.bar
            .set_message(format!("loss {loss:.4} lr {lr:.2e} |g| {norm:.2}"));
        self.bar.set_position(self.state.step);
        self.tokens = 0;
        self.step_started = Instant::now();
        Ok(())
    }

    /// The error of an update that left non-finite weights: the run stops without saving them.
    fn nonfinite_update(&self, lr: f64) -> Error {
        let name = crate::model::weights::first_nonfinite(&self.model.valid())
            .unwrap_or_else(|| "a parameter".into());
        let latest = checkpoint::latest(self.run_dir.root())
            .ok()
            .flatten()
            .map(|p| {
                format!(
                    "the latest checkpoint {} predates it (continue from it with --resume after the change)",
                    p.display()
                )
            })
            .unwrap_or_else(|| "no checkpoint was written before it".into());
        Error::Runtime(format!(
            "{} step {}: the optimizer update (lr {lr:e}) made {name} NaN or infinite although the \
             loss and gradients were finite; stopped without saving these weights — {latest}. \
             Lower train.lr or set train.max_grad_norm",
            self.stage,
            self.state.step + 1
        ))
    }

    /// The non-finite branch of [`Self::step`].
    fn skip_nonfinite(&mut self, loss: f64, norm: f64) -> Result<()> {
        self.state.step += 1;
        self.state.nonfinite_steps += 1;
        self.state.nonfinite_in_a_row += 1;
        let (step, stage) = (self.state.step, self.stage);
        self.sinks.scalars(
            step,
            &[(
                &format!("{stage}/nonfinite_steps"),
                self.state.nonfinite_steps as f64,
            )],
        )?;
        self.sinks.flush()?;
        let limit = self.cfg.raw.train.max_nonfinite_steps;
        let row = self.state.nonfinite_in_a_row;
        crate::metrics::warn(
            &self.bar,
            format!(
                "{stage} step {step}: loss {loss}, gradient norm {norm} — update skipped ({row} in a row,              train.max_nonfinite_steps = {limit})"
            ),
        );
        self.bar.set_position(step);
        self.tokens = 0;
        self.step_started = Instant::now();
        if row <= limit {
            return Ok(());
        }
        let name = self.save()?;
        Err(Error::Runtime(format!(
            "{stage}: loss or gradients were not finite for {row} steps in a row (steps {}–{step}); \
             stopped. Those steps made no update, so checkpoint {name} holds the last good weights. \
             Lower train.lr, set train.max_grad_norm, or check the data and the starting model",
            step + 1 - row
        )))
    }

    /// Whether a dev evaluation is due after this step (on rank 0 alone: it records the
    /// result and writes `best/` while the other workers wait at the next exchange).
    pub fn eval_due(&self) -> bool {
        let e = self.cfg.raw.train.eval_every;
        let at_end = !self.running() && self.cfg.raw.train.eval_at_end;
        crate::dist::world().is_main() && (at_end || (e > 0 && self.state.step % e == 0))
    }

    pub fn save_due(&self) -> bool {
        !self.running() || self.state.step % self.cfg.raw.train.save_every == 0
    }

    /// Records a dev metric: logs it, and when it beats the best so far saves the model to
    /// `runs/<name>/best/` (an HF folder the next stage can start from).
    pub fn record_eval(&mut self, metrics: &[(&str, f64)]) -> Result<()> {
        let tagged: Vec<(String, f64)> = metrics
            .iter()
            .map(|(k, v)| (format!("{}/dev/{k}", self.stage), *v))
            .collect();
        let pairs: Vec<(&str, f64)> = tagged.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.sinks.scalars(self.state.step, &pairs)?;
        self.sinks.flush()?;
        let Some(&(_, value)) = metrics.iter().find(|(k, _)| *k == self.metric) else {
            return Ok(());
        };
        if !value.is_finite() {
            // a NaN/inf dev metric is never the best (and never blocks a finite one later)
            crate::metrics::warn(
                &self.bar,
                format!(
                    "{} step {}: dev {} is {value}: not a candidate for best/",
                    self.stage, self.state.step, self.metric
                ),
            );
            return Ok(());
        }
        let better = match &self.state.best {
            None => true,
            Some(b) => match self.goal {
                Goal::Minimize => value < b.value,
                Goal::Maximize => value > b.value,
            },
        };
        if better {
            let dir = self.best_dir();
            let tmp = self.run_dir.root().join(".best.tmp");
            // what this model is: read by `t1-train index` (model step) and the curriculum report
            let about = serde_json::json!({
                "stage": self.stage,
                "step": self.state.step,
                "metric": format!("dev/{}", self.metric),
                "value": value,
            });
            let written = (|| {
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
                }
                save_model(&self.model.valid(), self.adapter.as_ref(), &tmp)?;
                self.tok.save(&tmp.join("tokenizer.json"))?;
                crate::fsio::write_atomic(&tmp.join("t1-best.json"), about.to_string().as_bytes())?;
                crate::checksums::write(&tmp)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(Error::Runtime(format!(
                    "the best model (step {}) was not written ({e}); {} is unchanged and {}",
                    self.state.step,
                    dir.display(),
                    checkpoint::how_to_go_on(self.run_dir.root())
                )));
            }
            // swap by renames, so a crash at any point leaves a complete best/ or .best.old/
            let old = self.run_dir.root().join(".best.old");
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            if dir.exists() {
                std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            self.state.best = Some(Best {
                metric: self.metric.clone(),
                value,
                step: self.state.step,
                checkpoint: format!("step-{:06}", self.state.step),
            });
        }
        Ok(())
    }

    /// Dense retrieval on the dev split through `view`: logs `<stage>/dev/*`, keeps the best
    /// model (via [`Self::record_eval`]) and returns the metrics.
    pub fn eval_dev_dense(&mut self, ds: &Dataset, view: QueryView) -> Result<Vec<(String, f64)>> {
        let (report, _, _) = dense_eval(
            &self.model.valid(),
            &self.tok,
            ds,
            &self.cfg.raw.data.dev_split,
            view,
            &self.cfg,
        )?;
        let named = report.mean.named();
        self.record_eval(&named)?;
        Ok(named.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    /// `runs/<name>/best/`.
    pub fn best_dir(&self) -> PathBuf {
        self.run_dir.root().join("best")
    }

    /// Writes a checkpoint and prunes old ones.
    pub fn save(&mut self) -> Result<String> {
        if !crate::dist::world().is_main() {
            return Ok(format!("rank 0's checkpoint of step {}", self.state.step));
        }
        self.state.rng = RngState::of(&self.rng);
        let name = checkpoint::save(
            self.run_dir.root(),
            &self.model,
            self.adapter.as_ref(),
            &self.tok,
            self.optim.to_record(),
            &self.state,
            self.stage_files.as_ref(),
        )?;
        checkpoint::prune(
            self.run_dir.root(),
            self.cfg.raw.train.keep_checkpoints,
            &[],
        )?;
        self.sinks.flush()?;
        Ok(name)
    }

    pub fn run_root(&self) -> &Path {
        self.run_dir.root()
    }

    /// On Ctrl-C: saves a checkpoint at the current step and returns the `Interrupted` error the
    /// loop passes up (exit code 1, with how to continue).
    pub fn stop_if_interrupted(&mut self) -> Result<()> {
        let seen = match crate::dist::world().is_distributed() {
            // every worker stops at the step after the exchange that told them all
            true => self.interrupted_anywhere,
            false => crate::run::interrupted(),
        };
        if !seen {
            return Ok(());
        }
        let name = self.save()?;
        Err(Error::Interrupted(format!(
            "{} saved at step {} ({name}); continue with --resume",
            self.stage, self.state.step
        )))
    }

    /// Closes the progress bar, flushes the sinks and reports the stage.
    pub fn finish(mut self, last_dev: Vec<(String, f64)>) -> Result<StageSummary> {
        self.bar.finish_and_clear();
        self.sinks.flush()?;
        Ok(StageSummary {
            steps: self.state.step,
            best: self
                .state
                .best
                .as_ref()
                .map(|b| (b.metric.clone(), b.value, b.step)),
            best_dir: self.best_dir(),
            last_dev,
        })
    }
}

/// What a finished stage reports.
#[derive(Debug, Clone)]
pub struct StageSummary {
    pub steps: u64,
    /// Best dev value of the stage's selection metric and its step.
    pub best: Option<(String, f64, u64)>,
    /// Where the best model was saved (an HF folder).
    pub best_dir: PathBuf,
    /// Last dev metrics.
    pub last_dev: Vec<(String, f64)>,
}
