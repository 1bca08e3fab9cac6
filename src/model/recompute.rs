//! Per-layer activation checkpointing (`train.gradient_checkpointing`), on burn's public
//! autodiff API: with [`Decoder::recompute`] set, a training forward runs the decoder blocks
//! untracked and keeps only each block's input `[b, s, d]` (and the token ids); the last block's
//! output becomes a leaf that the (tracked) final norm, LM head and loss read; no graph of the
//! forward is left pending. [`Decoder::backward`] then runs the
//! loss's backward, takes the gradient arriving at each leaf, and replays the blocks from the top:
//! block `l` is recomputed from its kept input (tracked this time), the surrogate `Σ out · g` is
//! differentiated (the block's parameter gradients, and `g` for the block below), and its graph is
//! dropped before the next. Finally the embedding lookup is replayed and gets the gradient of block 0's input. The
//! activations a backward holds are then one block's plus the kept inputs, instead of every
//! block's; each block runs forward twice. Losses are bit-identical and gradients equal up to
//! float summation order (`tests/recompute.rs`).
//!
//! Forwards on a backend without autodiff (generation, evaluation on `valid()` models) never
//! record. Every forward of a recording model is kept until the next [`Decoder::backward`] (or
//! [`Recompute::clear`]), which takes them all.

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

use super::decoder::Decoder;
use super::ops::{AttnMask, Rope};

/// The forwards recorded since the last backward (shared by a model and its clones).
#[derive(Clone, Default)]
pub struct Recompute(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recompute({} recorded)", self.recorded())
    }
}

/// One checkpointed forward.
pub(super) struct Tape<B: Backend> {
    pub rope: Rope<B>,
    pub mask: AttnMask<B>,
    /// The token ids (the embedding lookup is replayed last).
    pub ids: Tensor<B, 2, Int>,
    /// Each block's input, untracked.
    pub inputs: Vec<Tensor<B, 3>>,
    /// The last block's output as a leaf.
    pub leaf: Tensor<B, 3>,
}

impl Recompute {
    pub(super) fn record<B: Backend>(&self, tape: Tape<B>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(tape));
    }

    /// Forwards recorded and not yet replayed.
    pub fn recorded(&self) -> usize {
        self.0.lock().map_or(0, |v| v.len())
    }

    /// Forgets the recorded forwards (a forward whose loss is never differentiated).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn take<B: Backend>(&self) -> Vec<Tape<B>> {
        let all = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        all.into_iter()
            .filter_map(|t| t.downcast::<Tape<B>>().ok().map(|t| *t))
            .collect()
    }
}

/// Whether forwards on this backend are recorded (it tracks gradients).
pub(super) fn tracks_grad<B: Backend>(device: &B::Device) -> bool {
    B::ad_enabled(device)
}

impl<B: AutodiffBackend> Decoder<B> {
    /// Every parameter's gradient of `loss`. With [`Decoder::recompute`] set, the blocks of the
    /// forwards recorded since the last call are replayed (module docs); without it, this is
    /// `GradientsParams::from_grads(loss.backward(), self)`.
    pub fn backward(&self, loss: Tensor<B, 1>) -> GradientsParams {
        let Some(rec) = &self.recompute else {
            return GradientsParams::from_grads(loss.backward(), self);
        };
        let grads = loss.backward();
        // the gradient at each leaf, read before the graph's gradients are handed over
        let pending: Vec<(Tape<B>, Tensor<B::InnerBackend, 3>)> = rec
            .take::<B>()
            .into_iter()
            .filter_map(|t| {
                let g = t.leaf.grad(&grads)?;
                Some((t, g))
            })
            .collect();
        let mut acc = GradientsAccumulator::<Decoder<B>>::new();
        acc.accumulate(self, GradientsParams::from_grads(grads, self));
        for (tape, g) in pending {
            let Tape {
                rope,
                mask,
                ids,
                inputs,
                ..
            } = tape;
            let mut g = g;
            for (layer, x) in self.model.layers.iter().zip(inputs).rev() {
                let x = x.require_grad();
                let (out, _) = layer.block(x.clone(), &rope, &mask, None);
                let grads = (out * Tensor::from_inner(g)).sum().backward();
                g = x
                    .grad(&grads)
                    .expect("a block's input is a leaf of its replay");
                acc.accumulate(self, GradientsParams::from_grads(grads, self));
            }
            let grads = (self.embed(ids) * Tensor::from_inner(g)).sum().backward();
            acc.accumulate(self, GradientsParams::from_grads(grads, self));
        }
        acc.grads()
    }

    /// This model recording its training forwards for [`Decoder::backward`] (`on`), or not.
    pub fn with_recompute(mut self, on: bool) -> Self {
        self.recompute = on.then(Recompute::default);
        self
    }
}
