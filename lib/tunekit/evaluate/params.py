"""Parameters of notebooks/50_evaluate (mirrors its `parameters` cell exactly)."""
from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..params import NotebookParams


class EvalParams(NotebookParams):
    """Which models to evaluate on which eval set, with which prompt and decoding."""

    models: list[str] = ["tiny"]
    eval_set: str = "datasets/sample/eval"
    max_problems: int = 0
    prompt_style: str = "official"
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    n_samples: int = 1
    batch_size: int = 8
    backend: str = "auto"
    scorer: str = "auto"
    seed: int = 0
    run_name: str = ""
    runs_dir: str = ""

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: list[str]) -> list[str]:
        if not v or any(not s.strip() for s in v):
            raise ValueError("give at least one model spec, none empty")
        return v

    @field_validator("prompt_style")
    @classmethod
    def _style(cls, v: str) -> str:
        from .prompts import PROMPT_STYLES

        if v not in PROMPT_STYLES:
            raise ValueError(f"must be one of {', '.join(PROMPT_STYLES)}")
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from .generate import BACKENDS

        if v not in BACKENDS:
            raise ValueError(f"must be one of {', '.join(BACKENDS)}")
        return v

    @field_validator("scorer")
    @classmethod
    def _scorer(cls, v: str) -> str:
        from .scoring import SCORERS

        if v not in SCORERS:
            raise ValueError(f"must be one of {', '.join(SCORERS)}")
        return v

    @field_validator("max_problems")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0 (0 = all problems)")
        return v

    def decoding(self):
        """The Decoding these parameters describe (validated: raises UserError if inconsistent)."""
        from .generate import Decoding

        return Decoding(max_new_tokens=self.max_new_tokens, temperature=float(self.temperature),
                        top_p=float(self.top_p), n_samples=self.n_samples, batch_size=self.batch_size,
                        seed=self.seed)

    def model_post_init(self, __context: Any) -> None:
        self.decoding()  # reject e.g. n_samples > 1 with temperature 0 before any model is loaded
