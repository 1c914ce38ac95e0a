"""Parameters of notebooks/20_convert_nemo_to_hf and 21_convert_hf_to_nemo (their `parameters` cells
are generated from these models)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..params import NotebookParams, RunParams

Dtype = Literal["auto", "bf16", "fp32"]
_VERIFY = "also compare Megatron-core and HF logits (first, middle and last layer; the weights are bit-exact anyway)"
_OVERWRITE = "replace an existing dst (the run-dir default is always this run's own)"


class ConvertParams(NotebookParams):
    """What both conversion directions share."""

    SECTION: ClassVar[str] = "conversion"

    verify_logits: bool = Field(True, description=_VERIFY)
    overwrite: bool = Field(False, description=_OVERWRITE)


class NemoToHFParams(ConvertParams, RunParams):
    """Parameters of notebooks/20_convert_nemo_to_hf."""

    src: str = Field("", description="NeMo dir, official-kit training output, step-N folder or run dir of 21 "
                                     "(empty: make one from the tiny model first)")
    checkpoint: str = Field(
        "last", pattern=r"\S", description="in a training output: last (the *-last folder) | best (lowest loss in "
                                           "the folder name) | a folder name")
    dst: str = Field("", description="HF model dir to write (empty: <run dir>/hf_model/)")
    dtype: Dtype = Field("auto", description="auto (keep the checkpoint dtype) | bf16 | fp32")
    tokenizer: str = Field("", description="when the checkpoint has none: llm-jp, tiny, an HF dir or a run dir "
                                           "(empty: the one stored with it)")
    max_shard_gb: float = Field(5.0, gt=0, description="safetensors shard size in GB")


class HFToNemoParams(ConvertParams, RunParams):
    """Parameters of notebooks/21_convert_hf_to_nemo."""

    src: str = Field("tiny", description="tiny, an HF model dir, or a run dir (its hf_model/); relative paths "
                                         "start at the repo root")
    dst: str = Field("", description="NeMo dir to write (empty: <run dir>/nemo/)")
    dtype: Dtype = Field("auto", description="auto (keep the source dtype) | bf16 | fp32")
