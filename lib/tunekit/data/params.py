"""The data parameters, declared once: the groups that 10_inspect_data, 30_sft, 40_dpo and the data
layer's own `DataConfig` are composed of, and the parameters of notebooks/10_inspect_data.

Names, types, limits, defaults and help of the official knobs (`datasets:` map with
`max_train_samples`, `split_dev`, `upsampling_factor`; `max_dev_samples`, `max_dev_ratio`) and of
the kit's own choices live here only; each default is the behaviour documented in README.md in
this folder. The notebooks' parameters cells are generated from these models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import UserError
from ..params import NotebookParams, RunParams, format_validation_error, stage_default
from ..paths import resolve


class DatasetKnobs(BaseModel):
    """Per-dataset options of the official `datasets:` map."""

    # strict: a knob typed as text ("yes", "0100") is refused, never coerced to True or 100.
    model_config = ConfigDict(extra="forbid", strict=True)

    max_train_samples: int = Field(-1, ge=-1, description="-1 = all, 0 = skip this dataset, N = at most N records")
    split_dev: bool = Field(True, description="take dev records from the head of this file")
    upsampling_factor: int = Field(1, ge=1, description="repeat the train records this many times")


# {name: knobs}; a list of names (default knobs) is accepted; empty = every file found.
Datasets = dict[str, DatasetKnobs]


def datasets_map(value: Any) -> Any:
    """Accept a list of dataset names (default knobs each) and `name: null` for the map."""
    if isinstance(value, (list, tuple)):
        return {str(n): {} for n in value}
    if isinstance(value, Mapping):
        return {k: ({} if knobs is None else knobs) for k, knobs in value.items()}
    return value


def knobs(**per_dataset: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A datasets map default with every knob spelled out, as the notebooks show it."""
    return {name: DatasetKnobs(**k).model_dump() for name, k in per_dataset.items()}


class DataParams(NotebookParams):
    """Where the data is and how each file is split and rendered (every data-reading notebook)."""

    SECTION: ClassVar[str] = "data"

    data_dir: str = Field("datasets", description="folder holding <data_version>/{tuning,preference}/train/*.jsonl")
    data_version: str = Field("sample", description="data version subfolder (competition: tuning_data20251105)")
    max_seq_length: int = Field(512, ge=8, description="training sequence length (llm-jp-4-8b: 4096)")
    max_dev_samples: int = Field(100, ge=0, description="at most this many dev records per dataset (official)")
    max_dev_ratio: float = Field(0.1, ge=0, le=1,
                                 description="at most this share of each dataset goes to dev (official)")
    dev_split: Literal["head", "hash"] = Field(
        "head", description="head: the first lines of each file (official) | hash: by content hash")
    upsample_dev: bool = Field(False, description="True: also repeat dev records by upsampling_factor (official kit)")
    template_style: Literal["kit", "official"] = Field(
        "kit", description="kit | official (differ only for an empty system prompt)")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="raise: stop on bad data lines | skip: train without them (counted)")


class PackingParams(NotebookParams):
    """How SFT examples become fixed-length sequences."""

    SECTION: ClassVar[str] = "SFT packing"

    packing: Literal["isolated", "official"] = Field(
        "isolated", description="isolated: documents never attend to each other | official: stream-and-cut")
    overlong: Literal["drop", "truncate"] = Field(
        "drop", description="SFT examples longer than max_seq_length: drop | truncate (cuts the answer's end)")


class PairParams(NotebookParams):
    """What happens to DPO pairs that do not fit."""

    SECTION: ClassVar[str] = "DPO pairs"

    dpo_overlong: Literal["drop", "truncate_prompt"] = Field(
        "drop", description="DPO pairs longer than max_seq_length: drop | truncate_prompt (both counted)")


class EstimateParams(NotebookParams):
    """What 10_inspect_data's training-time estimate assumes."""

    SECTION: ClassVar[str] = "cost estimate"

    epochs: int = Field(2, ge=1, description="epochs for the cost estimate")
    nodes: int = Field(2, ge=1, description="ABCI rt_HF nodes for the cost estimate")
    gpus_per_node: int = Field(8, ge=1, description="H200 GPUs per node")
    assumed_tokens_per_s_per_gpu: float = Field(
        3000.0, gt=0, description="ASSUMED training throughput per GPU (not measured)")


class InspectParams(DataParams, PackingParams, PairParams, EstimateParams, RunParams):
    """Parameters of notebooks/10_inspect_data."""

    sft_datasets: Datasets = Field(
        default_factory=lambda: knobs(math_drill={}, math_chat={}),
        description="SFT datasets map (official knobs); {} for every file")
    dpo_datasets: Datasets = Field(default_factory=lambda: knobs(math_pref={}),
                                   description="DPO datasets map (official knobs); {} for every file")
    tokenizer: str = Field("tiny", description='"tiny", "llmjp", an HF model/tokenizer dir or a run dir')
    seed: int = Field(1234, description="random seed")

    @field_validator("sft_datasets", "dpo_datasets", mode="before")
    @classmethod
    def _maps(cls, value: Any) -> Any:
        return datasets_map(value)

    def data_config(self, kind: str) -> "DataConfig":
        """The DataConfig of the SFT or DPO side of this inspection."""
        values = self.model_dump()
        values["datasets"] = values.pop("sft_datasets" if kind == "sft" else "dpo_datasets")
        return DataConfig.parse(values, source="parameters")


# ------------------------------------------------------------------ the data layer's own config
class DataConfig(DataParams, PackingParams, PairParams):
    """Everything that decides which tokens a training stage sees.

    The notebook-facing fields are the shared data groups (tunekit.data.params); this adds what
    the data layer needs beyond them, and accepts values loosely (paths, a list of names) for
    callers that are not notebooks.
    """

    model_config = ConfigDict(extra="forbid", strict=False, frozen=False)

    datasets: Datasets = Field(default_factory=dict, description="datasets map; {} for every file found")
    tokenizer: str = "tiny"          # "tiny", "llmjp", an HF model/tokenizer dir or a run dir
    max_seq_length: int = stage_default(DataParams, "max_seq_length", 4096)
    dpo_append_eos: bool = False     # the official DPO code appends no eos to responses
    workers: int = 0                 # tokeniser processes for large files (0 = all cores)

    @field_validator("datasets", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return datasets_map(v)

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    @classmethod
    def parse(cls, values: "DataConfig | Mapping[str, Any]", source: str = "data config") -> "DataConfig":
        """Validate a mapping (notebook params, YAML) into a DataConfig or raise UserError.

        Keys that are not data options (e.g. the rest of a notebook's parameters) are ignored.
        """
        if isinstance(values, DataConfig):
            return values
        if hasattr(values, "to_dict"):
            values = values.to_dict()
        known = {k: v for k, v in dict(values).items() if k in cls.model_fields}
        try:
            return cls(**known)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, source, cls)) from None

    def version_dir(self) -> Path:
        """`<data_dir>/<data_version>`, checked to exist."""
        d = resolve(self.data_dir) / self.data_version
        if not d.is_dir():
            base = resolve(self.data_dir)
            have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            raise UserError(f"{d}: data version folder not found (data_dir={self.data_dir!r}, "
                            f"data_version={self.data_version!r}; found: {', '.join(have) or 'nothing'})")
        return d


__all__ = ["DataConfig", "DataParams", "DatasetKnobs", "Datasets", "EstimateParams", "InspectParams",
           "PackingParams", "PairParams",
           "datasets_map", "knobs", "stage_default"]
