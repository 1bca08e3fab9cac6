//! Checkpoints: everything `--resume` needs to continue a run exactly, written atomically.
//!
//! ```text
//! runs/<name>/checkpoints/
//!   step-000120/            one checkpoint (written as .tmp-step-000120/, then renamed)
//!     config.json, model.safetensors, tokenizer.json[, tokenizer_config.json]   HF folder (f32)
//!       — or, with [lora], adapter_config.json + adapter_model.safetensors (PEFT's format,
//!       the adapters and trainable token rows only; the base is rebuilt from the config)
//!     optimizer.mpk         AdamW moments, keyed by parameter order (not burn's random ids)
//!     state.json            step, epoch, data position, RNG state, best dev metric, stage
//!     SHA256SUMS            SHA-256 of every file above (`sha256sum -c` format), written last
//!   latest                  name of the newest checkpoint (for people; resume scans step-*)
//! ```
//!
//! The model goes to disk in HF format (a LoRA run's as a PEFT adapter), so every checkpoint is
//! also a model transformers (+ peft) loads.
//! Loading gives fresh burn parameter ids, so the optimizer record is saved with ids replaced by
//! each parameter's position in module order and mapped back to the new ids on load.
//!
//! A checkpoint is verified against its `SHA256SUMS` before anything is loaded: a corrupted or
//! truncated file is an error naming it, never a silently different model. A failed write (disk
//! full, folder unwritable) removes its temp folder and leaves every older checkpoint untouched.

use hashbrown::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::model::peft::{self, Adapter};
use crate::model::{Decoder, T1Tokenizer, load_hf};

/// A ChaCha8 stream's exact position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Word position as a decimal string (u128 does not fit JSON numbers).
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        let pos: u128 = self
            .word_pos
            .parse()
            .map_err(|_| Error::Runtime(format!("bad RNG word position {:?}", self.word_pos)))?;
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// The best periodic-eval result so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub metric: String,
    pub value: f64,
    pub step: u64,
    /// Checkpoint folder name holding it.
    pub checkpoint: String,
}

/// Loop position and bookkeeping saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// `stage1`, `stage2`, `stage3`.
    pub stage: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch the next batch comes from (0-based).
    pub epoch: u64,
    /// Examples of that epoch's order already consumed.
    pub position: usize,
    pub rng: RngState,
    pub best: Option<Best>,
    /// Hash of the resolved config the run started with (a resume under another config is refused).
    pub config_hash: String,
    /// Steps skipped because their loss or gradients were not finite: in all, and in a row now.
    #[serde(default)]
    pub nonfinite_steps: u64,
    #[serde(default)]
    pub nonfinite_in_a_row: u64,
    /// LoRA runs: the frozen base's [`base_fingerprint`], so a resume that rebuilds the base
    /// from the config (a preset, `model.path`, a previous stage's adapter folder) can tell when
    /// it no longer gives the base the adapters were trained on. Absent for full fine-tuning and
    /// in checkpoints of older versions (not checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<Vec<[f64; 3]>>,
}

/// A content fingerprint of a model's weights: per float parameter, in module order, its element
/// count, sum and sum of squares (in f64 of the backend's f32 reductions). Cheap on any backend
/// (two reductions a tensor, no copy to the host), and compared with a tolerance
/// ([`fingerprint_mismatch`]) so the same weights on another backend — other reduction orders —
/// still match.
pub fn base_fingerprint<B: Backend, M: Module<B>>(model: &M) -> Vec<[f64; 3]> {
    struct Stats(Vec<[f64; 3]>);
    impl<B: Backend> ModuleVisitor<B> for Stats {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            use burn::tensor::ElementConversion;
            let t = p.val().cast(burn::tensor::FloatDType::F32);
            let n = t.shape().num_elements() as f64;
            let sum: f64 = t.clone().sum().into_scalar().elem();
            let sq: f64 = t.square().sum().into_scalar().elem();
            self.0.push([n, sum, sq]);
        }
    }
    let mut stats = Stats(Vec::new());
    model.visit(&mut stats);
    stats.0
}

/// Where two [`base_fingerprint`]s differ (`None`: the same weights). A parameter differs when
/// its size does, its sum of squares by more than 1e-5 of itself, or its sum by more than 1e-5
/// of √(n·Σx²) — the largest |Σx| can be — far above f32 summation error (≈ 1e-6 of that at
/// these sizes) and far below what a changed model moves.
pub fn fingerprint_mismatch(saved: &[[f64; 3]], now: &[[f64; 3]]) -> Option<String> {
    if saved.len() != now.len() {
        return Some(format!(
            "{} weight tensors now, {} then",
            now.len(),
            saved.len()
        ));
    }
    let tol = 1e-5;
    saved.iter().zip(now).enumerate().find_map(|(i, (a, b))| {
        let differs = a[0] != b[0]
            || !((a[2] - b[2]).abs() <= tol * a[2].abs().max(b[2].abs()))
            || !((a[1] - b[1]).abs() <= tol * (a[0] * a[2].max(b[2])).sqrt());
        differs.then(|| {
            format!(
                "weight tensor {} of {} (module order): {} elements, sum {:.6e}, sum of squares \
                 {:.6e} now; {} elements, sum {:.6e}, sum of squares {:.6e} then",
                i + 1,
                now.len(),
                b[0],
                b[1],
                b[2],
                a[0],
                a[1],
                a[2]
            )
        })
    })
}

/// Parameter ids in module order.
fn param_ids<B: Backend, M: Module<B>>(model: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.id);
        }
    }
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// Re-keys an optimizer record from `from[i]` to `to[i]`.
fn rekey<V>(record: HashMap<ParamId, V>, from: &[ParamId], to: &[ParamId]) -> HashMap<ParamId, V> {
    let index: HashMap<ParamId, ParamId> = from.iter().copied().zip(to.iter().copied()).collect();
    record
        .into_iter()
        .filter_map(|(k, v)| index.get(&k).map(|n| (*n, v)))
        .collect()
}

fn ordinal_ids(n: usize) -> Vec<ParamId> {
    (0..n as u64).map(ParamId::from).collect()
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// The checkpoints folder of a run.
pub fn root(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes checkpoint `step-NNNNNN` atomically and points `latest` at it. Returns its folder name.
pub fn save<B: Backend, V: Record<B>>(
    run_dir: &Path,
    model: &Decoder<B>,
    adapter: Option<&Adapter>,
    tokenizer: &T1Tokenizer,
    optimizer: HashMap<ParamId, V>,
    state: &TrainState,
    extra: Option<&StageFiles>,
) -> Result<String> {
    let root = root(run_dir);
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let written = write_folder(&tmp, model, adapter, tokenizer, optimizer, state, extra)
        .and_then(|()| crate::fsio::replace_dir(&tmp, &root.join(&name)));
    if let Err(e) = written {
        // free what the half-written folder holds (a full disk is the usual cause)
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Runtime(format!(
            "checkpoint {name} was not written ({e}); {}",
            how_to_go_on(run_dir)
        )));
    }
    write_atomic(&root.join("latest"), name.as_bytes())?;
    Ok(name)
}

/// What to tell a user after a failed write into a run folder: the checkpoint that survives and
/// how to continue from it.
pub fn how_to_go_on(run_dir: &Path) -> String {
    let previous = latest(run_dir)
        .ok()
        .flatten()
        .map(|p| format!("the latest checkpoint {} is intact", p.display()))
        .unwrap_or_else(|| "no earlier checkpoint exists".to_string());
    format!("{previous}. Free space or fix the folder's permissions, then continue with --resume")
}

/// Everything of one checkpoint into `tmp` (created afresh), `SHA256SUMS` last.
fn write_folder<B: Backend, V: Record<B>>(
    tmp: &Path,
    model: &Decoder<B>,
    adapter: Option<&Adapter>,
    tokenizer: &T1Tokenizer,
    optimizer: HashMap<ParamId, V>,
    state: &TrainState,
    extra: Option<&StageFiles>,
) -> Result<()> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    }
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    peft::save_model(model, adapter, tmp)?;
    tokenizer.save(&tmp.join("tokenizer.json"))?;
    let ids = param_ids(model);
    let record = rekey(optimizer, &ids, &ordinal_ids(ids.len()));
    recorder()
        .record(record, tmp.join("optimizer"))
        .map_err(|e| {
            Error::Runtime(format!(
                "{}: cannot write optimizer state: {e}",
                tmp.display()
            ))
        })?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::Runtime(format!("cannot serialise the train state: {e}")))?;
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    if let Some(write) = extra {
        write(tmp, state.step)?;
    }
    crate::checksums::write(tmp)
}

/// A stage's own files in a checkpoint (stage 3: the document index in force when the step is
/// not one it re-encodes at), written into the checkpoint folder `(dir, step)` before its
/// checksums.
pub type StageFiles = Box<dyn Fn(&Path, u64) -> Result<()>>;

/// The newest complete checkpoint of a run, if any: the highest `step-N` folder (a folder only
/// gets that name once everything in it is written). The `latest` file is for people and tools;
/// it is not trusted here, since a crash between the rename and its update would leave it behind.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = root(run_dir);
    if !root.exists() {
        return Ok(None);
    }
    let newest = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .exists()
                .then_some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step);
    Ok(newest.map(|(_, p)| p))
}

/// Loads a checkpoint: model (on `device`), optimizer record keyed to the new model's ids, state.
/// A LoRA checkpoint's adapters are attached to what `base` returns (called only for one).
pub fn load<B: Backend, V: Record<B>>(
    dir: &Path,
    device: &B::Device,
    base: impl FnOnce() -> Result<Decoder<B>>,
) -> Result<(Decoder<B>, HashMap<ParamId, V>, TrainState)> {
    // load_hf below verifies every file SHA256SUMS lists (optimizer and state included)
    if !dir.join(crate::checksums::FILE).exists() {
        return Err(Error::Runtime(format!(
            "{}: no {} — the checkpoint cannot be verified and is not loaded (written by an older \
             t1-train, or copied incompletely)",
            dir.display(),
            crate::checksums::FILE
        )));
    }
    // every file a checkpoint needs must be listed (an emptied or partial SHA256SUMS would
    // otherwise let an altered file through); load_hf checks the model's files
    crate::checksums::verify_listing(dir, &["optimizer.mpk", "state.json"])?;
    let model: Decoder<B> = if peft::is_adapter_dir(dir) {
        crate::checksums::verify_listing(dir, &[peft::CONFIG, peft::WEIGHTS, "tokenizer.json"])?;
        crate::checksums::verify(dir)?;
        peft::load_peft(base()?, dir)?.0
    } else {
        load_hf(dir, device)?
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        Error::data(
            &state_path,
            e.line(),
            None,
            format!("malformed train state: {e}"),
        )
    })?;
    let record: HashMap<ParamId, V> =
        recorder()
            .load(dir.join("optimizer"), device)
            .map_err(|e| {
                Error::Runtime(format!(
                    "{}: cannot read optimizer state: {e}",
                    dir.display()
                ))
            })?;
    let ids = param_ids(&model);
    let record = rekey(record, &ordinal_ids(ids.len()), &ids);
    Ok((model, record, state))
}

/// Deletes old `step-*` checkpoints, keeping the newest `keep` and any named in `protect`.
pub fn prune(run_dir: &Path, keep: usize, protect: &[&str]) -> Result<()> {
    let root = root(run_dir);
    // ordered by the parsed step, not the name: `step-1000001` sorts before `step-999999` as text
    let mut names: Vec<(u64, String)> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter_map(|n| Some((n.strip_prefix("step-")?.parse::<u64>().ok()?, n)))
        .collect();
    names.sort();
    let cut = names.len().saturating_sub(keep);
    for (_, n) in &names[..cut] {
        if !protect.contains(&n.as_str()) {
            let p = root.join(n);
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_is_the_highest_complete_step_whatever_the_pointer_says() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(latest(run).unwrap(), None);
        for (name, complete) in [
            ("step-000004", true),
            ("step-000012", true),
            ("step-000020", false),
            (".tmp-step-000024", true),
        ] {
            let d = root(run).join(name);
            std::fs::create_dir_all(&d).unwrap();
            if complete {
                std::fs::write(d.join("state.json"), "{}").unwrap();
            }
        }
        // a stale pointer (a crash after the rename, before `latest` was rewritten)
        std::fs::write(root(run).join("latest"), "step-000004").unwrap();
        assert_eq!(latest(run).unwrap(), Some(root(run).join("step-000012")));
    }

    #[test]
    fn pruning_orders_by_step_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        for name in ["step-999998", "step-999999", "step-1000000", "step-1000001"] {
            std::fs::create_dir_all(root(run).join(name)).unwrap();
        }
        prune(run, 2, &[]).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(root(run))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-1000000", "step-1000001"]);
    }
}
