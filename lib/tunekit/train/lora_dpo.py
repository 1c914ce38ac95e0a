"""DPO with LoRA: the reference is the policy itself with its adapters switched off.

With LoRA the starting policy is the frozen base plus adapters whose B is zero, so the reference
model (the starting policy) is exactly "the policy with adapters off". Two ways to get its
log-probs, selected by the DPO notebook's `lora_reference` parameter:

    cache  precomputed once before training (`refcache`, the default for every run): no extra
           work per step, an on-disk entry shared by sweeps
    base   computed on the fly by the policy with adapters disabled: no reference pass before
           training and nothing on disk, one extra forward (no backward) per micro-batch; still
           never a second model in memory

Both give the same numbers (tests/test_lora_dpo.py). The DPO stage builds its task with
`AdaptersOffDPOTask` when `lora_reference == "base"`; everything else is unchanged.
"""
from __future__ import annotations

from typing import Any

import torch

from .dpo import DPOTask
from .dpo_batch import PairBatch, policy_logps
from .lora import adapters_disabled


class AdaptersOffReference:
    """Reference log-probs from the (LoRA) policy with adapters disabled, computed per batch."""

    def __init__(self, model=None):
        self.model = model
        # What DPO's data report shows for the reference (no cache entry involved).
        self.info: dict[str, Any] = {"key": None, "hit": None, "unique_pairs": None, "seconds": None,
                                     "source": "policy with LoRA adapters disabled"}

    def bind(self, model) -> None:
        """Use `model` (the training model, adapters attached) from now on."""
        self.model = model

    @torch.no_grad()
    def for_batch(self, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) summed reference log-probs of a pair batch."""
        if self.model is None:
            raise RuntimeError("AdaptersOffReference used before a model was bound")
        with adapters_disabled(self.model):
            c, r = policy_logps(self.model, pb)
        return c.detach(), r.detach()


class AdaptersOffDPOTask(DPOTask):
    """DPOTask whose reference (an AdaptersOffReference) runs on the very model being trained."""

    def loss(self, model, batch: PairBatch):
        self.reference.bind(model)
        return super().loss(model, batch)
