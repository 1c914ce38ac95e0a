"""The DPO loss: the official kit's preference-loss family as pure functions on per-sequence log-probs.

Inputs are, for each pair of a batch, the summed log-probability of the chosen and of the rejected
response under the policy and under the frozen reference, plus the number of scored tokens (so the
length-normalised variant, the official `preference_average_log_probs`, is derived here exactly).
Names and semantics follow the official kit (NeMo-Aligner's DPO model, FACTS.md section 4):

    delta      = (pi_c - ref_c) - (pi_r - ref_r)          implicit reward difference, beta-free
    dpo        = -log sigmoid(beta * delta)                  (Rafailov et al. 2023)
                 with label smoothing eps (conservative DPO, cDPO; TRL `label_smoothing`):
                 -(1 - eps) log sigmoid(beta * delta) - eps log sigmoid(-beta * delta)
    ipo        = (delta - 1 / (2 beta))^2                     (Azar et al. 2023)
    rpo_sq     = (beta * delta - s * (r_c - r_r))^2            reward-aware PO (Nemotron-4 340B)
    rpo_bwd_kl = KL(Bern(sigmoid(s dr)) || Bern(sigmoid(beta delta)))
    rpo_fwd_kl = KL(Bern(sigmoid(beta delta)) || Bern(sigmoid(s dr)))

where beta is `ref_policy_kl_penalty`, s is `gt_reward_scale` (the knobs are `params.PreferenceParams`,
which DPOParams is composed of) and r_c/r_r are the pair's ground-truth
rewards (from the data, else the official defaults 1 and 0). The total per pair is
`preference_loss_weight * preference + sft_loss_weight * (-pi_c)`: the SFT term is the chosen
response's NLL (summed, or averaged per token with `preference_average_log_probs`), as officially.

The reference log-probs are detached inside every function, so gradients reach the policy only,
whether the reference comes from the on-disk cache or a live model. Reported rewards follow the DPO
paper and TRL: reward = beta * (pi - ref); NeMo-Aligner logs the beta-free log-ratio instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .batches import DEFAULT_CHOSEN_REWARD, DEFAULT_REJECTED_REWARD
from .params import PREFERENCE_LOSSES, PreferenceParams


def reduce_logps(sum_logps: torch.Tensor, n_tokens: torch.Tensor, average: bool) -> torch.Tensor:
    """Per-sequence log-prob: the sum, or the per-token mean when `average` (0 tokens -> 0)."""
    if not average:
        return sum_logps
    return sum_logps / n_tokens.to(sum_logps.dtype).clamp(min=1)


def _bernoulli_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(p) || Bern(q)) from log p and log q, where log(1 - x) is log sigmoid(-logit)."""
    return log_p.exp() * (log_p - log_q)


def preference_losses(delta: torch.Tensor, gt_reward_delta: torch.Tensor,
                      cfg: PreferenceParams) -> torch.Tensor:
    """Per-pair preference loss from the implicit reward difference `delta` (no beta applied).

    Args:
        delta: [N] (pi_c - ref_c) - (pi_r - ref_r), already reduced (sum or mean) per sequence.
        gt_reward_delta: [N] r_c - r_r, ground-truth rewards (used by the rpo_* losses only).
        cfg: loss type and coefficients.
    """
    beta = cfg.ref_policy_kl_penalty
    kind = cfg.preference_loss
    if kind == "dpo":
        eps = cfg.label_smoothing
        loss = -F.logsigmoid(beta * delta)
        if eps:
            loss = (1 - eps) * loss - eps * F.logsigmoid(-beta * delta)
        return loss
    if kind == "ipo":
        return (delta - 1.0 / (2.0 * beta)) ** 2
    gt = cfg.gt_reward_scale * gt_reward_delta.to(delta.dtype)
    if kind == "rpo_sq":
        return (beta * delta - gt) ** 2
    # Two-outcome distributions "chosen wins" vs "rejected wins": the model's from beta * delta,
    # the target's from the scaled reward gap; the rpo_*_kl losses are KLs between them.
    log_model = (F.logsigmoid(beta * delta), F.logsigmoid(-beta * delta))
    log_target = (F.logsigmoid(gt), F.logsigmoid(-gt))
    if kind == "rpo_bwd_kl":
        return sum(_bernoulli_kl(t, m) for t, m in zip(log_target, log_model))
    if kind == "rpo_fwd_kl":
        return sum(_bernoulli_kl(m, t) for t, m in zip(log_target, log_model))
    raise ValueError(f"unknown preference_loss {kind!r} (one of {', '.join(PREFERENCE_LOSSES)})")


@dataclass
class PairTerms:
    """Per-pair results of one micro-batch: the loss to sum, and the detached metric terms."""

    loss: torch.Tensor             # [N] weighted total per pair (has grad through the policy)
    preference: torch.Tensor       # [N] detached
    sft: torch.Tensor              # [N] detached, chosen NLL (sum or per-token mean)
    chosen_reward: torch.Tensor    # [N] beta * (pi_c - ref_c), detached
    rejected_reward: torch.Tensor  # [N] beta * (pi_r - ref_r), detached
    chosen_logp: torch.Tensor      # [N] policy log-prob of chosen (reduced), detached
    rejected_logp: torch.Tensor    # [N] policy log-prob of rejected (reduced), detached
    kl: torch.Tensor               # [N] mean of (pi - ref) over chosen and rejected, detached

    def sums(self, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted sums over the pairs of every metric term (0-dim tensors, no grad).

        Add them across micro-batches and ranks, then divide by the summed `pairs` (the weights):
        blanks (weight 0) that pad an uneven validation shard then count for nothing.
        """
        margin = self.chosen_reward - self.rejected_reward
        w = torch.ones_like(margin) if weights is None else weights.to(margin.dtype)
        terms = {
            "loss": self.loss.detach(),
            "preference_loss": self.preference,
            "sft_loss": self.sft,
            # Ties (the first step, where policy == reference) do not count as correct; their share
            # is reported on its own, so that an accuracy "starting at 0" reads as all ties (chance: 0.5).
            "reward_accuracy": (margin > 0).to(margin.dtype),
            "reward_ties": (margin == 0).to(margin.dtype),
            "reward_margin": margin,
            "chosen_reward": self.chosen_reward,
            "rejected_reward": self.rejected_reward,
            "chosen_logp": self.chosen_logp,
            "rejected_logp": self.rejected_logp,
            "kl": self.kl,
        }
        out = {k: (v.to(margin.dtype) * w).sum() for k, v in terms.items()}
        out["pairs"] = w.sum()
        return out


def pair_terms(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               n_chosen: torch.Tensor, n_rejected: torch.Tensor, cfg: PreferenceParams,
               chosen_reward: torch.Tensor | None = None,
               rejected_reward: torch.Tensor | None = None) -> PairTerms:
    """Per-pair loss and metrics from SUMMED per-sequence log-probs (all tensors [N]).

    Args:
        policy_chosen, policy_rejected: summed log-probs of the responses under the policy.
        ref_chosen, ref_rejected: the same under the reference (detached here).
        n_chosen, n_rejected: scored tokens per response (for the per-token mean).
        cfg: loss type and coefficients.
        chosen_reward, rejected_reward: ground-truth rewards; None = the official 1 and 0.
    """
    avg = cfg.preference_average_log_probs
    pi_c = reduce_logps(policy_chosen, n_chosen, avg)
    pi_r = reduce_logps(policy_rejected, n_rejected, avg)
    ref_c = reduce_logps(ref_chosen.detach().to(pi_c.dtype), n_chosen, avg)
    ref_r = reduce_logps(ref_rejected.detach().to(pi_r.dtype), n_rejected, avg)
    ratio_c, ratio_r = pi_c - ref_c, pi_r - ref_r
    if chosen_reward is None:
        chosen_reward = torch.full_like(pi_c, DEFAULT_CHOSEN_REWARD)
    if rejected_reward is None:
        rejected_reward = torch.full_like(pi_r, DEFAULT_REJECTED_REWARD)
    gt_delta = (chosen_reward - rejected_reward).to(pi_c.device, pi_c.dtype)
    pref = preference_losses(ratio_c - ratio_r, gt_delta, cfg)
    sft = -pi_c
    loss = cfg.preference_loss_weight * pref + cfg.sft_loss_weight * sft
    beta = cfg.ref_policy_kl_penalty
    with torch.no_grad():
        return PairTerms(
            loss=loss, preference=pref.detach(), sft=sft.detach(),
            chosen_reward=beta * ratio_c.detach(), rejected_reward=beta * ratio_r.detach(),
            chosen_logp=pi_c.detach(), rejected_logp=pi_r.detach(),
            # An estimate of KL(policy || reference) from the (off-policy) data sequences.
            kl=0.5 * (ratio_c + ratio_r).detach(),
        )


METRIC_KEYS = ("loss", "preference_loss", "sft_loss", "reward_accuracy", "reward_ties", "reward_margin",
               "chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp", "kl")

