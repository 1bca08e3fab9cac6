//! The device check (`scripts/device-check.sh` builds and runs it): on a machine with a GPU, the
//! GPU backend this binary was built for (`--features cuda`; `wgpu` too, for trying it on
//! lavapipe) against the CPU backend and against PyTorch on the same GPU, in one run:
//!
//! 1. **Parity** on the model of `--weights DIR` (an HF folder), or else on the architecture of
//!    `--config FILE` (HF `config.json`; default SmolLM2-135M's, committed) with seeded weights,
//!    saved once so that every side loads the same numbers:
//!    - logits of 4 right-padded rows, GPU vs CPU;
//!    - seeded rollouts (prefill, cached decode, sampling on the device), each side's log-probs
//!      against its own full forward, then one GRPO loss with non-zero advantages, its gradient
//!      norm and every parameter's gradient (`tests/support/check.rs`, the code `tests/wgpu.rs`
//!      runs on lavapipe);
//!    - the host bytes read per decode step (12 per row: sampling stays on the device).
//!
//!    Bounds are f32 rounding over the model's depth (logits 1e-3 of the largest, log-probs and
//!    cached-vs-full 1e-3, loss 1e-4, gradient norm 1e-3 relative, each gradient 1e-2 of its
//!    parameter's largest); a wrong op is off by O(1).
//! 2. **Speed and memory** at GPU-sized shapes (default 16 queries × G 8, prompts of 64 tokens,
//!    128 new tokens), each line in its own process: fwd+bwd, greedy decode, stage 3's sampling
//!    (prompts shared by G rows, temperature 1), one GRPO step, document encoding; the peer
//!    (`scripts/bench_peer.py` with `T1_PEER_DEVICE=cuda`: transformers, and TRL for the GRPO
//!    line when installed) on the same GPU and weights; peak GPU memory of each process as
//!    `nvidia-smi` reports it (polled every 100 ms, above the idle reading before it starts).
//!
//! Prints one table; exits 1 when a parity line is outside its bound, 2 on bad arguments.

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn no_gpu() -> ! {
    eprintln!(
        "error: this bench was built without a GPU backend; build it with `--features cuda` \
         (scripts/device-check.sh) or `--features wgpu`"
    );
    std::process::exit(2)
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn main(_: &[String]) {
    no_gpu()
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn child(_: &[String]) {
    no_gpu()
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub use on_gpu::{child, main};

#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod on_gpu {
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tensor;
    use burn::tensor::backend::Backend;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use t1_train::model::{
        Decoder, DecoderConfig, GenerateOptions, Sampler, generate, load_hf, sampling_bytes_read,
        save_hf,
    };

    use crate::check::{GrpoCheck, int2, max_abs_diff, rollouts_and_grpo_step, to_vec};
    use crate::{BETA, Figure, LOSS, ours_with, peer_on, random_ids};

    #[cfg(feature = "cuda")]
    type Gpu = burn::backend::Cuda;
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    type Gpu = burn::backend::Wgpu;

    /// `--child-gpu WORK DIR REPS SHAPE…`: the bench's child on the GPU backend.
    pub fn child(args: &[String]) {
        crate::child::<Gpu>(args)
    }

    struct Args {
        config: PathBuf,
        weights: Option<PathBuf>,
        /// B queries, G rollouts each, prompt tokens, new tokens.
        shapes: [usize; 4],
        reps: usize,
        peer: bool,
    }

    fn usage(msg: &str) -> ! {
        eprintln!(
            "error: {msg}\nusage: backbone --device-check [--config CONFIG.json] [--weights HF_DIR] \
             [--shapes B,G,PROMPT,NEW] [--reps N] [--no-peer]"
        );
        std::process::exit(2)
    }

    fn parse_args(args: &[String]) -> Args {
        let mut a = Args {
            config: PathBuf::from("scripts/device/smollm2-135m.config.json"),
            weights: None,
            shapes: [16, 8, 64, 128],
            reps: 3,
            peer: true,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--config" => a.config = value().into(),
                "--weights" => a.weights = Some(value().into()),
                "--reps" => {
                    a.reps = value()
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .unwrap_or_else(|| usage("--reps: a positive integer"))
                }
                "--shapes" => {
                    let v: Vec<usize> = value()
                        .split(',')
                        .map(|x| x.trim().parse().ok().filter(|&n| n > 0))
                        .collect::<Option<_>>()
                        .unwrap_or_else(|| {
                            usage("--shapes: four positive integers B,G,PROMPT,NEW")
                        });
                    a.shapes = v.try_into().unwrap_or_else(|_| {
                        usage("--shapes: four positive integers B,G,PROMPT,NEW")
                    });
                }
                "--no-peer" => a.peer = false,
                "--quick" | "--bench" => {}
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        a
    }

    /// One parity line: what, the measured figure, its bound, within it or not.
    struct Line {
        what: String,
        value: String,
        bound: String,
        ok: bool,
    }

    fn line(what: &str, value: f64, bound: f64) -> Line {
        Line {
            what: what.into(),
            value: format!("{value:.2e}"),
            bound: format!("≤ {bound:.0e}"),
            ok: value <= bound,
        }
    }

    fn print(l: &Line) {
        println!(
            "  {:<52} {:>10} {:>10}  {}",
            l.what,
            l.value,
            l.bound,
            if l.ok { "ok" } else { "OUTSIDE" }
        );
        let _ = std::io::stdout().flush();
    }

    /// The model folder both backends load: `--weights`, or the config's architecture with
    /// weights drawn from seed 0 and saved in `tmp`.
    fn model_dir(a: &Args, tmp: &Path) -> (PathBuf, String) {
        if let Some(w) = &a.weights {
            return (w.clone(), format!("{} (its weights)", w.display()));
        }
        let cfg = DecoderConfig::from_hf_file(&a.config).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        let model: Decoder<Flex> = cfg
            .init_seeded(0, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.join("model");
        save_hf(&model, &dir).unwrap_or_else(|e| panic!("{e}"));
        let what = format!(
            "{} ({:.1}M parameters, weights drawn from seed 0)",
            a.config.display(),
            model.num_params() as f64 / 1e6
        );
        (dir, what)
    }

    /// Logits of 4 right-padded rows (48, 40, 17 and 5 real tokens) on both backends: the
    /// largest |Δ| over real positions, relative to the largest |logit|.
    fn logits(dir: &Path) -> Line {
        let gpu: Decoder<Gpu> = load_hf(dir, &Default::default()).unwrap();
        let cpu: Decoder<Flex> = load_hf(dir, &Default::default()).unwrap();
        let v = cpu.config().vocab_size;
        let (b, s, lens) = (4, 48, [48, 40, 17, 5]);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let ids: Vec<i64> = random_ids(&mut rng, b * s, v)
            .into_iter()
            .map(i64::from)
            .collect();
        let mask: Vec<i64> = (0..b * s).map(|i| i64::from(i % s < lens[i / s])).collect();
        let real = |l: Vec<f32>| -> Vec<f32> {
            (0..b * s)
                .filter(|&i| mask[i] == 1)
                .flat_map(|i| l[i * v..(i + 1) * v].to_vec())
                .collect()
        };
        let lg = real(to_vec(
            gpu.forward(int2(&ids, b, s), Some(int2(&mask, b, s))).0,
        ));
        let lc = real(to_vec(
            cpu.forward(int2(&ids, b, s), Some(int2(&mask, b, s))).0,
        ));
        let scale = lc.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        line(
            &format!("logits, 4 rows × 48 (|Δ| / max|logit| {scale:.2})"),
            (max_abs_diff(&lg, &lc) / scale) as f64,
            1e-3,
        )
    }

    /// [`rollouts_and_grpo_step`] on both backends, compared line by line (the asserting
    /// version, `check::assert_grpo_agree`, is what the wgpu tests use).
    fn grpo_lines(dir: &Path) -> Vec<Line> {
        let load_g = || load_hf::<Autodiff<Gpu>>(dir, &Default::default()).unwrap();
        let load_c = || load_hf::<Autodiff<Flex>>(dir, &Default::default()).unwrap();
        let g: GrpoCheck = rollouts_and_grpo_step::<Autodiff<Gpu>>(
            &load_hf::<Gpu>(dir, &Default::default()).unwrap(),
            &load_g(),
        );
        let c: GrpoCheck = rollouts_and_grpo_step::<Autodiff<Flex>>(
            &load_hf::<Flex>(dir, &Default::default()).unwrap(),
            &load_c(),
        );
        let n = g.rollouts.len();
        let same: Vec<usize> = (0..n)
            .filter(|&i| g.rollouts[i].tokens == c.rollouts[i].tokens)
            .collect();
        let mut out = vec![Line {
            what: "seeded rollouts: rows with the same tokens".into(),
            value: format!("{}/{n}", same.len()),
            bound: format!("= {n}/{n}"),
            ok: same.len() == n,
        }];
        let lp = same
            .iter()
            .map(|&i| max_abs_diff(&g.rollouts[i].logprobs, &c.rollouts[i].logprobs))
            .fold(0f32, f32::max);
        out.push(line("rollout log-probs, GPU vs CPU", lp as f64, 1e-3));
        let cached = g
            .rollouts
            .iter()
            .zip(&g.full_logprobs)
            .map(|(r, f)| max_abs_diff(&r.logprobs, f))
            .fold(0f32, f32::max);
        out.push(line(
            "GPU: cached-decode vs full-forward log-probs",
            cached as f64,
            1e-3,
        ));
        out.push(line(
            &format!("GRPO loss (GPU {:.6}, CPU {:.6})", g.loss, c.loss),
            (g.loss - c.loss).abs() as f64,
            1e-4,
        ));
        out.push(line(
            &format!(
                "GRPO grad norm, relative (GPU {:.6}, CPU {:.6})",
                g.grad_norm, c.grad_norm
            ),
            (g.grad_norm - c.grad_norm).abs() / c.grad_norm.max(1e-12),
            1e-3,
        ));
        let worst = g
            .grads
            .iter()
            .zip(&c.grads)
            .map(|((_, a), (_, b))| {
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
                max_abs_diff(a, b) / scale
            })
            .fold(0f32, f32::max);
        out.push(line(
            &format!(
                "each gradient, |Δ| / its largest ({} parameters)",
                g.grads.len()
            ),
            worst as f64,
            1e-2,
        ));
        out
    }

    /// Greedy decode of 4 prompts × 8 tokens on the GPU: the bytes read back per step.
    fn host_bytes(dir: &Path) -> Line {
        let gpu: Decoder<Gpu> = load_hf(dir, &Default::default()).unwrap();
        let prompts: Vec<Vec<u32>> = (0..4u32).map(|i| vec![i + 5, 2 * i + 9, 3]).collect();
        let opts = GenerateOptions {
            sampler: Sampler::Greedy,
            max_new_tokens: 8,
            stop: vec![],
            embed: None,
            pad: 0,
            seed: 0,
            first_stream: 0,
            repetition_penalty: 1.0,
        };
        let before = sampling_bytes_read();
        let r = generate(&gpu, &prompts, &opts, |_| {}).unwrap();
        let steps = r.iter().map(|r| r.tokens.len()).max().unwrap_or(0).max(1) as u64;
        let per_step = (sampling_bytes_read() - before) / steps;
        let v = gpu.config().vocab_size as u64;
        Line {
            what: format!("host bytes per decode step, 4 rows (logits: {})", 16 * v),
            value: per_step.to_string(),
            bound: "= 48".into(),
            ok: per_step == 48,
        }
    }

    /// GPU memory in use (MiB) as `nvidia-smi` reports it, polled while a process runs.
    struct GpuMemory {
        poll: std::process::Child,
        peak: Arc<AtomicU64>,
        idle: u64,
        reader: std::thread::JoinHandle<()>,
    }

    fn used_mib() -> Option<u64> {
        let out = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                "0",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    impl GpuMemory {
        fn start() -> Option<Self> {
            let idle = used_mib()?;
            let mut poll = Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                    "-lms",
                    "100",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let peak = Arc::new(AtomicU64::new(idle));
            let (p, out) = (peak.clone(), poll.stdout.take()?);
            let reader = std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = l.trim().parse::<u64>() {
                        p.fetch_max(v, Ordering::Relaxed);
                    }
                }
            });
            Some(GpuMemory {
                poll,
                peak,
                idle,
                reader,
            })
        }

        /// Peak MiB above the idle reading.
        fn stop(mut self) -> f64 {
            let _ = self.poll.kill();
            let _ = self.poll.wait();
            let _ = self.reader.join();
            self.peak.load(Ordering::Relaxed).saturating_sub(self.idle) as f64
        }
    }

    /// Runs `f` (a child process) while polling GPU memory: its figure and peak GPU MiB.
    fn measured(f: impl FnOnce() -> Result<Figure, String>) -> (Result<Figure, String>, f64) {
        let mem = GpuMemory::start();
        let r = f();
        (r, mem.map_or(f64::NAN, GpuMemory::stop))
    }

    #[allow(clippy::too_many_arguments)]
    fn speed_line(
        what: &str,
        shape: &str,
        unit: &str,
        ours: (Result<Figure, String>, f64),
        theirs: (Result<Figure, String>, f64),
        lower_is_better: bool,
        notes: &mut Vec<String>,
    ) {
        let fmt = |r: &Result<Figure, String>| match r {
            Ok(f) if lower_is_better => format!("{:>10.4}", f.value),
            Ok(f) => format!("{:>10.1}", f.value),
            Err(_) => format!("{:>10}", "n/a"),
        };
        let mem = |r: &(Result<Figure, String>, f64)| match r {
            (Ok(_), m) if m.is_finite() => format!("{m:>8.0}"),
            _ => format!("{:>8}", "n/a"),
        };
        let ratio = match (&ours.0, &theirs.0) {
            (Ok(a), Ok(b)) if lower_is_better => format!("{:>6.2}x", b.value / a.value),
            (Ok(a), Ok(b)) => format!("{:>6.2}x", a.value / b.value),
            _ => format!("{:>7}", "-"),
        };
        println!(
            "  {what:<9} {shape:<14} {unit:<7} {} {}  {ratio} {} {}",
            fmt(&ours.0),
            fmt(&theirs.0),
            mem(&ours),
            mem(&theirs)
        );
        let _ = std::io::stdout().flush();
        for e in [ours.0.err(), theirs.0.err()].into_iter().flatten() {
            notes.push(format!("{what}: {e}"));
        }
    }

    /// Whether the GPU answers (one upload, a kernel, one read-back); exit 2 with the reason if not.
    fn probe() {
        let r = std::panic::catch_unwind(|| {
            let t = Tensor::<Gpu, 1>::from_floats([1.0, 2.0, 3.0], &Default::default());
            (t * 2.0).sum().into_scalar()
        });
        let why = match r {
            Ok(v) if v == 12.0 => return,
            Ok(v) => format!("the device computed 2·(1+2+3) = {v}"),
            Err(e) => e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        eprintln!("error: no usable GPU device for this build's backend: {why}");
        std::process::exit(2)
    }

    pub fn main(args: &[String]) {
        let a = parse_args(args);
        probe();
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let (dir, what) = model_dir(&a, tmp.path());
        let device = Default::default();
        println!(
            "device check: {} vs the CPU backend (burn flex)",
            Gpu::name(&device)
        );
        println!("model: {what}");
        println!("\nparity (f32 on both sides)                            measured      bound");
        let mut lines = vec![logits(&dir)];
        print(&lines[0]);
        for l in grpo_lines(&dir) {
            print(&l);
            lines.push(l);
        }
        let l = host_bytes(&dir);
        print(&l);
        lines.push(l);

        let [b, g, prompt, new] = a.shapes;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "\nspeed and memory, median of {} after a warm-up; peer: PyTorch on the same GPU \
             (ratio > 1: t1-train faster; grpo: peer s/step ÷ ours); GPU MiB: nvidia-smi peak \
             of the process above idle",
            a.reps
        );
        println!(
            "  {:<9} {:<14} {:<7} {:>10} {:>10}  {:>7} {:>8} {:>8}",
            "what", "shape", "unit", "t1-train", "peer", "ratio", "MiB t1", "MiB peer"
        );
        let s = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut versions = None;
        let mut notes = Vec::new();
        let no_peer =
            || -> (Result<Figure, String>, f64) { (Err("--no-peer".to_string()), f64::NAN) };
        let reps = a.reps;
        let mut peer = |work: &str, shape: Vec<String>| {
            if !a.peer {
                return no_peer();
            }
            measured(|| {
                peer_on("cuda", work, &dir, reps, threads, &shape, &mut versions).map(|(f, _)| f)
            })
        };
        let ours = |work: &str, shape: &[usize]| {
            measured(|| ours_with("--child-gpu", work, &dir, reps, shape))
        };
        let bgpn = [b, g, prompt, new];
        let rows = b * g;
        let train = [8, 256];
        speed_line(
            "fwd+bwd",
            &format!("{}x{}", train[0], train[1]),
            "tok/s",
            ours("train", &train),
            peer("train", s(&train)),
            false,
            &mut notes,
        );
        speed_line(
            "decode",
            &format!("{rows}x{new}"),
            "tok/s",
            ours("decode", &bgpn),
            peer("decode", s(&[rows, prompt, new])),
            false,
            &mut notes,
        );
        speed_line(
            "sample",
            &format!("{b}x{g}x{new}"),
            "tok/s",
            ours("sample", &bgpn),
            (
                Err(
                    "sample: t1-train alone (stage 3's sampling: one prompt per G rows, T = 1)"
                        .into(),
                ),
                f64::NAN,
            ),
            false,
            &mut notes,
        );
        let mut grpo_shape = s(&bgpn);
        grpo_shape.push(((BETA * 1e6).round() as u64).to_string());
        grpo_shape.push(LOSS.1.to_string());
        speed_line(
            "grpo",
            &format!("{b}x{g}x{new}"),
            "s/step",
            ours("grpo", &bgpn),
            peer("grpo", grpo_shape),
            true,
            &mut notes,
        );
        let index = [1024, 128, 64];
        speed_line(
            "index",
            &format!("{}x{}", index[0], index[1]),
            "docs/s",
            ours("index", &index),
            peer("index", s(&index)),
            false,
            &mut notes,
        );
        drop(peer);
        match versions {
            Some(v) => println!("peer versions: {v}"),
            None => println!("peer: not available"),
        }
        for n in notes {
            println!("  {n}");
        }
        let outside = lines.iter().filter(|l| !l.ok).count();
        println!(
            "\nparity: {} of {} lines within their bounds",
            lines.len() - outside,
            lines.len()
        );
        if outside > 0 {
            std::process::exit(1);
        }
    }
}
