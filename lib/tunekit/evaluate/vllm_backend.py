"""The vLLM generation path: the evaluation environment's python runs vllm_worker.py, one process per model.

vLLM cannot live in the training environment: every vLLM release that fits torch 2.13 needs an
older transformers than the kit's 5.24 (installing it would downgrade transformers), and the
newer ones pin torch 2.14. So evaluation has its own environment (environment.eval.yml,
`make setup-eval`: a separate venv `.venv-eval/` pinned to one vLLM release and the torch and
transformers it requires). With `backend: vllm` the notebook (or CLI) process stays in the
training environment, reads the run directories, builds the chat messages and writes the
prediction and score records as for any backend; only generation runs in a subprocess:

    <eval python> lib/tunekit/evaluate/vllm_worker.py request.json result.json

Where that python is: $TUNEKIT_EVAL_PYTHON, else `<repo>/.venv-eval/bin/python`, else this
interpreter when it can import vLLM itself. A worker exits after its model, so when several
models are evaluated each engine is shut down (its GPU memory freed) before the next starts.

The worker reports the prompt token ids vLLM built with the model's chat template; they are
compared with the kit's own (`prompts.prompt_ids`, the ids training used): a difference means the
submission's `llm.chat` would not send what the model was trained on, and it is reported.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .gpu_env import check_cuda_visible_devices

if TYPE_CHECKING:  # generate.py imports this module: a type-only import keeps them acyclic
    from .generate import Decoding

EVAL_VENV = ".venv-eval"
WORKER = Path(__file__).with_name("vllm_worker.py")


def eval_python() -> Path | None:
    """The python of the evaluation environment, or None where there is none."""
    from ..paths import repo_root

    override = os.environ.get("TUNEKIT_EVAL_PYTHON", "").strip()
    if override:
        return Path(override)
    default = repo_root() / EVAL_VENV / "bin" / "python"
    if default.is_file():
        return default
    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    return None


def require_eval_python() -> Path:
    """The evaluation environment's python, or one UserError sentence saying how to get one."""
    python = eval_python()
    if python is None:
        raise UserError("backend vllm needs the evaluation environment, which holds vLLM and its own torch and "
                        "transformers (run `make setup-eval` on a GPU node, or set TUNEKIT_EVAL_PYTHON to the "
                        "python of an environment with vLLM; or use backend: transformers)")
    if not python.is_file():
        raise UserError(f"TUNEKIT_EVAL_PYTHON={python}: no such file (give the python of the evaluation "
                        "environment, e.g. .venv-eval/bin/python)")
    return python


def sampling(decoding: Decoding) -> dict[str, Any]:
    """vLLM SamplingParams keyword arguments for a Decoding (greedy when temperature is 0)."""
    return {"n": decoding.n_samples, "temperature": decoding.temperature, "top_p": decoding.top_p,
            "max_tokens": decoding.max_new_tokens, "seed": decoding.seed}


def run_worker(model_dir: Path, messages: list[list[dict[str, str]]], decoding: Decoding,
               progress: bool = True, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run vllm_worker.py for one model in the evaluation environment; its result dict.

    `engine` holds extra `vllm.LLM(...)` keyword arguments (e.g. gpu_memory_utilization).
    """
    python = require_eval_python()
    check_cuda_visible_devices()  # vLLM crashed on ABCI when the variable held GPU UUIDs
    request = {"model": str(Path(model_dir).resolve()), "messages": messages, "sampling": sampling(decoding),
               "seed": decoding.seed, "progress": progress, "engine": dict(engine or {})}
    # The worker sees the evaluation environment only (not the training venv's PYTHONPATH).
    env = dict(os.environ, PYTHONPATH=os.environ.get("TUNEKIT_EVAL_PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="tunekit-vllm-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        tail: deque[str] = deque(maxlen=40)
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(python), str(WORKER), str(req), str(res)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                if progress:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            raise
        if rc != 0 or not res.is_file():
            last = next((t for t in reversed(tail) if t.strip()), "no output")
            raise UserError(f"{model_dir}: vLLM generation failed in the evaluation environment ({python}, exit "
                            f"{rc}): {last[:300]}")
        out = json.loads(res.read_text(encoding="utf-8"))
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def prompt_mismatches(model_dir: Path, messages: list[list[dict[str, str]]], worker_ids: list[list[int]]) -> list[int]:
    """Indices of the problems whose vLLM prompt ids differ from the kit's chat-template ids."""
    from transformers import AutoTokenizer

    from .prompts import prompt_ids

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [i for i, (m, ids) in enumerate(zip(messages, worker_ids)) if prompt_ids(tok, m) != list(ids)]


def generate_vllm(model_dir: Path, messages: list[list[dict[str, str]]], decoding: Decoding,
                  progress: bool = True) -> tuple[list[list[str]], int, float]:
    """Generate with vLLM's `llm.chat` (the submission's call) -> (outputs, new tokens, seconds), order kept."""
    out = run_worker(model_dir, messages, decoding, progress)
    bad = prompt_mismatches(model_dir, messages, out["prompt_token_ids"])
    if bad:
        print(f"warning: {model_dir}: for {len(bad)} of {len(messages)} problems (first: #{bad[0]}) vLLM's prompt "
              "ids differ from the chat-template ids the kit trains and evaluates with; the submission's llm.chat "
              "would send those (check the tokenizer's chat template and special tokens)", flush=True)
    return out["outputs"], int(out["new_tokens"]), float(out["seconds"])
