"""How well a step used the hardware: model FLOPs per token, MFU and peak accelerator memory.

MFU (model FLOPs utilisation) = achieved model FLOPs per second / the devices' peak FLOPs. Model
FLOPs per trained token follow the usual convention (PaLM appendix B; torchtitan): forward +
backward of every matrix multiply, 6 x the non-embedding parameters (the output layer counts, the
input embedding is a lookup), plus attention's 12 x layers x heads x head_dim x sequence length.
Work the kit skips (the output layer on unlabelled positions, attention across documents of a
packed row) is not subtracted, so MFU here is comparable with other frameworks' figures; for LoRA
it overstates the work (no weight gradients for the frozen base).

Peak FLOPs come from the GPU's name (dense bf16 tensor-core figures from NVIDIA's data sheets), or
from $TUNEKIT_PEAK_TFLOPS (per device) for other hardware. Without either, MFU is not reported.
"""
from __future__ import annotations

import os
from typing import Any

import torch

# Dense bf16 peak TFLOPs per GPU (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L40S": 362.1, "A6000": 154.8}


def flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs (forward + backward) per token of a LLaMA-format config at sequence length `seq_len`."""
    get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else \
        (lambda k, d=None: getattr(config, k, d))  # noqa: E731
    h, f, layers = int(get("hidden_size")), int(get("intermediate_size")), int(get("num_hidden_layers"))
    heads = int(get("num_attention_heads"))
    kv = int(get("num_key_value_heads") or heads)
    hd = int(get("head_dim") or h // heads)
    v = int(get("vocab_size"))
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * f  # q, o, k, v and the SwiGLU MLP
    matmul_params = layers * per_layer + v * h                     # + the output layer
    return 6.0 * matmul_params + 12.0 * layers * heads * hd * seq_len


def peak_flops(device: torch.device | None = None) -> float | None:
    """Peak FLOPs per second of one device: $TUNEKIT_PEAK_TFLOPS, else the GPU's bf16 figure, else None."""
    override = os.environ.get("TUNEKIT_PEAK_TFLOPS", "").strip()
    if override:
        return float(override) * 1e12
    if device is None or device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, n_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation of `n_devices` processing `tokens_per_s` together (None without a peak)."""
    if not peak or n_devices < 1:
        return None
    return tokens_per_s * flops_per_tok / (peak * n_devices)


class StepMeter:
    """Per-step `peak_mem_gb` (this rank's accelerator high-water mark since the last step) and `mfu`."""

    def __init__(self, device: torch.device, flops_per_tok: float, n_devices: int):
        self.device = device
        self.flops_per_tok = flops_per_tok
        self.n_devices = n_devices
        self.peak = peak_flops(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def record(self, tokens: float, seconds: float) -> dict[str, float]:
        """The metrics of the step that just ended (keys absent where they cannot be measured)."""
        out: dict[str, float] = {}
        if self.device.type == "cuda":
            out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
            torch.cuda.reset_peak_memory_stats(self.device)
        value = mfu(tokens / seconds if seconds > 0 else 0.0, self.flops_per_tok, self.n_devices, self.peak)
        if value is not None:
            out["mfu"] = round(value, 4)
        return out


def summarize(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Run-level figures from the step records: the highest peak memory and the mean MFU after step 1."""
    peaks = [r["peak_mem_gb"] for r in records if isinstance(r.get("peak_mem_gb"), (int, float))]
    mfus = [r["mfu"] for r in records if isinstance(r.get("mfu"), (int, float)) and r.get("step", 0) > 1]
    return {"peak_mem_gb": max(peaks) if peaks else None,
            "mfu": round(sum(mfus) / len(mfus), 4) if mfus else None}
