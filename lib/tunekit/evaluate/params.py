"""Parameters of notebooks/50_evaluate (its `parameters` cell is generated from this model)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..params import RunParams
from .generate import BACKENDS
from .prompts import PROMPT_STYLES
from .scoring import SCORERS


class EvalParams(RunParams):
    """Which models to evaluate on which eval set, with which prompt and decoding."""

    models: list[str] = Field(
        default_factory=lambda: ["tiny"],
        description='model specs: "tiny", HF model dirs, or run dirs (their hf_model/ is evaluated)')
    eval_set: str = Field("datasets/sample/eval", description="gold JSONL file or folder in the competition format")
    max_problems: int = Field(0, ge=0, description="evaluate only the first N problems (0: all of them)")
    prompt_style: Literal[tuple(PROMPT_STYLES)] = Field(
        "official", description="official (answer only, as the submission example) | cot_boxed (reasoning, "
                                "then \\boxed{})")
    max_new_tokens: int = Field(
        32, description="new tokens per answer (the submission example uses 64; cot_boxed needs ~1024)")
    temperature: float = Field(0.0, description="0: greedy, as the submission example; above 0: sampling")
    top_p: float = Field(1.0, description="nucleus sampling threshold (sampling only)")
    n_samples: int = Field(
        1, description="answers per problem; more than 1 needs temperature above 0 (majority vote, pass@k, maj@k)")
    batch_size: int = Field(8, description="problems generated together (transformers backend)")
    backend: Literal[BACKENDS] = Field(
        "auto", description="auto (vLLM on a GPU node with the evaluation env, make setup-eval) | transformers | vllm")
    scorer: Literal[SCORERS] = Field(
        "auto", description="auto (official math-eval where installed) | tunekit | official")
    seed: int = Field(0, description="sampling seed")

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: list[str]) -> list[str]:
        if not v or any(not s.strip() for s in v):
            raise ValueError("must name at least one model spec, none empty")
        return v

    def decoding(self):
        """The Decoding these parameters describe (validated: raises UserError if inconsistent)."""
        from .generate import Decoding

        return Decoding(max_new_tokens=self.max_new_tokens, temperature=float(self.temperature),
                        top_p=float(self.top_p), n_samples=self.n_samples, batch_size=self.batch_size,
                        seed=self.seed)

    def job_preflight(self) -> None:
        """Checks `tunekit job submit` runs before queueing: backend vllm needs the evaluation environment."""
        if self.backend == "vllm":
            from .vllm_backend import require_eval_python

            require_eval_python()

    def model_post_init(self, __context: Any) -> None:
        self.decoding()  # reject e.g. n_samples > 1 with temperature 0 before any model is loaded
