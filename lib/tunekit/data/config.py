"""The data configuration shared by the inspection, SFT and DPO notebooks.

It carries the official kit's knobs under their official names (`datasets:` map with
`max_train_samples`, `split_dev`, `upsampling_factor`; `max_dev_samples`, `max_dev_ratio`) plus the
kit's own choices, each defaulting to the behaviour documented in README.md in this folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import UserError
from ..paths import resolve


class DatasetKnobs(BaseModel):
    """Per-dataset options of the official `datasets:` map."""

    # strict: a knob typed as text ("yes", "0100") is refused, never coerced to True or 100.
    model_config = ConfigDict(extra="forbid", strict=True)

    max_train_samples: int = -1    # -1 = all, 0 = skip this dataset, N = at most N train records
    split_dev: bool = True         # take dev records from the head of this file
    upsampling_factor: int = 1     # repeat the train records this many times

    @field_validator("max_train_samples")
    @classmethod
    def _mts(cls, v: int) -> int:
        if v < -1:
            raise ValueError("must be -1 (all), 0 (skip) or a positive count")
        return v

    @field_validator("upsampling_factor")
    @classmethod
    def _up(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class DataConfig(BaseModel):
    """Everything that decides which tokens a training stage sees."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = "datasets"
    data_version: str = "sample"
    # {name: knobs}; a list of names (default knobs) is accepted; empty = every file found.
    datasets: dict[str, DatasetKnobs] = {}
    tokenizer: str = "tiny"          # "tiny", "llmjp", an HF model/tokenizer dir or a run dir
    max_seq_length: int = 4096
    max_dev_samples: int = 100
    max_dev_ratio: float = 0.1
    dev_split: Literal["head", "hash"] = "head"   # official: the first lines of each file
    upsample_dev: bool = False       # True = the official kit's behaviour (dev duplicated)
    template_style: Literal["kit", "official"] = "kit"
    on_error: Literal["raise", "skip"] = "raise"
    packing: Literal["isolated", "official"] = "isolated"
    overlong: Literal["truncate", "drop"] = "truncate"            # SFT examples > max_seq_length
    dpo_overlong: Literal["drop", "truncate_prompt"] = "drop"     # DPO pairs > max_seq_length
    dpo_append_eos: bool = False     # the official DPO code appends no eos to responses
    workers: int = 0                 # tokeniser processes for large files (0 = all cores)

    @field_validator("datasets", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return {str(n): {} for n in v}
        if isinstance(v, Mapping):
            return {k: ({} if knobs is None else knobs) for k, knobs in v.items()}
        return v

    @field_validator("max_seq_length")
    @classmethod
    def _msl(cls, v: int) -> int:
        if v < 8:
            raise ValueError("must be at least 8")
        return v

    @field_validator("max_dev_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("must be between 0 and 1")
        return v

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
            lines = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                lines.append(f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})")
            raise UserError("; ".join(lines)) from None

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
    from .. import model

    if hasattr(model, "resolve_model"):
        return Path(model.resolve_model(spec))
    raise UserError(f"tokenizer {spec!r}: not 'tiny', 'llmjp', nor a folder with tokenizer files")
