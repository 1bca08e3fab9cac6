//! Stage 1: teacher-forced cross-entropy on the reasoning tokens and the closing
//! `</think><emb_token>` only (DESIGN §1). The prompt is masked out.
//!
//! Equals PyTorch's `F.cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=-100)`
//! with `labels = -100` where `mask` is 0: the mean over every unmasked token of the batch
//! (tokens, not sequences, weigh equally — as TRL's SFTTrainer with completion-only loss).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, ElementConversion, Tensor};

/// The SFT loss and what the loop logs about it.
#[derive(Debug, Clone)]
pub struct Sft<B: Backend> {
    /// Scalar `[1]`: mean negative log-likelihood over unmasked tokens.
    pub loss: Tensor<B, 1>,
    /// Unmasked tokens in the batch.
    pub tokens: usize,
}

/// `logprobs` `[b, s]`: log-probability of each target token (from `Decoder::token_logprobs`);
/// `mask` `[b, s]`: true where the token is trained on. A batch with no unmasked token gives a
/// zero loss (and `tokens == 0`) instead of NaN.
pub fn sft_loss<B: Backend>(logprobs: Tensor<B, 2>, mask: Tensor<B, 2, Bool>) -> Sft<B> {
    let m = mask.float(); // [b, s]
    let tokens = m.clone().sum().into_scalar().elem::<f64>() as usize;
    let nll = (logprobs * m).sum().neg(); // [1]
    Sft {
        loss: nll / tokens.max(1) as f64,
        tokens,
    }
}
