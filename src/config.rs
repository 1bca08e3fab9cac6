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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    #[default]
    Auto,
    Always,
    Never,
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
    /// What text stands for the query: `bare` (the query alone) or `gold_reasoning`
    /// (query + its gold reasoning from `queries.jsonl`). Default `bare`.
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryView {
    /// The query text alone.
    #[default]
    Bare,
    /// The query followed by its gold reasoning (an upper bound for what reasoning can add).
    GoldReasoning,
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
        let base = path.parent().unwrap_or(Path::new("."));
        let name = &self.run.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(err(
                "run.name",
                format!(
                    "run name {name:?} must be non-empty and use only letters, digits, '-', '_', '.'"
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
        let run_dir = output_dir.join(&self.run.name);
        Ok(Config {
            source: path.to_path_buf(),
            raw: self,
            run_dir,
        })
    }
}

/// `p` against `base`, with `.` and `..` folded lexically (`configs/../runs` → `runs`).
fn resolve(base: &Path, p: &Path) -> PathBuf {
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

/// Reads a TOML file into `T`, applying `key.path=value` overrides.
///
/// Errors from the file name `file:line:col`, the enclosing `[section]` and the key on that line;
/// errors that only appear after overrides name the overrides.
pub fn load_toml<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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
