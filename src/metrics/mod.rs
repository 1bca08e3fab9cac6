//! Where metrics go: the [`MetricsSink`] trait and its sinks — TensorBoard event files,
//! `metrics.jsonl`, the console (progress bar or plain lines) and a null sink for tests.
//!
//! Tags are `stage/metric` (e.g. `stage3/reward_mean`). Only the training loops log; losses,
//! rewards and advantages stay pure. Loops call [`MetricsSink::flush`] after every logged step,
//! so an interrupted run keeps everything up to its last step.

pub mod tensorboard;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{Error, Result};
pub use tensorboard::EventWriter;

/// A destination for scalars, text and histograms, indexed by step.
pub trait MetricsSink {
    /// Several scalars logged at the same step.
    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()>;
    /// A text entry (sampled rollouts, reports). Markdown is fine.
    fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()>;
    /// A distribution of values (rewards, advantages, ranks).
    fn histogram(&mut self, step: u64, tag: &str, values: &[f64]) -> Result<()>;
    /// Makes everything logged so far durable.
    fn flush(&mut self) -> Result<()>;
}

/// Discards everything. For tests and dry runs.
#[derive(Debug, Default)]
pub struct NullSink;

impl MetricsSink for NullSink {
    fn scalars(&mut self, _: u64, _: &[(&str, f64)]) -> Result<()> {
        Ok(())
    }
    fn text(&mut self, _: u64, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    fn histogram(&mut self, _: u64, _: &str, _: &[f64]) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// TensorBoard event files under `<run>/tensorboard/`.
pub struct TensorBoardSink {
    writer: EventWriter,
    bins: usize,
}

impl TensorBoardSink {
    pub fn create(logdir: &Path) -> Result<Self> {
        Ok(Self {
            writer: EventWriter::create(logdir)?,
            bins: 30,
        })
    }
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

impl MetricsSink for TensorBoardSink {
    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        self.writer.scalars(step, values)
    }
    fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.writer.text(step, tag, text)
    }
    fn histogram(&mut self, step: u64, tag: &str, values: &[f64]) -> Result<()> {
        self.writer.histogram(step, tag, values, self.bins)
    }
    fn flush(&mut self) -> Result<()> {
        self.writer.flush()
    }
}

/// One JSON object per line: `{"step": 3, "kind": "scalars", "values": {...}}`.
/// Appends, so a resumed run continues the same file.
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    fn line(&mut self, v: serde_json::Value) -> Result<()> {
        serde_json::to_writer(&mut self.out, &v)
            .map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl MetricsSink for JsonlSink {
    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| ((*k).to_string(), json_number(*v)))
            .collect();
        self.line(serde_json::json!({"step": step, "kind": "scalars", "values": map}))
    }
    fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.line(serde_json::json!({"step": step, "kind": "text", "tag": tag, "text": text}))
    }
    fn histogram(&mut self, step: u64, tag: &str, values: &[f64]) -> Result<()> {
        let vals: Vec<serde_json::Value> = values.iter().map(|v| json_number(*v)).collect();
        self.line(
            serde_json::json!({"step": step, "kind": "histogram", "tag": tag, "values": vals}),
        )
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Rewrites `metrics.jsonl` without the lines of steps after `step` and without a torn last
/// line, so a run resumed from the checkpoint at `step` logs each later step once. Atomic; a
/// missing file is fine. Returns the number of lines dropped.
pub fn truncate_jsonl_after(path: &Path, step: u64) -> Result<usize> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = Vec::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let whole = line.ends_with(b"\n");
        let keep = whole
            && serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step);
        if keep {
            kept.extend_from_slice(line);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        crate::fsio::write_atomic(path, &kept)?;
    }
    Ok(dropped)
}

/// Drops what a run logged after `step` from its `metrics.jsonl` and TensorBoard event files
/// (see [`truncate_jsonl_after`], [`tensorboard::truncate_after`]).
pub fn truncate_after(metrics_jsonl: &Path, tensorboard_dir: &Path, step: u64) -> Result<usize> {
    Ok(truncate_jsonl_after(metrics_jsonl, step)?
        + tensorboard::truncate_after(tensorboard_dir, step)?)
}

/// JSON has no NaN/inf: those are written as strings so nothing is silently dropped.
fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

/// A progress bar with ETA (on a terminal) or one plain line every `print_every` logged steps
/// (in logs and CI). Shows the first few scalars of each step.
pub struct ConsoleSink {
    bar: ProgressBar,
    print_every: u64,
    shown: usize,
}

impl ConsoleSink {
    /// `bar` comes from [`progress_bar`]; `shown` is how many scalars the message shows.
    pub fn new(bar: ProgressBar, print_every: u64, shown: usize) -> Self {
        Self {
            bar,
            print_every: print_every.max(1),
            shown,
        }
    }
}

impl MetricsSink for ConsoleSink {
    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let msg = values
            .iter()
            .take(self.shown)
            // drop the stage prefix: `stage1/dev/loss` shows as `dev/loss`
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    k.split_once('/').map_or(*k, |(_, r)| r),
                    fmt_num(*v)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        if self.bar.is_hidden() {
            if step % self.print_every == 0 {
                eprintln!("step {step}: {msg}");
            }
        } else {
            self.bar.set_message(msg);
        }
        Ok(())
    }
    fn text(&mut self, _: u64, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    fn histogram(&mut self, _: u64, _: &str, _: &[f64]) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

fn fmt_num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// A progress bar with ETA; hidden when `mode` is `never`, or `auto` and stderr is no terminal.
/// When a progress bar is drawn (`logging.progress`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// Only on a terminal.
    #[default]
    Auto,
    Always,
    Never,
}

/// A warning above the progress bar — or on stderr when the bar is hidden (`logging.progress =
/// "never"`, or not a terminal), where indicatif's `println` would print nothing.
pub fn warn(bar: &ProgressBar, msg: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        bar.println(msg.as_ref());
    }
}

pub fn progress_bar(len: u64, label: &str, mode: ProgressMode) -> ProgressBar {
    let visible = match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    if !visible {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Fans out to several sinks; the first error wins but every sink is still called.
#[derive(Default)]
pub struct MultiSink {
    sinks: Vec<Box<dyn MetricsSink>>,
}

impl MultiSink {
    pub fn new(sinks: Vec<Box<dyn MetricsSink>>) -> Self {
        Self { sinks }
    }
    pub fn push(&mut self, sink: Box<dyn MetricsSink>) {
        self.sinks.push(sink);
    }
    fn each(&mut self, mut f: impl FnMut(&mut dyn MetricsSink) -> Result<()>) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = f(s.as_mut());
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl MetricsSink for MultiSink {
    fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        self.each(|s| s.scalars(step, values))
    }
    fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        self.each(|s| s.text(step, tag, text))
    }
    fn histogram(&mut self, step: u64, tag: &str, values: &[f64]) -> Result<()> {
        self.each(|s| s.histogram(step, tag, values))
    }
    fn flush(&mut self) -> Result<()> {
        self.each(|s| s.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_sink_keeps_non_finite_values_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut s = JsonlSink::open(&p).unwrap();
        s.scalars(3, &[("a/x", 1.5), ("a/y", f64::NAN)]).unwrap();
        s.text(3, "a/t", "hello").unwrap();
        s.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["step"], 3);
        assert_eq!(lines[0]["values"]["a/x"], 1.5);
        assert_eq!(lines[0]["values"]["a/y"], "NaN");
        assert_eq!(lines[1]["text"], "hello");
    }
}
