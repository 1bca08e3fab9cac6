//! Log: the step's scalars (the batch's statistics, the pass's, where the wall clock went), and
//! after each optimizer step the dev evaluation with a few rollouts for reading, and the
//! checkpoint.

use std::io::Write;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::score::Scored;
use super::update::Pass;
use super::{DEV_VIEW, Grpo, Sampled};
use crate::error::{Error, Result};

/// Wall-clock seconds per phase of a step. `lap` waits for the device's queued work first
/// (`Backend::sync`; a no-op on the CPU backend), so asynchronous GPU backends time each phase's
/// own work rather than its launches.
pub(super) struct PhaseClock<'a, B: AutodiffBackend> {
    device: &'a B::Device,
    since: Instant,
}

impl<'a, B: AutodiffBackend> PhaseClock<'a, B> {
    pub fn start(device: &'a B::Device) -> Self {
        Self {
            device,
            since: Instant::now(),
        }
    }

    /// Seconds since the previous lap (or the start); restarts the clock.
    pub fn lap(&mut self) -> f64 {
        // a failed sync surfaces at the next tensor read with its own error; timing stays best-effort
        let _ = B::sync(self.device);
        let secs = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        secs
    }
}

/// The seconds of a batch's own phases: index refresh, decode loop, ranking + rewards +
/// advantages, reference log-probs.
pub(super) struct BatchTimes {
    secs: [f64; 4],
    /// The documents re-encoded this step (None: no refresh).
    pub refreshed_docs: Option<usize>,
}

impl BatchTimes {
    pub fn new(refresh: f64, sample: f64, rank_reward: f64, reference: f64) -> Self {
        Self {
            secs: [refresh, sample, rank_reward, reference],
            refreshed_docs: None,
        }
    }

    fn sample(&self) -> f64 {
        self.secs[1]
    }
}

/// The scalars of one optimizer step (the trainer adds `loss`, `lr`, `grad_norm`, …): the
/// figures every data-parallel worker holds whole (averaged over them: the batch's statistics
/// are the whole batch's, the times each worker's), then those each holds a share of (summed:
/// the pass's token-weighted statistics, the decode speed).
pub(super) fn scalars<B: AutodiffBackend>(
    s: &Sampled<B>,
    scored: &Scored,
    pass: &Pass,
    times: &BatchTimes,
    iteration: usize,
) -> (Vec<(String, f64)>, Vec<(String, f64)>) {
    let mut whole = scored.stats.clone();
    let mut shares: Vec<(String, f64)> = vec![
        ("clip_low".into(), pass.clip_low),
        ("clip_high".into(), pass.clip_high),
        ("clip_region".into(), pass.clip_region),
        ("kl".into(), pass.kl),
    ];
    shares.extend(pass.aux_infonce.map(|v| ("aux_infonce".into(), v)));
    // the batch's decode speed, on every μ update's line
    let rollouts_per_s = s.rollouts.len() as f64 / times.sample().max(1e-9);
    shares.push(("rollouts_per_s".into(), rollouts_per_s));
    whole.push(("time/policy_s".into(), pass.policy_secs));
    // the batch's own phases count once, on the first of its μ updates
    for (name, secs) in ["refresh_s", "sample_s", "rank_reward_s", "reference_s"]
        .iter()
        .zip(times.secs)
    {
        let secs = if iteration == 0 { secs } else { 0.0 };
        whole.push((format!("time/{name}"), secs));
    }
    if let (0, Some(docs)) = (iteration, times.refreshed_docs) {
        whole.push(("index/docs".into(), docs as f64));
        whole.push((
            "index/docs_per_s".into(),
            docs as f64 / times.secs[0].max(1e-9),
        ));
    }
    (whole, shares)
}

/// `(&str, f64)` views for [`crate::train::common::Trainer::step_parts`].
pub(super) fn pairs(scalars: &[(String, f64)]) -> Vec<(&str, f64)> {
    scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// After an optimizer step: the dev evaluation with a few of this step's rollouts written to
/// `rollouts.jsonl` and TensorBoard text when due, then the checkpoint when due.
pub(super) fn after_step<B: AutodiffBackend>(
    g: &mut Grpo<B>,
    s: &Sampled<B>,
    scored: &Scored,
) -> Result<()> {
    if g.tr.eval_due() {
        g.last_dev = g.tr.eval_dev_dense(g.ds, DEV_VIEW)?;
        dump_rollouts(g, s, scored)?;
    }
    if g.tr.save_due() {
        g.tr.save()?;
    }
    Ok(())
}

/// The first query's group of rollouts, for reading.
fn dump_rollouts<B: AutodiffBackend>(
    g: &mut Grpo<B>,
    s: &Sampled<B>,
    scored: &Scored,
) -> Result<()> {
    let batch = &s.rollouts;
    let (mut text, mut lines) = (String::new(), String::new());
    for i in 0..batch.group.min(batch.len()) {
        let q = s.target(g, i).query;
        let line = serde_json::json!({
            "step": g.tr.state.step,
            "query_id": q.id,
            "query": q.text,
            "reasoning": batch.texts[i],
            "reward": scored.combined[i],
            "advantage": scored.adv.values[i],
            "gold_rank": scored.ranks[i].0,
            "bare_gold_rank": scored.ranks[i].1,
            "truncated": batch.rollouts[i].truncated(),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
        text.push_str(&format!(
            "**{}** → {} (reward {:?})\n\n",
            q.text, batch.texts[i], scored.combined[i]
        ));
    }
    let path = &g.rollouts_path;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(lines.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    g.tr.sinks.text(g.tr.state.step, "stage3/rollouts", &text)
}
