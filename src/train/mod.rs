//! Training loops: one file per stage, plus the pieces they share (optimizer, checkpoints).

pub mod common;
pub mod contrastive;
pub mod curriculum;
pub mod grpo;
pub mod latent;
pub mod micro;
pub mod optim;
pub mod plan;
pub mod stage1;
pub mod stage2;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Result;
use common::StageSummary;

/// The training stages, by their CLI and curriculum names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Stage1,
    Stage2,
    Stage3,
    /// LaSER's latent-reasoning self-distillation (`train::latent`).
    Latent,
}

impl StageKind {
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Stage1 => "stage1",
            StageKind::Stage2 => "stage2",
            StageKind::Stage3 => "stage3",
            StageKind::Latent => "latent",
        }
    }

    /// Runs the stage to `train.steps` (or resumes it): the one dispatch the CLI's stage
    /// commands and the curriculum share.
    pub fn run<B: AutodiffBackend>(
        self,
        cfg: &Config,
        resume: bool,
        device: &B::Device,
    ) -> Result<StageSummary> {
        let summary = match self {
            StageKind::Stage1 => stage1::run::<B>(cfg, resume, device),
            StageKind::Stage2 => stage2::run::<B>(cfg, resume, device),
            StageKind::Stage3 => grpo::run::<B>(cfg, resume, device),
            StageKind::Latent => latent::run::<B>(cfg, resume, device),
        }?;
        // data-parallel: no worker leaves before rank 0 has run the last evaluation and written
        // best/ (a curriculum's next stage starts from it)
        crate::dist::world().barrier::<B::InnerBackend>(
            &format!("the end of {} (rank 0's last evaluation)", self.name()),
            device,
        )?;
        Ok(summary)
    }
}
