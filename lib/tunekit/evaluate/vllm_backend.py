"""OPTIONAL vLLM generation path, for GPU nodes (ABCI rt_HG) where vLLM is installed.

NOT TESTED in this repository's CI (no GPU, no vLLM here): it is kept deliberately small and
mirrors the official submission script (`LLM(model=...)`, `llm.chat(messages, SamplingParams)`),
returning the same `Generation` as the transformers path, so the notebook and the scorer do not
care which backend ran. Check it on a GPU node with `tunekit submission smoke-test --backend vllm`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from .gpu_env import check_cuda_visible_devices

if TYPE_CHECKING:  # generate.py imports this module: a type-only import keeps them acyclic
    from .generate import Decoding


def generate_vllm(model_dir: Path, messages: list[list[dict[str, str]]],
                  decoding: Decoding) -> tuple[list[list[str]], int, float]:
    """Generate with vLLM's `llm.chat` (the submission's call) -> (outputs, new tokens, seconds), order kept."""
    check_cuda_visible_devices()  # vLLM crashed on ABCI when the variable held GPU UUIDs
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(Path(model_dir).resolve()), seed=decoding.seed)
    params = SamplingParams(n=decoding.n_samples, temperature=decoding.temperature,
                            top_p=decoding.top_p, max_tokens=decoding.max_new_tokens, seed=decoding.seed)
    t0 = time.perf_counter()
    results = llm.chat(messages, sampling_params=params, use_tqdm=True)
    seconds = time.perf_counter() - t0
    outputs = [[c.text for c in r.outputs] for r in results]
    new_tokens = sum(len(c.token_ids) for r in results for c in r.outputs)
    return outputs, new_tokens, seconds
