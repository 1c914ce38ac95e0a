"""Parameters of notebooks/20_convert_nemo_to_hf and 21_convert_hf_to_nemo (field order, names,
types and defaults mirror their `parameters` cells exactly)."""
from __future__ import annotations

from pydantic import field_validator

from ..params import NotebookParams

DTYPE_CHOICES = ("auto", "bf16", "fp32")


def _dtype(value: str) -> str:
    if value not in DTYPE_CHOICES:
        raise ValueError(f"must be one of {', '.join(DTYPE_CHOICES)}")
    return value


class NemoToHFParams(NotebookParams):
    """Parameters of notebooks/20_convert_nemo_to_hf."""

    src: str = ""
    checkpoint: str = "last"
    dst: str = ""
    dtype: str = "auto"
    tokenizer: str = ""
    verify_logits: bool = True
    max_shard_gb: float = 5.0
    overwrite: bool = False
    run_name: str = ""
    runs_dir: str = ""

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        return _dtype(v)

    @field_validator("checkpoint")
    @classmethod
    def _check_checkpoint(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'last', 'best' or a checkpoint folder name")
        return v

    @field_validator("max_shard_gb")
    @classmethod
    def _check_shard(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v


class HFToNemoParams(NotebookParams):
    """Parameters of notebooks/21_convert_hf_to_nemo."""

    src: str = "tiny"
    dst: str = ""
    dtype: str = "auto"
    verify_logits: bool = True
    overwrite: bool = False
    run_name: str = ""
    runs_dir: str = ""

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        return _dtype(v)
