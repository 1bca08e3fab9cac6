#!/usr/bin/env python3
"""Golden values for stage 3's advantages and GRPO loss (tests/grpo.rs), computed with a verbatim
transcription of TRL 1.16.0's GRPOTrainer (trl/trainer/grpo_trainer.py):

- advantages: `_generate_and_score_completions`, multi_objective_aggregation="sum_then_normalize"
  (lines 2760-2800 and the `nan_to_num` at 2810), with `nanstd` from trl/trainer/utils.py:1021.
- loss: `_compute_loss` (lines 3020-3190), importance_sampling_level="token", no delta, no vLLM
  correction, one process, no gradient accumulation; clip ratios as lines 3274-3279.
- k1/k2 KL estimators are not in TRL (it uses k3); they follow Schulman, "Approximating KL
  divergence" (2020): k1 = logp - ref, k2 = (logp - ref)^2 / 2.

Rerun:  pip install torch==2.15.0 && python3 scripts/golden_grpo.py   (TRL itself is not imported:
its GRPOTrainer needs a model and datasets; the lines above were read from the trl 1.16.0 wheel.)
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "grpo")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def nanstd(tensor, dim=None, keepdim=False):  # trl/trainer/utils.py:1021
    mean = torch.nanmean(tensor, dim=dim, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(tensor), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    variance *= correction
    std = torch.sqrt(variance)
    if keepdim:
        return std
    return std.squeeze(dim) if dim is not None else std.squeeze()


def advantages(rewards, num_generations, scale_rewards):  # grpo_trainer.py:2760-2810
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        adv = adv / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return torch.nan_to_num(adv, nan=0.0), is_std_zero.float().mean().item()


# rewards [B*G] with G = 4: a normal group, a zero-std group, a group with an unscorable rollout
# (NaN = every reward abstained), and a group with a single scorable rollout
nan = float("nan")
rewards = torch.tensor([0.1, 0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0, 0.3, nan, 0.0, 0.6, nan, nan, 0.7, nan],
                       dtype=torch.float64)
adv_cases = {}
for scale in ["group", "batch", "none"]:
    a, fz = advantages(rewards.clone(), 4, scale)
    adv_cases[scale] = {"advantages": a.tolist(), "frac_zero_std": fz}
json.dump({"rewards": [None if x != x else x for x in rewards.tolist()], "group": 4, "cases": adv_cases,
           "torch": torch.__version__, "trl": "1.16.0 (transcribed)"},
          open(os.path.join(OUT, "advantages.json"), "w"), indent=1)


def compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, mask, beta, kl_est,
                 eps_low, eps_high, loss_type, max_completion_length, num_items):  # grpo_trainer.py:3020-3190
    advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps
    coef_1 = torch.exp(log_ratio)
    d = ref_per_token_logps - per_token_logps
    if kl_est == "k3":
        per_token_kl = torch.exp(d) - d - 1
    elif kl_est == "k1":
        per_token_kl = -d
    else:
        per_token_kl = 0.5 * d ** 2
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss1 = coef_1 * advantages
    per_token_loss2 = coef_2 * advantages
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type == "dapo":
        loss = (per_token_loss * mask).sum() / max(num_items, 1.0)

    def masked_mean(x):
        return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()
    is_low = (coef_1 < 1 - eps_low) & (advantages < 0)
    is_high = (coef_1 > 1 + eps_high) & (advantages > 0)
    stats = {"kl": masked_mean(per_token_kl), "clip_low": masked_mean(is_low.float()),
             "clip_high": masked_mean(is_high.float()), "clip_region": masked_mean((is_low | is_high).float())}
    return loss, stats


n, t = 4, 6
logps = (torch.randn(n, t, dtype=torch.float64) * 0.5 - 1.5)
old = logps + torch.randn(n, t, dtype=torch.float64) * 0.6  # ratios well outside [0.8, 1.28] too
old[0, 1] = logps[0, 1] - 0.5  # ratio e^0.5 > 1 + eps_high with A > 0: a high clip
old[0, 2] = logps[0, 2] + 0.5  # ratio e^-0.5 < 1 - eps_low with A > 0: no clip (min picks the ratio)
ref = logps + torch.randn(n, t, dtype=torch.float64) * 0.2
adv = torch.tensor([1.2, -0.7, 0.0, -1.5], dtype=torch.float64)
mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]],
                    dtype=torch.float64)
num_items = float(mask.sum())
cases = []
for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
    for beta, kl_est in [(0.0, "k3"), (0.04, "k3"), (0.1, "k1"), (0.1, "k2")]:
        lp = logps.clone().requires_grad_(True)
        loss, stats = compute_loss(lp, old, ref, adv, mask, beta, kl_est, 0.2, 0.28, loss_type, 8, num_items)
        loss.backward()
        cases.append({"loss_type": loss_type, "beta": beta, "kl": kl_est, "epsilon_low": 0.2, "epsilon_high": 0.28,
                      "max_completion_length": 8, "num_items": num_items, "loss": loss.item(),
                      "grad_logps": lp.grad.flatten().tolist(), **{f"stat_{k}": v for k, v in stats.items()}})
json.dump({"n": n, "t": t, "logps": logps.flatten().tolist(), "old_logps": old.flatten().tolist(),
           "ref_logps": ref.flatten().tolist(), "advantages": adv.tolist(), "mask": mask.flatten().tolist(),
           "cases": cases, "torch": torch.__version__, "trl": "1.16.0 (transcribed)"},
          open(os.path.join(OUT, "loss.json"), "w"), indent=1)
print("wrote", OUT, len(cases), "loss cases")
