//! `--workers N` / `--nodes M --node-rank R --coordinator HOST:PORT`: the torchrun of t1-train.
//! The command re-runs itself once per local worker with `T1_RANK`, `T1_WORLD_SIZE`, … set
//! ([`crate::dist::Join::from_env`]), passes their output through, and watches them: the first worker
//! that exits with an error stops the others, and the launcher exits with that worker's code.

use std::process::{Child, Command};
use std::time::Duration;

use crate::error::{Error, Result};

pub use crate::dist::DEFAULT_TIMEOUT_S;

/// The default coordinator port (torchrun's `MASTER_PORT` default).
pub const DEFAULT_PORT: u16 = 29500;

/// How this command's workers are laid out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Workers (processes, one per device) on this machine.
    pub workers: usize,
    /// Machines.
    pub nodes: usize,
    /// This machine's index, `0..nodes`.
    pub node_rank: usize,
    /// Rank 0's `HOST:PORT` (the machine with node rank 0).
    pub coordinator: Option<String>,
    /// The collective-call timeout, seconds.
    pub timeout_s: u64,
    /// The first port this machine's workers listen on (the coordinator's port + 1 by default).
    pub worker_port: Option<u16>,
}

impl Layout {
    pub fn world_size(&self) -> usize {
        self.workers * self.nodes
    }

    /// The coordinator, checked: required with several machines, `127.0.0.1:29500` on one.
    pub fn coordinator(&self) -> Result<String> {
        match &self.coordinator {
            Some(c) => {
                crate::dist::split_host_port(c)?;
                Ok(c.clone())
            }
            None if self.nodes == 1 => Ok(format!("127.0.0.1:{DEFAULT_PORT}")),
            None => Err(Error::Usage(
                "--nodes > 1 needs --coordinator HOST:PORT (node rank 0's address, reachable \
                 from every machine; or T1_COORDINATOR)"
                    .into(),
            )),
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.workers == 0 || self.nodes == 0 {
            return Err(Error::Usage(
                "--workers and --nodes must be at least 1".into(),
            ));
        }
        if self.node_rank >= self.nodes {
            return Err(Error::Usage(format!(
                "--node-rank {} must be below --nodes {}",
                self.node_rank, self.nodes
            )));
        }
        self.coordinator().map(|_| ())
    }
}

/// The host the other machines reach this one at: the local address of a route to the
/// coordinator (no packet is sent), `127.0.0.1` on one machine.
fn own_host(layout: &Layout, coordinator: &str) -> Result<String> {
    if let Ok(h) = std::env::var(crate::dist::ENV_NODE_HOST) {
        return Ok(h);
    }
    if layout.nodes == 1 {
        return Ok("127.0.0.1".into());
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(coordinator).map(|_| s))
        .map_err(|e| {
            Error::Usage(format!(
                "cannot find this machine's address towards the coordinator {coordinator}: {e} \
                 (set T1_NODE_HOST to the address the other machines reach this one at)"
            ))
        })?;
    Ok(sock
        .local_addr()
        .map_err(|e| Error::Runtime(format!("local address: {e}")))?
        .ip()
        .to_string())
}

/// Runs this command once per local worker and waits for them (see the module doc). `args` is
/// the command line without the program name; the launch options in it are harmless to the
/// workers, which see `T1_RANK` and run as workers.
pub fn run(layout: &Layout, args: &[String]) -> Result<()> {
    layout.check()?;
    let coordinator = layout.coordinator()?;
    let (_, port) = crate::dist::split_host_port(&coordinator)?;
    let host = own_host(layout, &coordinator)?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Runtime(format!("cannot find this executable: {e}")))?;
    // share the cores: a worker's kernels use cores / workers threads unless told otherwise
    let threads = std::thread::available_parallelism()
        .map(|n| (n.get() / layout.workers).max(1))
        .unwrap_or(1);
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..layout.workers {
        let rank = layout.node_rank * layout.workers + local;
        // each worker's data service on its own port, from --worker-port (or above the
        // coordinator's)
        let first = layout.worker_port.map_or(port as usize + 1, usize::from);
        let own_port = u16::try_from(first + local).map_err(|_| {
            Error::Usage(format!(
                "worker ports from {first} leave no room for {} workers",
                layout.workers
            ))
        })?;
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env(crate::dist::ENV_RANK, rank.to_string())
            .env(crate::dist::ENV_WORLD_SIZE, layout.world_size().to_string())
            .env(crate::dist::ENV_COORDINATOR, &coordinator)
            .env(crate::dist::ENV_NODE_HOST, &host)
            .env(crate::dist::ENV_PORT, own_port.to_string())
            .env(crate::dist::ENV_TIMEOUT, layout.timeout_s.to_string());
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
        }
        // one device each: worker k sees the k-th GPU as its device 0 (unless the user chose)
        if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
            cmd.env("CUDA_VISIBLE_DEVICES", local.to_string());
        }
        own_group(&mut cmd);
        match cmd.spawn() {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop(&mut children);
                return Err(Error::Runtime(format!("cannot start worker {rank}: {e}")));
            }
        }
    }
    watch(children, layout.world_size())
}

/// A worker in its own process group, so a terminal's Ctrl-C reaches the launcher alone (which
/// passes it on once: a second one would stop a worker without saving), and on Linux stopped
/// (SIGTERM: it saves and stops) when the launcher dies.
fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: prctl is async-signal-safe and touches only the child being started.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

/// Passes an interrupt on to the workers (each finishes its step; rank 0 saves).
fn interrupt(children: &[(usize, Child)]) {
    for (_, c) in children {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: kill only sends a signal to the worker's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGINT);
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = c;
    }
}

/// Waits for every worker; the first to fail stops the rest. Ctrl-C is passed on once, and the
/// workers are then awaited: they stop together at the next step, rank 0 saving a checkpoint.
fn watch(mut children: Vec<(usize, Child)>, world: usize) -> Result<()> {
    let _polling = crate::run::PollGuard::new();
    let mut passed_on = false;
    let mut running = children.len();
    while running > 0 {
        if crate::run::interrupted() && !passed_on {
            interrupt(&children);
            passed_on = true;
        }
        if passed_on {
            for (_, c) in children.iter_mut() {
                let _ = c.wait();
            }
            return Err(Error::Interrupted(
                "the workers stopped at the same step; rank 0 saved a checkpoint: continue with \
                 --resume (and the same --workers / --nodes)"
                    .into(),
            ));
        }
        running = 0;
        let mut failed = None;
        for (rank, c) in children.iter_mut() {
            match c.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    failed = Some((*rank, status.code()));
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(e) => {
                    eprintln!("worker {rank}: {e}");
                    failed = failed.or(Some((*rank, None)));
                }
            }
        }
        if let Some((rank, code)) = failed {
            stop(&mut children);
            let how = code.map_or("was killed by a signal".into(), |c| {
                format!("exited with code {c}")
            });
            let msg = format!(
                "worker {rank} (of {world}) {how}; this machine's other workers were stopped (its \
                 own message is above)"
            );
            return Err(match code {
                Some(2) => Error::Usage(msg),
                _ => Error::Runtime(msg),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}
