"""DPO loss family: closed-form values per loss type, length normalisation, SFT term, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from tunekit.errors import UserError
from tunekit.train.dpo_loss import METRIC_KEYS, pair_terms, preference_losses, reduce_logps
from tunekit.train.params import PREFERENCE_LOSSES, PreferenceParams

def mean_metrics(sums: dict) -> dict[str, float]:
    """Per-pair means of the summed metric terms (what the engine reports after dividing by pairs)."""
    return {k: float(sums[k]) / float(sums["pairs"]) for k in METRIC_KEYS}


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# One pair: policy chosen -10, rejected -12; reference -11 for both; 4 and 2 response tokens.
PI_C, PI_R, REF_C, REF_R, N_C, N_R = -10.0, -12.0, -11.0, -11.0, 4, 2
DELTA_SUM = (PI_C - REF_C) - (PI_R - REF_R)            # = 2
DELTA_AVG = (PI_C - REF_C) / N_C - (PI_R - REF_R) / N_R  # = 0.25 + 0.5 = 0.75


def _terms(cfg: PreferenceParams, rewards=None, requires_grad=False):
    pol_c, pol_r = _t(PI_C).requires_grad_(requires_grad), _t(PI_R).requires_grad_(requires_grad)
    ref_c, ref_r = _t(REF_C).requires_grad_(requires_grad), _t(REF_R).requires_grad_(requires_grad)
    kw = {}
    if rewards is not None:
        kw = {"chosen_reward": _t(rewards[0]), "rejected_reward": _t(rewards[1])}
    terms = pair_terms(pol_c, pol_r, ref_c, ref_r, _t(N_C), _t(N_R), cfg, **kw)
    return terms, (pol_c, pol_r, ref_c, ref_r)


def _kl_bern(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


@pytest.mark.parametrize("kind,beta,scale,rewards,expected", [
    # -log sigmoid(beta * delta)
    ("dpo", 0.5, 1.0, None, -math.log(_sig(0.5 * DELTA_SUM))),
    ("dpo", 0.1, 1.0, None, -math.log(_sig(0.1 * DELTA_SUM))),
    # (delta - 1 / (2 beta))^2
    ("ipo", 0.5, 1.0, None, (DELTA_SUM - 1.0) ** 2),
    ("ipo", 0.25, 1.0, None, (DELTA_SUM - 2.0) ** 2),
    # (beta * delta - scale * (r_c - r_r))^2 with the default rewards 1 and 0
    ("rpo_sq", 0.5, 2.0, None, (0.5 * DELTA_SUM - 2.0) ** 2),
    ("rpo_sq", 1.0, 1.0, (3.0, 0.5), (DELTA_SUM - 2.5) ** 2),
    # KL(target || model) and KL(model || target) of the two-outcome "chosen wins" distributions
    ("rpo_bwd_kl", 1.0, 1.0, None, _kl_bern(_sig(1.0), _sig(DELTA_SUM))),
    ("rpo_fwd_kl", 1.0, 1.0, None, _kl_bern(_sig(DELTA_SUM), _sig(1.0))),
    ("rpo_bwd_kl", 0.5, 3.0, (1.0, 0.5), _kl_bern(_sig(1.5), _sig(0.5 * DELTA_SUM))),
    ("rpo_fwd_kl", 0.5, 3.0, (1.0, 0.5), _kl_bern(_sig(0.5 * DELTA_SUM), _sig(1.5))),
])
def test_loss_matches_closed_form(kind, beta, scale, rewards, expected):
    cfg = PreferenceParams(preference_loss=kind, ref_policy_kl_penalty=beta, gt_reward_scale=scale)
    terms, _ = _terms(cfg, rewards)
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert terms.preference.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_every_official_loss_is_covered():
    assert set(PREFERENCE_LOSSES) == {"dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"}


def test_rpo_kl_losses_vanish_when_model_matches_target():
    # beta * delta == scale * (r_c - r_r): both KLs are exactly zero, rpo_sq too.
    for kind in ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"):
        cfg = PreferenceParams(preference_loss=kind, ref_policy_kl_penalty=0.5, gt_reward_scale=1.0)
        terms, _ = _terms(cfg)  # beta * delta = 1 = 1 * (1 - 0)
        assert abs(terms.loss.item()) < 1e-12


def test_average_log_probs_normalises_each_sequence_by_its_tokens():
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5,
                               preference_average_log_probs=True)
    terms, _ = _terms(cfg)
    assert terms.loss.item() == pytest.approx(-math.log(_sig(0.5 * DELTA_AVG)), rel=1e-12)
    assert terms.chosen_logp.item() == pytest.approx(PI_C / N_C)
    assert terms.rejected_logp.item() == pytest.approx(PI_R / N_R)
    assert reduce_logps(_t(5.0), _t(0), True).item() == 5.0  # no tokens: no division by zero


def test_label_smoothing_is_conservative_dpo():
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5, label_smoothing=0.1)
    terms, _ = _terms(cfg)
    z = 0.5 * DELTA_SUM
    expected = -0.9 * math.log(_sig(z)) - 0.1 * math.log(_sig(-z))
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12)


def test_sft_term_and_weights():
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5,
                               preference_loss_weight=2.0, sft_loss_weight=0.25)
    terms, _ = _terms(cfg)
    pref = -math.log(_sig(0.5 * DELTA_SUM))
    assert terms.sft.item() == pytest.approx(-PI_C)  # NLL of the chosen response, summed
    assert terms.loss.item() == pytest.approx(2.0 * pref + 0.25 * -PI_C, rel=1e-12)


def test_metrics_rewards_margin_accuracy_kl():
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5)
    # Two pairs: the first prefers chosen, the second is a tie (policy == reference).
    terms = pair_terms(_t(-10.0, -5.0), _t(-12.0, -7.0), _t(-11.0, -5.0), _t(-11.0, -7.0),
                       _t(4, 3), _t(2, 3), cfg)
    m = mean_metrics(terms.sums())
    assert m["chosen_reward"] == pytest.approx((0.5 * 1.0 + 0.0) / 2)
    assert m["rejected_reward"] == pytest.approx((0.5 * -1.0 + 0.0) / 2)
    assert m["reward_margin"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["reward_accuracy"] == pytest.approx(0.5)  # the tie does not count as correct
    assert m["reward_ties"] == pytest.approx(0.5)      # and is counted as a tie
    assert m["kl"] == pytest.approx(((1.0 + -1.0) / 2 + 0.0) / 2)
    assert m["chosen_logp"] == pytest.approx(-7.5)
    assert m["loss"] == pytest.approx((-math.log(_sig(1.0)) + math.log(2.0)) / 2)


@pytest.mark.parametrize("kind", PREFERENCE_LOSSES)
def test_gradients_reach_the_policy_only(kind):
    cfg = PreferenceParams(preference_loss=kind, ref_policy_kl_penalty=0.7, gt_reward_scale=0.3,
                               sft_loss_weight=0.1)
    terms, (pol_c, pol_r, ref_c, ref_r) = _terms(cfg, requires_grad=True)
    terms.loss.sum().backward()
    assert ref_c.grad is None and ref_r.grad is None
    assert pol_c.grad is not None and pol_r.grad is not None
    assert pol_c.grad.abs().item() > 0 and pol_r.grad.abs().item() > 0


def test_dpo_gradient_closed_form():
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5)
    terms, (pol_c, pol_r, _, _) = _terms(cfg, requires_grad=True)
    terms.loss.sum().backward()
    # d/d pi_c of -log sigmoid(beta * delta) = -beta * sigmoid(-beta * delta); pi_r gets the opposite.
    g = -0.5 * _sig(-0.5 * DELTA_SUM)
    assert pol_c.grad.item() == pytest.approx(g, rel=1e-12)
    assert pol_r.grad.item() == pytest.approx(-g, rel=1e-12)


def test_config_problems_are_sentences():
    assert PreferenceParams().loss_problems() == []
    with pytest.raises(UserError) as err:
        PreferenceParams.parse({"preference_loss": "kto", "ref_policy_kl_penalty": 0.0, "label_smoothing": 0.7})
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "parameter 'preference_loss' must be one of dpo|ipo" in lines[1]
    assert "'ref_policy_kl_penalty' must be > 0" in lines[0] and "'label_smoothing' must be < 0.5" in lines[2]
    with pytest.raises(UserError, match="cannot both be 0"):
        PreferenceParams.parse({"preference_loss_weight": 0.0, "sft_loss_weight": 0.0})
    with pytest.raises(ValueError):  # the loss itself refuses a kind validation would have stopped
        preference_losses(_t(1.0), _t(1.0), PreferenceParams.model_construct(preference_loss="kto"))


def test_weighted_sums_ignore_blank_pairs():
    # A validation shard padded with a blank (weight 0) must report the real pairs' means only.
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5)
    terms = pair_terms(_t(-10.0, -1.0), _t(-12.0, -50.0), _t(-11.0, -3.0), _t(-11.0, -3.0),
                       _t(4, 1), _t(2, 1), cfg)
    m = mean_metrics(terms.sums(_t(1.0, 0.0)))
    alone = mean_metrics(pair_terms(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(4), _t(2), cfg).sums())
    assert m == pytest.approx(alone)
    assert float(terms.sums(_t(1.0, 0.0))["pairs"]) == 1.0
