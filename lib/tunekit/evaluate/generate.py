"""Answer problems with a model: batched transformers generation on CPU/GPU, or vLLM in its own environment.

The prompt path is the submission's: one user message rendered by the model's chat template
(`tunekit.evaluate.prompts`). Decoding is explicit (a fresh GenerationConfig, top_k off), so a
model's own generation_config.json cannot silently change what is measured. Greedy when
temperature is 0; otherwise sampling with `n_samples` answers per problem.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from .prompts import build_messages, prompt_ids

BACKENDS = ("auto", "transformers", "vllm")


@dataclass(frozen=True)
class Decoding:
    """How to decode: greedy (temperature 0) or sampling, n answers per problem, batch size."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n_samples: int = 1
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.n_samples < 1:
            raise UserError("decoding: max_new_tokens, batch_size and n_samples must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError("decoding: temperature must be >= 0 and top_p in (0, 1]")
        if self.n_samples > 1 and self.temperature == 0:
            raise UserError(f"decoding: n_samples={self.n_samples} with temperature 0 would repeat one greedy "
                            "answer (set temperature > 0, e.g. 0.7, or n_samples=1)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """Outputs per problem (n_samples each, in problem order) and throughput numbers."""

    outputs: list[list[str]]
    new_tokens: int
    seconds: float
    backend: str

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# Files one of which an HF folder needs for AutoTokenizer to load without a download.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "tokenizer.tiktoken")


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """An HF model directory from a spec: "tiny", an HF dir, or a run dir (its `hf_model/`), checked
    to hold a tokenizer (without one, transformers says "install sentencepiece or tiktoken")."""
    from ..model import resolve_model  # the kit's one model-spec resolver

    path = Path(resolve_model(str(spec)))
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"model {str(spec)!r}: {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                        "copy the tokenizer files of the model it was trained from into it (e.g. "
                        "`cp <base model dir>/tokenizer* <this dir>/`), or evaluate the run directory, whose "
                        "hf_model/ carries one")
    return path


def pick_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_dir: str | os.PathLike, device: str | None = None):
    """Load model + tokenizer for generation: bf16 on GPU, fp32 on CPU (deterministic), eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or pick_device()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    return model, tok


def _generation_config(tok, decoding: Decoding):
    from transformers import GenerationConfig

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=decoding.max_new_tokens, eos_token_id=tok.eos_token_id,
                                  pad_token_id=pad, num_return_sequences=decoding.n_samples)
    if decoding.greedy:
        kwargs.update(do_sample=False)
    else:  # vLLM's defaults besides temperature/top_p: no top-k, no repetition penalty
        kwargs.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0)
    return GenerationConfig(**kwargs)


def _until_eos(ids: Sequence[int], eos: int | None) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(eos) + 1] if eos is not None and eos in ids else ids


@contextlib.contextmanager
def _cpu_threads_for(model):
    """One CPU thread for toy models: their matmuls are too small to split, and on a shared
    machine extra threads only wait for each other (the tiny model ran 10x slower with 2)."""
    import torch

    small = next(model.parameters()).device.type == "cpu" and getattr(model.config, "hidden_size", 0) <= 256
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_ids(model, tok, prompts: list[list[int]], decoding: Decoding, progress: bool = True,
                 desc: str = "generating") -> Generation:
    """Generate for pre-tokenised prompts in left-padded batches; outputs keep the prompt order."""
    with _cpu_threads_for(model):
        return _generate_ids(model, tok, prompts, decoding, progress, desc)


def _generate_ids(model, tok, prompts, decoding, progress, desc) -> Generation:
    import torch

    from ..runtime import progress as bar

    device = next(model.parameters()).device
    gen_cfg = _generation_config(tok, decoding)
    eos, pad = gen_cfg.eos_token_id, gen_cfg.pad_token_id
    # Longest prompts first: less padding per batch, and an out-of-memory shows up at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[i:i + decoding.batch_size] for i in range(0, len(order), decoding.batch_size)]
    outputs: list[list[str]] = [[] for _ in prompts]
    new_tokens, t0 = 0, time.perf_counter()
    with bar(total=len(prompts), desc=desc, unit="problem", disable=not progress) as pbar:
        for b, idx in enumerate(batches):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            # One seed per batch: sampling is reproducible for a given batch size.
            torch.manual_seed(decoding.seed + b)
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gen_cfg)
            gen = out[:, width:].tolist()
            for row, i in enumerate(idx):
                for s in range(decoding.n_samples):
                    toks = _until_eos(gen[row * decoding.n_samples + s], eos)
                    new_tokens += len(toks)
                    outputs[i].append(tok.decode(toks, skip_special_tokens=True))
            pbar.update(len(idx))
    return Generation(outputs, new_tokens, time.perf_counter() - t0, "transformers")


def vllm_available() -> bool:
    """True if the evaluation environment (vLLM, vllm_backend.eval_python) exists and a GPU is visible."""
    from .vllm_backend import eval_python

    return eval_python() is not None and pick_device() == "cuda"


def generate_answers(model_spec: str | os.PathLike, problems: list[str], style: str = "official",
                     decoding: Decoding = Decoding(), backend: str = "auto", progress: bool = True,
                     loaded: tuple | None = None) -> Generation:
    """Answer each problem text with a model (spec: "tiny", HF dir or run dir) -> Generation.

    Args:
        backend: "transformers", "vllm" (GPU node with the evaluation environment, vllm_backend.py)
            or "auto" (vLLM if usable).
        loaded: an already loaded (model, tokenizer) pair to reuse (transformers only).
    """
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is unknown (use one of {', '.join(BACKENDS)})")
    messages = [build_messages(p, style) for p in problems]
    if backend == "vllm" or (backend == "auto" and loaded is None and vllm_available()):
        from .vllm_backend import generate_vllm

        return Generation(*generate_vllm(resolve_model_dir(model_spec), messages, decoding, progress), "vllm")
    model, tok = loaded or load_model(resolve_model_dir(model_spec))
    prompts = [prompt_ids(tok, m) for m in messages]
    return generate_ids(model, tok, prompts, decoding, progress=progress)
