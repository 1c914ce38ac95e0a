"""The data configuration and tokenizer specs.

`DataConfig` (declared in params.py, composed of the same data groups as the notebooks'
parameters) carries the official kit's knobs under their official names plus the kit's own
choices, each defaulting to the behaviour documented in README.md in this folder.
`resolve_tokenizer` turns a tokenizer spec ("tiny", "llmjp", an HF dir, a run dir) into a folder.
"""
from __future__ import annotations

from pathlib import Path

from ..paths import resolve
from .params import DataConfig, DatasetKnobs

__all__ = ["DataConfig", "DatasetKnobs", "resolve_tokenizer"]


def resolve_tokenizer(spec: str) -> Path:
    """A tokenizer directory from a spec: "tiny", "llmjp", an HF dir or a run dir (its hf_model/)."""
    if spec == "tiny":
        from ..model.fixtures import tiny_tokenizer_dir

        return tiny_tokenizer_dir()
    if spec in ("llmjp", "llm-jp"):
        from ..model.fixtures import llmjp_tokenizer_dir

        return llmjp_tokenizer_dir()
    p = resolve(spec)
    for cand in (p, p / "hf_model"):
        if (cand / "tokenizer.json").is_file() or (cand / "tokenizer.model").is_file():
            return cand
    from ..model import resolve_model

    return Path(resolve_model(spec))
