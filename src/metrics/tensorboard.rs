//! TensorBoard event files, written synchronously.
//!
//! We use `tensorboard-rs` for what it does well — TFRecord framing with masked CRC32C
//! (`RecordWriter`) and the scalar/histogram summary builders — and `tensorboard-proto` for the
//! messages, but not its `SummaryWriter`, whose defects (0.5.9) we contain here:
//!
//! | tensorboard-rs 0.5.9 defect | here |
//! |---|---|
//! | file name ends in `.0`, a second writer in the same second truncates the first | name carries pid + a process-wide counter, and the file is opened with `create_new` (never truncates) |
//! | `flush()` only signals a background thread; data safe only after drop | no thread: `flush()` writes through and `fsync`s before returning; the loops flush every logged step |
//! | `add_text` / `add_histogram` are `unimplemented!()` | text is a `DT_STRING` tensor with the `text` plugin's metadata; histograms are `HistogramProto`s |
//! | I/O errors panic | every call returns `Result` |
//!
//! A record is either fully written or (on `kill -9` mid-write) a torn tail that TensorBoard's
//! reader stops at; every record flushed before is intact.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::{Message, RepeatedField};
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::{
    Summary, Summary_Value, SummaryMetadata, SummaryMetadata_PluginData,
};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::TensorShapeProto;
use tensorboard_proto::types::DataType;
use tensorboard_rs::record_writer::RecordWriter;

use crate::error::{Error, Result};

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One TensorBoard event file.
pub struct EventWriter {
    path: PathBuf,
    records: RecordWriter<BufWriter<File>>,
    /// Kept to `fsync` on flush (the `RecordWriter` owns the buffered handle).
    file: File,
}

impl EventWriter {
    /// Creates a new, uniquely named event file in `logdir` (created if missing).
    pub fn create(logdir: &Path) -> Result<Self> {
        std::fs::create_dir_all(logdir).map_err(|e| Error::io(logdir, e))?;
        let now = wall_time();
        let host = gethostname::gethostname()
            .to_string_lossy()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
        let pid = std::process::id();
        loop {
            let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("events.out.tfevents.{:010}.{host}.{pid}.{n}", now as u64);
            let path = logdir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let sync_handle = file.try_clone().map_err(|e| Error::io(&path, e))?;
                    let mut w = EventWriter {
                        path,
                        records: RecordWriter::new(BufWriter::new(file)),
                        file: sync_handle,
                    };
                    let mut ev = Event::new();
                    ev.set_wall_time(now);
                    ev.set_file_version("brain.Event:2".to_string());
                    w.write_event(&ev)?;
                    w.flush()?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Several scalars at one step, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Summary::new();
        for (tag, v) in values {
            let mut value = Summary_Value::new();
            value.set_tag((*tag).to_string());
            value.set_simple_value(*v as f32);
            summary.mut_value().push(value);
        }
        self.summary(step, summary)
    }

    /// A text entry (shown in TensorBoard's Text tab; Markdown is rendered).
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<()> {
        let mut plugin = SummaryMetadata_PluginData::new();
        plugin.set_plugin_name("text".to_string());
        let mut meta = SummaryMetadata::new();
        meta.set_plugin_data(plugin);
        let mut tensor = TensorProto::new();
        tensor.set_dtype(DataType::DT_STRING);
        tensor.set_tensor_shape(TensorShapeProto::new()); // a scalar string
        tensor.set_string_val(RepeatedField::from_vec(vec![text.as_bytes().to_vec()]));
        let mut value = Summary_Value::new();
        value.set_tag(tag.to_string());
        value.set_metadata(meta);
        value.set_tensor(tensor);
        let mut summary = Summary::new();
        summary.mut_value().push(value);
        self.summary(step, summary)
    }

    /// A histogram of `values` with `bins` equal-width buckets (non-finite values are skipped
    /// and do not count).
    pub fn histogram(&mut self, step: u64, tag: &str, values: &[f64], bins: usize) -> Result<()> {
        let h = Histogram::of(values, bins.max(1));
        let summary = tensorboard_rs::summary::histogram_raw(
            tag,
            h.min,
            h.max,
            h.num,
            h.sum,
            h.sum_squares,
            &h.limits,
            &h.counts,
        );
        self.summary(step, summary)
    }

    fn summary(&mut self, step: u64, summary: Summary) -> Result<()> {
        let mut ev = Event::new();
        ev.set_wall_time(wall_time());
        ev.set_step(step as i64);
        ev.set_summary(summary);
        self.write_event(&ev)
    }

    fn write_event(&mut self, ev: &Event) -> Result<()> {
        let bytes = ev
            .write_to_bytes()
            .map_err(|e| Error::Runtime(format!("cannot encode a TensorBoard event: {e}")))?;
        self.records
            .write(&bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Writes everything buffered to the file and `fsync`s it.
    pub fn flush(&mut self) -> Result<()> {
        self.records.flush().map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Errors are reported by explicit `flush()` calls; a drop can only try.
        let _ = self.flush();
    }
}

/// Equal-width histogram in TensorBoard's `HistogramProto` shape (right bucket edges).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub min: f64,
    pub max: f64,
    pub num: f64,
    pub sum: f64,
    pub sum_squares: f64,
    /// Right edge of each bucket; the first bucket starts at `min`.
    pub limits: Vec<f64>,
    pub counts: Vec<f64>,
}

impl Histogram {
    pub fn of(values: &[f64], bins: usize) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Histogram {
                min: 0.0,
                max: 0.0,
                num: 0.0,
                sum: 0.0,
                sum_squares: 0.0,
                limits: vec![0.0],
                counts: vec![0.0],
            };
        }
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let width = if max > min {
            (max - min) / bins as f64
        } else {
            1.0
        };
        let bins = if max > min { bins } else { 1 };
        let mut counts = vec![0.0; bins];
        for v in &finite {
            let i = (((v - min) / width) as usize).min(bins - 1);
            counts[i] += 1.0;
        }
        let limits = (1..=bins)
            .map(|i| {
                if i == bins {
                    max
                } else {
                    min + width * i as f64
                }
            })
            .collect();
        Histogram {
            min,
            max,
            num: finite.len() as f64,
            sum: finite.iter().sum(),
            sum_squares: finite.iter().map(|v| v * v).sum(),
            limits,
            counts,
        }
    }
}

/// Rewrites every event file in `logdir` without the events of steps after `step` (a resume
/// from the checkpoint at `step` logs them again) and without a torn last record (a `kill -9`
/// mid-write). Records are framed and CRC-checked as TFRecord readers do; a file is rewritten
/// atomically and only when something is dropped. Returns the number of events dropped.
pub fn truncate_after(logdir: &Path, step: u64) -> Result<usize> {
    use tensorboard_rs::masked_crc32c::masked_crc32c;
    let Ok(entries) = std::fs::read_dir(logdir) else {
        return Ok(0);
    };
    let mut dropped = 0;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut kept = Vec::with_capacity(bytes.len());
        let mut at = 0;
        let mut changed = false;
        while at < bytes.len() {
            let record = (|| {
                let header = bytes.get(at..at + 8)?;
                let len = u64::from_le_bytes(header.try_into().ok()?) as usize;
                let header_crc = u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().ok()?);
                if masked_crc32c(header) != header_crc {
                    return None;
                }
                let data = bytes.get(at + 12..(at + 12).checked_add(len)?)?;
                let end = at + 12 + len + 4;
                let crc = u32::from_le_bytes(bytes.get(at + 12 + len..end)?.try_into().ok()?);
                (masked_crc32c(data) == crc).then_some((data, end))
            })();
            let Some((data, end)) = record else {
                changed = true; // a torn or corrupt tail: nothing after it is readable
                break;
            };
            let keep = match Event::parse_from_bytes(data) {
                Ok(ev) => ev.get_step() <= step as i64,
                Err(_) => false,
            };
            if keep {
                kept.extend_from_slice(&bytes[at..end]);
            } else {
                dropped += 1;
                changed = true;
            }
            at = end;
        }
        if changed {
            crate::fsio::write_atomic(&path, &kept)?;
        }
    }
    Ok(dropped)
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_finite_value_once() {
        let h = Histogram::of(&[0.0, 1.0, 2.0, 3.0, f64::NAN, 4.0], 4);
        assert_eq!(h.num, 5.0);
        assert_eq!(h.counts.iter().sum::<f64>(), 5.0);
        assert_eq!(h.counts, vec![1.0, 1.0, 1.0, 2.0]);
        assert_eq!(*h.limits.last().unwrap(), 4.0);
        let flat = Histogram::of(&[2.0, 2.0], 10);
        assert_eq!(flat.counts, vec![2.0]);
    }

    #[test]
    fn two_writers_in_one_directory_get_distinct_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
