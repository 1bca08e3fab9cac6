//! LaSER — latent reasoning by self-distillation (`t1-train latent --config FILE`, or a
//! curriculum stage `kind = "latent"`). Usually starts from a stage-2 model.
//!
//! Each step takes `batch_size` training queries with their gold reasoning and, as in stage 2,
//! a group of `latent.group_size` documents per query (a relevant one, hard negatives from
//! `hard_negatives.jsonl`, random documents to fill). One shared backbone gives two query views:
//!
//! - explicit (teacher): `… <think> gold reasoning </think><emb_token>`, teacher forced; its
//!   vector is the `<emb_token>` state and its trajectory the states at the ends of the
//!   reasoning's segments (blank lines / sentence ends, `T1Tokenizer::reasoning_segment_ends`),
//!   resampled to K positions (`loss::latent::resample_ends`);
//! - latent (student): the prompt alone, then K latent steps (`model::latent`); its vector is the
//!   pooled K states, its trajectory the K states.
//!
//! ```text
//! loss = InfoNCE(latent) + λ₁ InfoNCE(explicit) + λ₂ KL(P_explicit ‖ P_latent)
//!        + λ₃ trajectory(latent states, explicit segment ends) + sft_weight · SFT(explicit)
//! ```
//! over the batch's `b · group_size` documents (in-batch negatives; a query's relevant and
//! excluded documents in other groups are left out of its softmax). With
//! `latent.detach_teacher` the explicit side of the two alignments carries no gradient.
//!
//! Logs `latent/{loss, latent_nce, explicit_nce, output_kl, trajectory, sft_loss,
//! latent_accuracy, explicit_accuracy, lr, grad_norm, tokens_per_s}`; every `train.eval_every`
//! steps dense retrieval on dev with the latent view (`latent/dev/ndcg@10`, …), keeping the
//! best in `runs/<name>/best/`.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use crate::config::{Config, QueryView};
use crate::data::Dataset;
use crate::error::Result;
use crate::loss::latent::{resample_ends, score_kl, trajectory_loss};
use crate::loss::{info_nce, sft_loss};
use crate::model::Decoder;
use crate::model::latent::{latent_states, pool};
use crate::model::load::model_section;
use crate::train::common::{Goal, StageSummary, Trainer};
use crate::train::contrastive::{
    Shard, doc_views, embed_docs, false_negatives, file_negatives, full_batch, gathered, gathered3,
    sft_tokens, train_queries,
};
use crate::train::micro::StepPlan;
use crate::train::stage1::Example;

/// Runs the latent stage to `train.steps` (or resumes it).
pub fn run<B: AutodiffBackend>(
    cfg: &Config,
    resume: bool,
    device: &B::Device,
) -> Result<StageSummary> {
    let mut tr = Trainer::<B>::start(cfg, "latent", resume, Goal::Maximize, "ndcg@10", device)?;
    let ds = Dataset::load(&cfg.raw.data.dataset)?;
    let m = model_section(cfg)?.clone();
    let l = cfg.raw.latent.clone();
    let t = cfg.raw.train.clone();
    let (queries, no_reasoning) = train_queries(&tr.tok, &ds, cfg, "the latent stage")?;
    if no_reasoning > 0 {
        tr.sinks.text(
            tr.state.step,
            "latent/data",
            &format!("{no_reasoning} of {} training queries have no gold reasoning (their explicit view has empty reasoning; trajectory targets fall back to </think>)", queries.len()),
        )?;
    }
    // explicit-view positions of the K trajectory targets, per training query
    let mut targets = Vec::with_capacity(queries.len());
    for q in &queries {
        let reasoning = ds
            .query(&q.id)
            .and_then(|x| x.reasoning.as_deref())
            .unwrap_or("");
        let ends: Vec<usize> = tr
            .tok
            .reasoning_segment_ends(reasoning, m.max_reasoning_tokens)?
            .into_iter()
            .map(|e| q.view.prompt_len + e)
            .collect();
        let end_think = q.view.ids.len() - 2; // … </think><emb_token>
        targets.push(resample_ends(&ends, l.steps, end_think));
    }
    let doc_views = doc_views(&mut tr, &ds, &m, "latent/data")?;
    let pools = file_negatives(&ds, &queries);
    let opts = crate::model::latent::LatentOptions::from_section(&l);
    let pad = tr.tok.pad;
    let plan = StepPlan::equal(t.batch_size, t.grad_accum);
    let (k, d) = (l.steps, tr.model.config().hidden_size);
    let mut last_dev = Vec::new();
    while tr.running() {
        tr.stop_if_interrupted()?;
        let mut sums = [0.0f64; 7];
        for mb in &plan.micro {
            // data-parallel: every worker draws the whole batch, runs its block, gathers the rest
            let sh = Shard::draw(&mut tr, &queries, &pools, l.group_size, ds.corpus.len())?;
            let idx = sh.own_idx();
            let (b, g) = (idx.len(), l.group_size);
            let q_rows: Vec<&Example> = idx.iter().map(|&i| &queries[i].view).collect();
            let prompts: Vec<Vec<u32>> = q_rows
                .iter()
                .map(|e| e.ids[..e.prompt_len].to_vec())
                .collect();
            tr.tokens += q_rows.iter().map(|e| e.ids.len()).sum::<usize>()
                + prompts.iter().map(|p| p.len() + k).sum::<usize>();
            let (d_vec, d_tokens) = embed_docs(&tr.model, &doc_views, sh.own_docs(), pad, device);
            tr.tokens += d_tokens;
            let d_vec = gathered(d_vec, "the batch's document vectors", device)?; // [n·g, d]
            let ignore = false_negatives::<B>(&queries, &sh.idx, &sh.docs, g, device); // [n, n·g]
            let model = &tr.model;

            // explicit view (teacher): <emb_token> state and the K segment-end states
            let qb = full_batch::<B>(&q_rows, pad, device);
            let s = qb.inputs.dims()[1];
            let q_hidden = model.hidden(qb.inputs, Some(qb.attention)); // [b, s, d]
            let t_vec = Decoder::hidden_at(q_hidden.clone(), qb.last); // [b, d]
            let pos: Vec<i64> = idx
                .iter()
                .flat_map(|&i| targets[i].iter().map(|&p| p as i64))
                .collect();
            let pos = Tensor::<B, 1, Int>::from_data(TensorData::new(pos, [b * k]), device)
                .reshape([b, k, 1])
                .expand([b, k, d]);
            let t_traj = q_hidden.clone().gather(1, pos); // [b, K, d]

            // latent view (student): K steps after the prompt
            let s_states = latent_states(model, &prompts, pad, &opts)?; // [b, K, d]
            let t_vec = gathered(t_vec, "the batch's explicit query vectors", device)?; // [n, d]
            let t_traj = gathered3(t_traj, "the batch's explicit trajectories", device)?;
            let s_states = gathered3(s_states, "the batch's latent states", device)?; // [n, K, d]
            let s_vec = pool(s_states.clone(), opts.pooling); // [n, d]

            let lat = info_nce(
                s_vec.clone(),
                d_vec.clone(),
                g,
                l.temperature,
                false,
                Some(ignore.clone()),
            );
            let exp = info_nce(
                t_vec.clone(),
                d_vec.clone(),
                g,
                l.teacher_temperature,
                false,
                Some(ignore.clone()),
            );
            let (t_vec, t_traj) = if l.detach_teacher {
                (t_vec.detach(), t_traj.detach())
            } else {
                (t_vec, t_traj)
            };
            let out = score_kl(
                s_vec,
                t_vec,
                d_vec.clone(),
                l.temperature,
                l.teacher_temperature,
                Some(ignore.clone()),
            );
            let traj = trajectory_loss(
                s_states,
                t_traj,
                l.trajectory,
                d_vec,
                l.temperature,
                l.teacher_temperature,
                Some(ignore),
            );
            let scalar = |x: &Tensor<B, 1>| x.clone().into_scalar().elem::<f64>();
            let (lat_v, exp_v, out_v, traj_v) = (
                scalar(&lat.loss),
                scalar(&exp.loss),
                scalar(&out),
                scalar(&traj),
            );
            let mut loss = lat.loss;
            for (w, term) in [
                (l.explicit_weight, exp.loss),
                (l.output_weight, out),
                (l.trajectory_weight, traj),
            ] {
                if w > 0.0 {
                    loss = loss + term * w;
                }
            }
            // every worker holds the whole batch's terms: each logs its 1/workers share of them
            let mut logged = scalar(&loss) / crate::dist::world().size as f64;
            let mut sft_v = 0.0;
            if l.sft_weight > 0.0 {
                // this worker's tokens' NLL over the whole batch's trained tokens
                let all: usize = sh.idx.iter().map(|&i| sft_tokens(&queries[i].view)).sum();
                let lp = model.token_logprobs(q_hidden, qb.targets, s);
                let sft = sft_loss(lp, qb.trained);
                let sft_share = sft.loss * (sft.tokens as f64 / all.max(1) as f64);
                sft_v = scalar(&sft_share);
                logged += l.sft_weight * sft_v;
                loss = loss + sft_share * l.sft_weight;
            }
            tr.backward_logged(mb, loss, None, logged);
            for (acc, v) in sums.iter_mut().zip([
                lat_v,
                exp_v,
                out_v,
                traj_v,
                sft_v,
                lat.accuracy,
                exp.accuracy,
            ]) {
                *acc += mb.scale * v;
            }
        }
        let [lat, exp, out, traj, sft, lat_acc, exp_acc] = sums;
        tr.step_parts(
            &[
                ("latent_nce", lat),
                ("explicit_nce", exp),
                ("output_kl", out),
                ("trajectory", traj),
                ("latent_accuracy", lat_acc),
                ("explicit_accuracy", exp_acc),
            ],
            &[("sft_loss", sft)],
        )?;
        if tr.eval_due() {
            last_dev = tr.eval_dev_dense(&ds, QueryView::Latent)?;
        }
        if tr.save_due() {
            tr.save()?;
        }
    }
    tr.finish(last_dev)
}
