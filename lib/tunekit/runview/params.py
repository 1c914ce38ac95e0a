"""Parameters of notebooks/60_compare_runs (its `parameters` cell is generated from this model)."""
from __future__ import annotations

from pydantic import Field, field_validator

from ..params import RunParams


class CompareParams(RunParams):
    """Which runs to compare, and how the intervals are computed."""

    runs: list[str] = Field(
        default_factory=lambda: ["sft/*", "dpo/*", "evaluate/*"],
        description="run dirs, globs relative to the runs root (sft/lr-*), run names, or sweep:NAME")
    n_boot: int = Field(10000, ge=200, description="bootstrap resamples for every interval and paired test")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    seed: int = Field(0, description="bootstrap seed (fixed: the same runs give the same intervals)")

    @field_validator("runs")
    @classmethod
    def _some_runs(cls, v: list[str]) -> list[str]:
        if not v or any(not s.strip() for s in v):
            raise ValueError("must name at least one run, glob or sweep:NAME, none empty")
        return v
