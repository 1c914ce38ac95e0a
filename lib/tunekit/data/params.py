"""Parameters of notebooks/10_inspect_data (field order, names, types and defaults mirror its
`parameters` cell exactly)."""
from __future__ import annotations

from typing import Any

from pydantic import model_validator

from ..params import NotebookParams
from .config import DataConfig


class InspectParams(NotebookParams):
    """Parameters of notebooks/10_inspect_data."""

    data_dir: str = "datasets"
    data_version: str = "sample"
    sft_datasets: dict[str, Any] = {
        "math_drill": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1},
        "math_chat": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 2},
    }
    dpo_datasets: dict[str, Any] = {
        "math_pref": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1},
    }
    tokenizer: str = "tiny"
    max_seq_length: int = 512
    max_dev_samples: int = 100
    max_dev_ratio: float = 0.1
    dev_split: str = "head"
    upsample_dev: bool = False
    template_style: str = "kit"
    on_error: str = "raise"
    packing: str = "isolated"
    overlong: str = "truncate"
    dpo_overlong: str = "drop"
    epochs: int = 2
    nodes: int = 2
    gpus_per_node: int = 8
    assumed_tokens_per_s_per_gpu: float = 3000.0
    seed: int = 1234
    run_name: str = ""
    runs_dir: str = ""

    @model_validator(mode="after")
    def _check(self):
        # Fails early with one sentence per bad data option (choices, ranges, dataset knobs).
        self.data_config("sft")
        self.data_config("dpo")
        return self

    def data_config(self, kind: str) -> DataConfig:
        """The DataConfig of the SFT or DPO side of this inspection."""
        values = self.model_dump()
        values["datasets"] = values.pop("sft_datasets" if kind == "sft" else "dpo_datasets")
        return DataConfig.parse(values, source="parameters")
