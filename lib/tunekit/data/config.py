"""The data configuration shared by the inspection, SFT and DPO notebooks.

It carries the official kit's knobs under their official names (`datasets:` map with
`max_train_samples`, `split_dev`, `upsampling_factor`; `max_dev_samples`, `max_dev_ratio`) plus the
kit's own choices, each defaulting to the behaviour documented in README.md in this folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..errors import UserError
from ..params import format_validation_error
from ..paths import resolve
from .params import DataParams, Datasets, DatasetKnobs, PackingParams, PairParams, datasets_map, stage_default

__all__ = ["DataConfig", "DatasetKnobs", "resolve_tokenizer"]


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
