//! The optimizer side every stage shares: learning-rate schedule, global-norm gradient
//! clipping (as PyTorch's `clip_grad_norm_`; burn's own `GradientClipping::Norm` clips each
//! parameter separately) and AdamW ([`AdamW`], built by [`adamw`]).
//!
//! [`AdamW`] is burn's AdamW — the same arithmetic in the same order, the same state
//! (`AdamWState`, so checkpoints are unchanged) — with one difference: on the CPU backend it
//! updates each parameter and its two moments in one parallel pass over memory, where burn's runs
//! about a dozen single-threaded tensor ops per parameter (each a full read and write of a
//! parameter-sized buffer: ≈ 1.6 s per SmolLM2-135M step on this project's 2-core machine).
//! Elsewhere (GPU backends) it runs burn's tensor ops.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, SimpleOptimizer,
};
use burn::prelude::Backend;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

pub use crate::config::Schedule;
use crate::model::cpu;

/// Learning rate for optimizer step `step` (0-based) of `total`: linear warm-up from
/// `peak / warmup` over the first `warmup` steps (as transformers' schedulers: step 0 is not 0),
/// then the schedule's decay. Pure.
pub fn lr_at(
    step: u64,
    total: u64,
    warmup: u64,
    peak: f64,
    min_ratio: f64,
    schedule: Schedule,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let floor = peak * min_ratio;
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => floor + (peak - floor) * (1.0 - progress),
        Schedule::Cosine => {
            floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// AdamW with PyTorch's defaults for what the config does not set (ε 1e-8; burn's defaults are
/// ε 1e-5 and decay 1e-4). Weight decay applies to every parameter.
pub fn adamw(betas: (f32, f32), eps: f32, weight_decay: f32) -> AdamW {
    AdamW {
        beta_1: betas.0,
        beta_2: betas.1,
        epsilon: eps,
        weight_decay,
    }
}

/// AdamW (decoupled weight decay, bias-corrected moments), as burn's `AdamW` without AMSGrad or
/// cautious decay: `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `p ← p·(1 − lr·λ) − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl AdamW {
    /// The optimizer for module `M` (burn's adaptor: per-parameter state keyed by parameter id).
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        OptimizerAdaptor::from(*self)
    }

    /// burn's tensor-op AdamW step (any backend).
    fn step_ops<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> (Tensor<B, D>, AdamWState<B, D>) {
        let (f1, f2) = (1.0 - self.beta_1, 1.0 - self.beta_2);
        let m = match state {
            Some(s) => {
                let m = s.momentum;
                AdaptiveMomentumState::new(
                    m.time + 1,
                    m.moment_1
                        .mul_scalar(self.beta_1)
                        .add(grad.clone().mul_scalar(f1)),
                    m.moment_2
                        .mul_scalar(self.beta_2)
                        .add(grad.square().mul_scalar(f2)),
                )
            }
            None => AdaptiveMomentumState::new(
                1,
                grad.clone().mul_scalar(f1),
                grad.square().mul_scalar(f2),
            ),
        };
        let t = m.time as i32;
        let m1 = m.moment_1.clone().div_scalar(1f32 - self.beta_1.powi(t));
        let m2 = m.moment_2.clone().div_scalar(1f32 - self.beta_2.powi(t));
        let delta = m1.div(m2.sqrt().add_scalar(self.epsilon));
        let decay = lr * self.weight_decay as f64;
        let decayed = if decay == 0.0 {
            tensor
        } else {
            tensor.mul_scalar(1.0 - decay)
        };
        (decayed - delta.mul_scalar(lr), AdamWState { momentum: m })
    }

    /// The same step fused into one pass on the CPU backend ([`cpu::adamw`]); `Err` hands the
    /// inputs back where it does not apply (another backend, a non-f32 or non-contiguous tensor,
    /// generic kernels forced).
    #[allow(clippy::type_complexity)]
    fn step_fused<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> Result<
        (Tensor<B, D>, AdamWState<B, D>),
        (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>),
    > {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let t = time as i32;
        let c = cpu::AdamwCoefficients {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            f1: 1.0 - self.beta_1,
            f2: 1.0 - self.beta_2,
            c1: 1f32 - self.beta_1.powi(t),
            c2: 1f32 - self.beta_2.powi(t),
            eps: self.epsilon,
            keep: {
                let decay = lr * self.weight_decay as f64;
                (decay != 0.0).then_some((1.0 - decay) as f32)
            },
            lr: lr as f32,
            first: time == 1,
        };
        let moments = state.map(|s| (s.momentum.moment_1, s.momentum.moment_2));
        let state = |time, (m1, m2)| AdamWState {
            momentum: AdaptiveMomentumState::new(time, m1, m2),
        };
        match cpu::adamw(&c, tensor, grad, moments) {
            Ok((p, m)) => Ok((p, state(time, m))),
            Err((tensor, grad, m)) => Err((tensor, grad, m.map(|m| state(time - 1, m)))),
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (p, s) = match self.step_fused(lr, tensor, grad, state) {
            Ok(done) => done,
            Err((tensor, grad, state)) => self.step_ops(lr, tensor, grad, state),
        };
        (p, Some(s))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// Sums the squared gradient entries of every float parameter (one device scalar).
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = squared_sum(g);
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// `Σ g²` of one tensor, in the same order every time: per row of its last dimension, then over
/// the rows. A whole-tensor `sum` of 4 Mi elements or more (SmolLM2's embedding gradient has 28 Mi)
/// is a rayon reduction on the CPU backend whose tree follows work stealing, so its last bits
/// changed from run to run; with clipping on, that scaled every gradient by another factor, and
/// stage 3's sampling turned the difference into another run (issue 27: the same seed gave other
/// stage-3 results). Row sums and a sum of the (fewer) rows are sequential.
fn squared_sum<B: Backend, const D: usize>(g: Tensor<B, D>) -> Tensor<B, 1> {
    let n = g.shape().num_elements();
    let last = g.dims()[D - 1].max(1);
    let rows = g.powi_scalar(2).reshape([n / last, last]).sum_dim(1); // [rows, 1]
    if n / last < PARALLEL_SUM_MIN {
        rows.sum()
    } else {
        // as many rows as the parallel threshold (a huge first dimension): one more row sum
        // (below it `sum` is sequential already, and keeping it keeps measured runs' bits)
        rows.reshape([1, n / last]).sum_dim(1).reshape([1])
    }
}

/// burn-flex 0.21: a whole-tensor f32 `sum` of this many elements or more runs on rayon.
const PARALLEL_SUM_MIN: usize = 4 * 1024 * 1024;

/// Multiplies every gradient by a factor.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Global L2 norm of all gradients (before clipping); when `max_norm` is set and exceeded, every
/// gradient is scaled by `max_norm / (norm + 1e-6)`, exactly as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, f64) {
    let mut v = SquaredNorm::<B> {
        grads: &grads,
        total: None,
    };
    model.visit(&mut v);
    let norm = v
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0);
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            let mut s = Scale::<B> {
                grads: &mut grads,
                factor: coef,
                _b: std::marker::PhantomData,
            };
            model.visit(&mut s);
        }
    }
    (grads, norm)
}

use burn::tensor::ElementConversion;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::tensor::{Distribution, TensorData};

    type AD = Autodiff<Flex>;

    fn params(m: &Linear<AD>) -> Vec<f32> {
        let mut v = m.weight.val().into_data().to_vec::<f32>().unwrap();
        v.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        v
    }

    /// Four steps of [`AdamW`] (fused on the CPU backend) and of burn's own AdamW from the same
    /// start on the same gradients: bit-identical parameters, with and without weight decay.
    #[test]
    fn fused_adamw_is_burns_adamw() {
        let device = Default::default();
        for decay in [0.0f32, 0.1] {
            let start = LinearConfig::new(40, 300).init::<AD>(&device);
            let initial = params(&start); // materialises the lazily initialised weights once
            let ours_opt = adamw((0.9, 0.98), 1e-6, decay);
            let mut ours = ours_opt.init::<AD, Linear<AD>>();
            let mut burns = AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.98)
                .with_epsilon(1e-6)
                .with_weight_decay(decay)
                .init::<AD, Linear<AD>>();
            let (mut a, mut b) = (start.clone(), start);
            for step in 0..4 {
                let x = Tensor::<AD, 2>::random([3, 40], Distribution::Normal(0.0, 1.0), &device);
                let ga = a.forward(x.clone()).powi_scalar(2).sum().backward();
                let gb = b.forward(x).powi_scalar(2).sum().backward();
                let lr = 1e-2 * (step + 1) as f64;
                a = ours.step(lr, a.clone(), GradientsParams::from_grads(ga, &a));
                b = burns.step(lr, b.clone(), GradientsParams::from_grads(gb, &b));
            }
            let (pa, pb) = (params(&a), params(&b));
            assert_ne!(pa, initial);
            let diff = pa
                .iter()
                .zip(&pb)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let differing = pa.iter().zip(&pb).filter(|(x, y)| x != y).count();
            assert!(
                diff == 0.0,
                "decay {decay}: max |Δ| {diff}, {differing} of {} differ",
                pa.len()
            );
        }
    }

    /// The fused path is the one taken on the CPU backend, and the tensor-op path (other
    /// backends) agrees with it bit for bit.
    #[test]
    fn fused_and_tensor_op_steps_agree() {
        let device = Default::default();
        let t = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.5f32; 6], [2, 3]), &device);
        let g = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![0.1f32, -0.2, 0.3, 0.0, 1.0, -1.0], [2, 3]),
            &device,
        );
        let opt = adamw((0.9, 0.999), 1e-8, 0.01);
        let (f1, s1) = opt
            .step_fused(1e-3, t.clone(), g.clone(), None)
            .ok()
            .expect("fused on the CPU backend");
        let (o1, r1) = opt.step_ops(1e-3, t, g.clone(), None);
        assert_eq!(f1.clone().into_data(), o1.clone().into_data());
        let (f2, _) = opt.step_fused(1e-3, f1, g.clone(), Some(s1)).ok().unwrap();
        let (o2, _) = opt.step_ops(1e-3, o1, g, Some(r1));
        assert_eq!(f2.into_data(), o2.into_data());
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
    }

    /// The global norm of a SmolLM2-sized gradient (a 576 × 49,152 weight: 28 Mi entries, above
    /// the CPU backend's 4 Mi threshold for a rayon whole-tensor sum, whose tree follows the
    /// thread count and work stealing) is the same bits whatever the pool's size and however
    /// busy it is, and so is the clipped gradient; the norm matches an f64 sum on the host.
    #[test]
    fn the_global_norm_is_the_same_bits_whatever_the_thread_pool() {
        let device = Default::default();
        let model = LinearConfig::new(576, 49_152)
            .with_bias(false)
            .init::<AD>(&device);
        let x = Tensor::<AD, 2>::random([2, 576], Distribution::Normal(0.0, 1.0), &device);
        let grads = || {
            let g = model.forward(x.clone()).powi_scalar(2).sum().backward();
            GradientsParams::from_grads(g, &model)
        };
        let want: f64 = {
            let g = grads().get::<Flex, 2>(model.weight.id).unwrap();
            let v = g.into_data().to_vec::<f32>().unwrap();
            v.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
        };
        let mut norms = std::collections::BTreeSet::new();
        let mut clipped = std::collections::BTreeSet::new();
        // pools of 1, 2, 3 and 8 threads (a whole-tensor sum splits by the thread count), each
        // with one thread busy for a varying time first (so work is stolen at other points)
        for i in 0..32u64 {
            let threads = [1, 2, 3, 8][i as usize % 4];
            let pool = pool(threads);
            let busy = move || {
                let t = std::time::Instant::now();
                while t.elapsed().as_micros() < u128::from(i * 137 % 3000) {}
            };
            let (_, (g, norm)) =
                pool.install(|| rayon::join(busy, || clip_global_norm(&model, grads(), Some(1.0))));
            norms.insert(norm.to_bits());
            let w = g.get::<Flex, 2>(model.weight.id).unwrap();
            clipped.insert(
                w.slice([0..1, 0..8])
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>(),
            );
            assert!(
                (norm - want).abs() <= 1e-5 * want,
                "{norm} vs the f64 sum {want}"
            );
        }
        assert_eq!(
            norms.len(),
            1,
            "the norm took {} values over 32 calls",
            norms.len()
        );
        assert_eq!(
            clipped.len(),
            1,
            "the clipped gradient took {} values",
            clipped.len()
        );
    }

    /// A gradient with as many rows as the parallel threshold (a last dimension of 1) is summed
    /// in the same order in a 1-thread and an 8-thread pool too.
    #[test]
    fn a_squared_sum_over_millions_of_rows_is_the_same_bits_whatever_the_pool() {
        let g = Tensor::<Flex, 2>::random(
            [PARALLEL_SUM_MIN + 8, 1],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let bits = |threads| {
            let pool = pool(threads);
            pool.install(|| squared_sum(g.clone()).into_scalar().to_bits())
        };
        let one = bits(1);
        for threads in [2, 3, 8, 8] {
            assert_eq!(bits(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn warmup_then_cosine_matches_transformers() {
        // transformers.get_cosine_schedule_with_warmup(peak=1, warmup=10, total=110): step 0 of
        // warm-up is 0 there; here warm-up counts the step being taken (1/10 at step 0).
        assert!((lr_at(0, 110, 10, 1.0, 0.0, Schedule::Cosine) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 110, 10, 1.0, 0.0, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 110, 10, 1.0, 0.0, Schedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 110, 10, 1.0, 0.0, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!(lr_at(110, 110, 10, 1.0, 0.0, Schedule::Cosine).abs() < 1e-12);
        assert!((lr_at(110, 110, 10, 1.0, 0.1, Schedule::Cosine) - 0.1).abs() < 1e-12);
        assert!((lr_at(60, 110, 10, 2.0, 0.0, Schedule::Linear) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(100, 110, 10, 3.0, 0.0, Schedule::Constant), 3.0);
        assert_eq!(lr_at(5, 110, 0, 3.0, 0.0, Schedule::Constant), 3.0);
    }
}
