"""tunekit.convert: HF <-> NeMo checkpoints in the official kit's layout, verified by Megatron-core.

    from tunekit.convert import hf_to_nemo, nemo_to_hf
    hf_to_nemo("tiny", "out/nemo")            # HF ("tiny", HF dir, run dir) -> NeMo dir
    nemo_to_hf("path/to/sft_output", "out/hf")  # NeMo dir / training output / run dir -> HF dir

Import-light: torch and Megatron-core load only when a conversion runs (the CLI and the notebook
registry import this package).
"""
from __future__ import annotations

__all__ = ["ConversionResult", "hf_to_nemo", "nemo_to_hf"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunekit.convert' has no attribute {name!r}")
