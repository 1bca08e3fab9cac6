//! Configuration: TOML → raw serde structs (`deny_unknown_fields`) → [`RawConfig::validate`] →
//! [`Config`] (paths resolved against the config file's folder, cross-field checks done once).
//!
//! One file per section, each with its knobs, their defaults (on the field, via
//! `serde_inline_default`), their docs and its own `validate`, as TRL's `grpo_config.py`:
//! [`run`](RunSection), [`data`](DataSection), [`logging`](LoggingSection),
//! [`eval`](EvalSection), [`model`](ModelSection), [`train`](TrainSection),
//! [`stage2`](Stage2Section), [`stage3`](Stage3Section), [`latent`](LatentSection),
//! [`lora`](LoraSection). Checks that span sections live in [`RawConfig::validate`]. The field
//! docs and defaults are also the reference table in docs/configuration.md
//! (`t1-train config-reference`, [`reference_table`]; a test keeps the two equal).
//!
//! Errors name the file, line and key:
//! `configs/x.toml:12:1: unknown field 'lernig_rate' in [eval], expected one of ...`.
//! `--set key=value` overrides are applied to the parsed table before deserialising; an error
//! that only the override causes names the override.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod data;
mod eval;
mod file;
mod latent;
mod logging;
mod lora;
mod model;
mod reference;
mod run;
mod stage2;
mod stage3;
mod train;

pub use data::DataSection;
pub use eval::{EvalSection, QueryView, RetrieverKind};
pub use file::{load_toml, read_config, resolve};
pub use latent::{LatentFeed, LatentPooling, LatentSection, Trajectory};
pub use logging::LoggingSection;
pub use lora::{BaseDType, LoraSection, LoraTarget};
pub use model::{MODEL_PRESETS, ModelSection};
pub use reference::{reference_table, splice_reference};
pub use run::RunSection;
pub use stage2::Stage2Section;
pub use stage3::{KlEstimator, LossType, ScaleRewards, Stage3Section};
pub use train::{Schedule, TrainSection};

/// A whole run configuration, as written in TOML.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
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
    #[serde(default, skip_serializing_if = "is_default")]
    pub latent: LatentSection,
    /// LoRA adapters instead of full fine-tuning (any stage). Written to the resolved config
    /// only when it differs from the defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lora: LoraSection,
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
            toml::from_str(&src).map_err(|e| file::located_error(path, &src, &e))?;
        for ov in overrides {
            file::apply_override(&mut table, ov)?;
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
            message: file::tidy(e.message()),
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
    /// Each section's own checks and path resolution in turn, then the checks that span
    /// sections, once, at load.
    pub fn validate(mut self, path: &Path) -> Result<Config> {
        // paths resolve against the config's folder made absolute, so a run means the same
        // whichever working directory or spelling of the config path started it
        let parent = path.parent().unwrap_or(Path::new("."));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let base = std::path::absolute(parent).map_err(|e| Error::io(parent, e))?;
        let c = Ctx {
            file: path,
            base: &base,
        };
        self.run.validate(&c)?;
        self.data.validate(&c)?;
        let output_dir = self.run.resolve_output_dir(&c);
        self.logging.validate(&c)?;
        self.eval.validate(&c)?;
        // across sections: dense retrieval encodes with the [model]
        if self.eval.retriever == RetrieverKind::Dense && self.model.is_none() {
            return Err(c.err("eval.retriever", "dense retrieval needs a [model] section"));
        }
        if let Some(m) = &mut self.model {
            m.validate(&c)?;
        }
        self.train.validate(&c)?;
        self.stage2.validate(&c)?;
        self.latent.validate(&c)?;
        self.stage3.validate(&c)?;
        self.lora.validate(&c)?;
        let run_dir = output_dir.join(&self.run.name);
        Ok(Config {
            source: path.to_path_buf(),
            raw: self,
            run_dir,
        })
    }
}

/// What a section's `validate` needs: the file for error locations, its folder for paths.
struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Ctx<'_> {
    /// A config error at `key`: `<file> (key 'stage3.epsilon'): message`.
    fn err(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Config {
            location: format!("{} (key '{key}')", self.file.display()),
            message: message.into(),
        }
    }

    /// `p` against the config's folder.
    fn resolve(&self, p: &Path) -> PathBuf {
        resolve(self.base, p)
    }

    /// Each count at least `min`, else "must be at least {min}{why}" at its key.
    fn at_least(&self, min: u64, why: &str, counts: &[(&str, u64)]) -> Result<()> {
        match counts.iter().find(|(_, n)| *n < min) {
            Some((key, _)) => Err(self.err(key, format!("must be at least {min}{why}"))),
            None => Ok(()),
        }
    }

    /// Each value finite and > 0.
    fn positive<T: Number>(&self, values: &[(&str, T)]) -> Result<()> {
        self.finite_where(values, "> 0", |v| v > 0.0)
    }

    /// Each value finite and ≥ 0.
    fn non_negative<T: Number>(&self, values: &[(&str, T)]) -> Result<()> {
        self.finite_where(values, "≥ 0", |v| v >= 0.0)
    }

    /// Each value in `[0, 1)` (`closed`: `[0, 1]`).
    fn unit<T: Number>(&self, closed: bool, values: &[(&str, T)]) -> Result<()> {
        let range = if closed { "[0, 1]" } else { "[0, 1)" };
        let inside = |v: f64| v >= 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
        match values.iter().find(|(_, v)| !inside((*v).into())) {
            Some((key, v)) => Err(self.err(key, format!("must be in {range}, got {v}"))),
            None => Ok(()),
        }
    }

    fn finite_where<T: Number>(
        &self,
        values: &[(&str, T)],
        what: &str,
        ok: fn(f64) -> bool,
    ) -> Result<()> {
        let bad = |v: f64| !(v.is_finite() && ok(v));
        match values.iter().find(|(_, v)| bad((*v).into())) {
            Some((key, v)) => Err(self.err(key, format!("must be {what} and finite, got {v}"))),
            None => Ok(()),
        }
    }
}

/// A float knob, printed as written in an error (an f32 is not widened first).
trait Number: Copy + Into<f64> + std::fmt::Display {}
impl Number for f32 {}
impl Number for f64 {}

/// `Default` for sections whose every field has a serde default: the section read from an
/// empty table, so the defaults are written once, on the fields.
macro_rules! default_from_empty_table {
    ($($section:ty),+) => {$(
        impl Default for $section {
            fn default() -> Self {
                toml::from_str("").expect(concat!("every field of ", stringify!($section), " has a default"))
            }
        }
    )+};
}

default_from_empty_table!(
    LoggingSection,
    EvalSection,
    TrainSection,
    Stage2Section,
    Stage3Section,
    LatentSection,
    LoraSection
);

/// A section left out of the resolved config while it holds its defaults.
fn is_default<T: Default + PartialEq>(section: &T) -> bool {
    *section == T::default()
}

/// For `#[schemars(skip_serializing_if = "never")]`: a field left out of the resolved config at
/// its default (to keep older config hashes) still shows that default in the reference table.
fn never<T>(_: &T) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default's data and `extra`, validated as if read from configs/.
    fn check(extra: &str) -> Result<Config> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = format!(
            "[run]\nname = \"t\"\n[data]\ndataset = \"../curricula/default/data\"\n{extra}"
        );
        let raw: RawConfig = toml::from_str(&text).expect("parses");
        raw.validate(&root.join("configs/x.toml"))
    }

    #[test]
    fn every_float_knob_refuses_non_finite_values_naming_its_key() {
        assert!(check("").is_ok());
        let knobs = [
            "eval.bm25_k1",
            "eval.bm25_b",
            "model.repetition_penalty",
            "train.lr",
            "train.min_lr_ratio",
            "train.weight_decay",
            "train.beta1",
            "train.beta2",
            "train.eps",
            "train.max_grad_norm",
            "stage2.temperature",
            "stage2.sft_weight",
            "stage3.epsilon",
            "stage3.epsilon_high",
            "stage3.beta",
            "stage3.temperature",
            "stage3.top_p",
            "stage3.aux_infonce_weight",
            "stage3.aux_infonce_temperature",
            "latent.soft_temperature",
            "latent.temperature",
            "latent.teacher_temperature",
            "latent.explicit_weight",
            "latent.output_weight",
            "latent.trajectory_weight",
            "latent.sft_weight",
            "lora.alpha",
            "lora.dropout",
        ];
        for knob in knobs {
            let (section, key) = knob.split_once('.').unwrap();
            for bad in ["nan", "inf", "-inf", "-1.0"] {
                let e = match check(&format!("[{section}]\n{key} = {bad}\n")) {
                    Ok(_) => panic!("{knob} = {bad} accepted"),
                    Err(e) => e.to_string(),
                };
                assert!(e.contains(&format!("'{knob}'")), "{knob} = {bad}: {e}");
            }
        }
    }

    #[test]
    fn counts_below_their_minimum_are_refused_naming_the_key() {
        for (knob, min) in [
            ("train.batch_size", 1),
            ("train.grad_accum", 1),
            ("logging.log_every", 1),
            ("stage2.group_size", 1),
            ("stage3.group_size", 2),
            ("stage3.iterations", 1),
            ("latent.steps", 1),
            ("lora.rank", 1),
        ] {
            let (section, key) = knob.split_once('.').unwrap();
            let e = check(&format!("[{section}]\n{key} = {}\n", min - 1))
                .err()
                .unwrap_or_else(|| panic!("{knob} = {} accepted", min - 1))
                .to_string();
            assert!(
                e.contains(&format!("'{knob}'")) && e.contains(&format!("at least {min}")),
                "{e}"
            );
            assert!(
                check(&format!("[{section}]\n{key} = {min}\n")).is_ok(),
                "{knob} = {min} refused"
            );
        }
    }
}
