//! Data-parallel training over burn-collective: which worker this process is, the exchange of
//! each step's gradients, and the watchdog that turns a dead or hung peer into an error.
//!
//! A run on several workers is one process per device (`t1-train stage1 --workers N`, or
//! `--nodes M --node-rank R --coordinator HOST:PORT` on each of M machines; `run::launch` starts
//! and watches them). Every worker reads the same config, draws the same examples in the same order,
//! and runs its own share of each step ([`World::owns`], [`World::block`]: stage 1's micro-batches,
//! the contrastive stages' queries, stage 3's rollouts); [`World::all_gather`] shares what a step
//! needs whole (contrastive vectors, stage 3's rewards, index blocks), and
//! [`World::all_reduce_grads`] sums the gradients (and the step's logged figures) so that every
//! worker takes the same optimizer step. Rank 0 alone writes the run folder: logs, TensorBoard,
//! checkpoints, `best/`.
//!
//! burn-collective (pinned with burn) does the exchange: each process registers as one of its
//! "nodes" with one device, rank 0 runs its global orchestrator on the coordinator's port, and
//! an all-reduce runs its ring over the nodes' own data services. Its calls block without a
//! deadline, so every call here runs under a watchdog: past `--dist-timeout` seconds the process
//! prints which call on which step got no answer and exits (code 1) — a peer that died or hangs
//! stops the others within a bounded time instead of forever (the launcher also stops every
//! worker as soon as one exits with an error).
//!
//! Why not `GradientsParams::all_reduce` (burn-optim's `collective` feature): it reduces one
//! tensor per parameter in the order of their `ParamId`s, which are drawn at random in every
//! process, so two processes could pair different parameters. Here the gradients travel as one
//! flat tensor in the model's own parameter order.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Error, Result};

/// Environment variables the launcher hands each worker (and a user may set to start workers
/// by hand, as torchrun's `RANK` / `WORLD_SIZE` / `MASTER_ADDR`).
pub const ENV_RANK: &str = "T1_RANK";
pub const ENV_WORLD_SIZE: &str = "T1_WORLD_SIZE";
pub const ENV_COORDINATOR: &str = "T1_COORDINATOR";
pub const ENV_NODE_HOST: &str = "T1_NODE_HOST";
pub const ENV_PORT: &str = "T1_WORKER_PORT";
pub const ENV_TIMEOUT: &str = "T1_DIST_TIMEOUT";

/// `--dist-timeout`'s default, seconds: how long a collective call may wait for the other
/// workers (torch.distributed's default is 30 minutes too; a dev evaluation on rank 0 runs
/// while the others wait).
pub const DEFAULT_TIMEOUT_S: u64 = 1800;

/// This process's place among the workers of a run.
#[derive(Debug)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    watchdog: Option<Watchdog>,
}

static WORLD: OnceLock<World> = OnceLock::new();
static SINGLE: World = World {
    rank: 0,
    size: 1,
    watchdog: None,
};

/// The run's workers: the one [`init`] set up, or a single process.
pub fn world() -> &'static World {
    WORLD.get().unwrap_or(&SINGLE)
}

/// What a worker needs to join the others (from the launcher's environment variables).
#[derive(Debug, Clone)]
pub struct Join {
    pub rank: usize,
    pub size: usize,
    /// `HOST:PORT` of rank 0's orchestrator.
    pub coordinator: String,
    /// The host other workers reach this one at.
    pub host: String,
    /// This worker's own port (its data service).
    pub port: u16,
    pub timeout: Duration,
}

impl Join {
    /// From `T1_RANK`, `T1_WORLD_SIZE`, …: `None` when `T1_RANK` is unset (not a worker).
    pub fn from_env() -> Result<Option<Join>> {
        let Ok(rank) = std::env::var(ENV_RANK) else {
            return Ok(None);
        };
        let var = |k: &str| {
            std::env::var(k).map_err(|_| {
                Error::Usage(format!(
                    "{ENV_RANK} is set, so this process is a data-parallel worker, but {k} is not"
                ))
            })
        };
        let num = |k: &str, v: &str| -> Result<u64> {
            v.trim()
                .parse()
                .map_err(|_| Error::Usage(format!("{k} must be a non-negative integer, got '{v}'")))
        };
        let rank = num(ENV_RANK, &rank)? as usize;
        let size = num(ENV_WORLD_SIZE, &var(ENV_WORLD_SIZE)?)? as usize;
        if size == 0 || rank >= size {
            return Err(Error::Usage(format!(
                "{ENV_RANK} = {rank} must be below {ENV_WORLD_SIZE} = {size}"
            )));
        }
        let port = num(ENV_PORT, &var(ENV_PORT)?)?;
        let port = u16::try_from(port)
            .map_err(|_| Error::Usage(format!("{ENV_PORT} = {port} is not a port")))?;
        let timeout = match std::env::var(ENV_TIMEOUT) {
            Ok(v) => num(ENV_TIMEOUT, &v)?.max(1),
            Err(_) => DEFAULT_TIMEOUT_S,
        };
        Ok(Some(Join {
            rank,
            size,
            coordinator: var(ENV_COORDINATOR)?,
            host: var(ENV_NODE_HOST)?,
            port,
            timeout: Duration::from_secs(timeout),
        }))
    }
}

/// Joins the run as worker `join.rank` on backend `B` (the training backend's inner one):
/// rank 0 starts the orchestrator, every worker registers, and the workers compare `config_id`
/// (the resolved config's hash): a worker started with another config is refused on every rank.
pub fn init<B: Backend>(
    join: &Join,
    device: &B::Device,
    config_id: &str,
) -> Result<&'static World> {
    let (host, port) = split_host_port(&join.coordinator)?;
    if join.rank == 0 {
        std::thread::Builder::new()
            .name("t1-orchestrator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the orchestrator");
                rt.block_on(burn_collective::start_global_orchestrator(port));
            })
            .map_err(|e| Error::Runtime(format!("cannot start the orchestrator thread: {e}")))?;
    }
    let address = |h: &str, p: u16| -> burn_communication::Address {
        format!("ws://{h}:{p}")
            .parse()
            .expect("Address parses any string")
    };
    let config = CollectiveConfig::default()
        // the strategy the vendored patch fixes (vendor/burn-collective/PATCHES.md)
        .with_global_all_reduce_strategy(burn_collective::AllReduceStrategy::Ring)
        .with_num_devices(1)
        .with_num_nodes(join.size as u32)
        .with_global_address(address(host, port))
        .with_node_address(address(&join.host, join.port))
        .with_data_service_port(join.port);
    quiet_network_panics(join.rank);
    let world = World {
        rank: join.rank,
        size: join.size,
        watchdog: Some(Watchdog::start(join.rank, join.timeout)),
    };
    world.guard(
        &format!(
            "joining the other {} workers through the coordinator {}",
            join.size - 1,
            join.coordinator
        ),
        || {
            burn_collective::register::<B>(PeerId(join.rank as u32), device.clone(), config)
                .map_err(|e| Error::Runtime(format!("burn-collective register: {e:?}")))
        },
    )?;
    let world = WORLD.get_or_init(|| world);
    world.agree::<B>(
        "config",
        config_id,
        "start every worker with the same config and --set overrides",
        device,
    )?;
    Ok(world)
}

/// burn-collective's network threads panic when a peer's connection drops (its `expect`s);
/// the call on the training thread then fails and says what happened. Those threads' panics
/// print one line instead of a message and backtrace; the training thread's are untouched.
fn quiet_network_panics(rank: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        match thread.name() {
            Some("main") | None => default(info),
            Some(name) => eprintln!("worker {rank}: network thread '{name}' stopped: {info}"),
        }
    }));
}

/// `HOST:PORT` split; an error names the value.
pub fn split_host_port(s: &str) -> Result<(&str, u16)> {
    let bad = || Error::Usage(format!("--coordinator must be HOST:PORT, got '{s}'"));
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let p: u16 = p.parse().map_err(|_| bad())?;
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h, p))
}

impl World {
    /// Whether this process writes the run folder (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Whether this worker runs micro-batch `k` of a step's `parts` (`parts = grad_accum ×
    /// workers`): worker r takes the r-th contiguous block, so worker 0 runs what a single process
    /// with the same global batch runs first.
    pub fn owns(&self, k: usize, parts: usize) -> bool {
        let per = parts.div_ceil(self.size).max(1);
        k / per == self.rank
    }

    /// Runs `f` under the watchdog: past the timeout the process reports `what` and exits.
    fn guard<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.watchdog {
            Some(w) => {
                w.arm(what);
                let out = f();
                w.disarm();
                out
            }
            None => f(),
        }
    }

    /// The element-wise sum over the workers of `values` (every worker passes as many).
    pub fn all_reduce<B: Backend>(
        &self,
        what: &str,
        values: Vec<f32>,
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        if !self.is_distributed() {
            return Ok(values);
        }
        // burn-collective's ring cuts a tensor into one slice per worker: pad a short one
        let n = values.len();
        let mut values = values;
        values.resize(n.max(self.size), 0.0);
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [n.max(self.size)]), device);
        let TensorPrimitive::Float(p) = t.into_primitive() else {
            unreachable!("a float tensor")
        };
        let summed = self.guard(what, || {
            burn_collective::all_reduce::<B>(PeerId(self.rank as u32), p, ReduceOperation::Sum)
                .map_err(|e| {
                    Error::Runtime(format!(
                        "worker {}: the exchange of {what} failed (burn-collective: {e:?}): another \
                         worker died or closed its connection",
                        self.rank
                    ))
                })
        })?;
        let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed));
        let mut out = t
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Runtime(format!("all_reduce ({what}): {e:?}")))?;
        out.truncate(n);
        Ok(out)
    }

    /// Waits until every worker reaches this point (`what` names it in a timeout's error).
    pub fn barrier<B: Backend>(&self, what: &str, device: &B::Device) -> Result<()> {
        self.all_reduce::<B>(what, vec![0.0], device).map(|_| ())
    }

    /// This worker's block of `per` items among every worker's `per · size` (rank r: the r-th).
    pub fn block(&self, per: usize) -> std::ops::Range<usize> {
        self.rank * per..(self.rank + 1) * per
    }

    /// Every worker's `mine` (each passes as many values), concatenated in rank order: the
    /// all-gather of data-parallel contrastive batches and of stage 3's rollout figures. It runs
    /// as one all-reduce of zero-padded copies, which is exact (`x + 0 = x`).
    pub fn all_gather<B: Backend>(
        &self,
        what: &str,
        mine: &[f32],
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        if !self.is_distributed() {
            return Ok(mine.to_vec());
        }
        let n = mine.len();
        let mut padded = vec![0.0f32; n * self.size];
        padded[self.block(n)].copy_from_slice(mine);
        self.all_reduce::<B>(what, padded, device)
    }

    /// Refuses the run unless every worker holds the same `value` of `what`: each adds the bytes
    /// of its value's SHA-256, their squares and the count of workers; a difference shows on every
    /// rank, whose error ends with `hint`.
    pub fn agree<B: Backend>(
        &self,
        what: &str,
        value: &str,
        hint: &str,
        device: &B::Device,
    ) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        // the value's SHA-256: the same length on every worker whatever the value (the exchange
        // needs equal lengths)
        use sha2::{Digest, Sha256};
        let mine: Vec<f32> = Sha256::digest(value.as_bytes())
            .iter()
            .map(|&b| f32::from(b))
            .collect();
        let mut v = mine.clone();
        v.extend(mine.iter().map(|b| b * b));
        v.push(mine.len() as f32);
        let sum = self.all_reduce::<B>(&format!("comparing the workers' {what}"), v, device)?;
        let n = self.size as f32;
        let k = mine.len();
        let same = sum[2 * k] == n * k as f32
            && (0..k).all(|i| sum[i] == n * mine[i] && sum[k + i] == n * mine[i] * mine[i]);
        if same {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "worker {} of {}: the workers hold different {what}s (this one's is {value}); \
                 {hint}",
                self.rank, self.size
            )))
        }
    }

    /// Sums `grads` (of `model`'s trainable parameters) and `extra` (the step's figures) over the
    /// workers: one flat exchange in the model's parameter order. A parameter without a gradient
    /// on every worker stays without one (as in a single process); one with a gradient on some
    /// workers gets the sum of those.
    pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        step: u64,
        model: &M,
        grads: GradientsParams,
        extra: Vec<f32>,
        device: &B::Device,
    ) -> Result<(GradientsParams, Vec<f32>)> {
        if !self.is_distributed() {
            return Ok((grads, extra));
        }
        let mut shapes = ParamShapes::<B>::default();
        model.visit(&mut shapes);
        let mut grads = grads;
        let mut flat: Vec<f32> = Vec::with_capacity(shapes.total + shapes.ids.len() + extra.len());
        let mut present = Vec::with_capacity(shapes.ids.len());
        for (id, dims) in &shapes.ids {
            let n: usize = dims.iter().product();
            match take_flat::<B::InnerBackend>(&mut grads, *id, dims.len()) {
                Some(v) => {
                    flat.extend(v);
                    present.push(1.0);
                }
                None => {
                    flat.extend(std::iter::repeat_n(0.0, n));
                    present.push(0.0);
                }
            }
        }
        let (n_flat, n_params) = (flat.len(), present.len());
        flat.extend(present);
        flat.extend(extra);
        let summed = self.all_reduce::<B::InnerBackend>(
            &format!("the gradients of step {}", step + 1),
            flat,
            device,
        )?;
        let mut out = GradientsParams::new();
        let mut at = 0;
        for (k, (id, dims)) in shapes.ids.iter().enumerate() {
            let n: usize = dims.iter().product();
            if summed[n_flat + k] > 0.0 {
                put_flat::<B::InnerBackend>(&mut out, *id, &summed[at..at + n], dims, device);
            }
            at += n;
        }
        Ok((out, summed[n_flat + n_params..].to_vec()))
    }
}

/// The trainable float parameters of a module in visit order, with their shapes.
struct ParamShapes<B: AutodiffBackend> {
    ids: Vec<(ParamId, Vec<usize>)>,
    total: usize,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> Default for ParamShapes<B> {
    fn default() -> Self {
        Self {
            ids: Vec::new(),
            total: 0,
            _b: std::marker::PhantomData,
        }
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ParamShapes<B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if p.is_require_grad() {
            let dims = p.shape().dims::<D>().to_vec();
            self.total += dims.iter().product::<usize>();
            self.ids.push((p.id, dims));
        }
    }
}

fn take_flat<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    rank: usize,
) -> Option<Vec<f32>> {
    fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            // an empty vector here would shift every later parameter in the exchange
            .expect("a tensor converted to f32 reads back as f32")
    }
    match rank {
        1 => grads.remove::<B, 1>(id).map(flat),
        2 => grads.remove::<B, 2>(id).map(flat),
        3 => grads.remove::<B, 3>(id).map(flat),
        4 => grads.remove::<B, 4>(id).map(flat),
        _ => None,
    }
}

fn put_flat<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    values: &[f32],
    dims: &[usize],
    device: &B::Device,
) {
    let data = TensorData::new(values.to_vec(), dims.to_vec());
    match dims.len() {
        1 => grads.register::<B, 1>(id, Tensor::from_data(data, device)),
        2 => grads.register::<B, 2>(id, Tensor::from_data(data, device)),
        3 => grads.register::<B, 3>(id, Tensor::from_data(data, device)),
        4 => grads.register::<B, 4>(id, Tensor::from_data(data, device)),
        _ => {}
    }
}

/// Exits the process when an armed call runs past its deadline.
#[derive(Debug)]
struct Watchdog {
    armed: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start(rank: usize, timeout: Duration) -> Self {
        let armed: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
        let watched = armed.clone();
        std::thread::Builder::new()
            .name("t1-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let late = match &*watched.lock().unwrap_or_else(|p| p.into_inner()) {
                        Some((since, what)) if since.elapsed() > timeout => Some(what.clone()),
                        _ => None,
                    };
                    if let Some(what) = late {
                        eprintln!(
                            "error: worker {rank}: {what} got no answer within {} s: another \
                             worker died, hangs or cannot be reached; stopping this one \
                             (--dist-timeout sets the limit)",
                            timeout.as_secs()
                        );
                        std::process::exit(1);
                    }
                }
            })
            .expect("the watchdog thread starts");
        Watchdog { armed }
    }

    fn arm(&self, what: &str) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), what.to_string()));
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_splits_a_step_into_contiguous_blocks() {
        let w = |rank, size| World {
            rank,
            size,
            watchdog: None,
        };
        // 4 micro-batches on 2 workers: 0, 1 on rank 0; 2, 3 on rank 1
        let got: Vec<Vec<usize>> = (0..2)
            .map(|r| (0..4).filter(|&k| w(r, 2).owns(k, 4)).collect())
            .collect();
        assert_eq!(got, vec![vec![0, 1], vec![2, 3]]);
        // one worker owns all
        assert!((0..3).all(|k| w(0, 1).owns(k, 3)));
    }

    #[test]
    fn coordinator_must_be_host_and_port() {
        assert_eq!(
            split_host_port("10.0.0.1:29500").unwrap(),
            ("10.0.0.1", 29500)
        );
        for bad in ["10.0.0.1", ":29500", "h:port", "h:70000"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
