"""Generation with vLLM for one model, run by the evaluation environment's python (stdlib + vLLM only).

    <eval-env python> vllm_worker.py REQUEST.json RESULT.json

No vLLM release fits the training environment (vLLM pins its own torch and transformers), so
evaluation with `backend: vllm` runs this script with the python of the evaluation environment
(environment.eval.yml, `make setup-eval`) as a subprocess of the notebook or CLI
(tunekit.evaluate.vllm_backend). It deliberately imports nothing from tunekit: that environment
holds vLLM and what vLLM needs, not the kit's own dependencies. The request names the model dir,
the chat messages and the sampling parameters; the result holds every sample's text, the number
of generated tokens, the prompt token ids vLLM built from the chat template, and timing. The
parent process writes the prediction and score records, so they are identical for every backend.

One process per model: vLLM's engine (and every byte of GPU memory it holds) is gone when the
process exits, before the next model starts. The call mirrors the submission script:
`LLM(model=...)`, `llm.chat(messages, SamplingParams(...))`.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main(request_path: str, result_path: str) -> int:
    """Generate for the request and write the result atomically (temp file + rename)."""
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    import vllm
    from vllm import LLM, SamplingParams

    t_load = time.perf_counter()
    llm = LLM(model=req["model"], seed=req["seed"], **req.get("engine", {}))
    load_s = time.perf_counter() - t_load
    params = SamplingParams(**req["sampling"])
    t0 = time.perf_counter()
    results = llm.chat(req["messages"], sampling_params=params, use_tqdm=req.get("progress", True))
    seconds = time.perf_counter() - t0
    out = {"outputs": [[c.text for c in r.outputs] for r in results],
           "new_tokens": sum(len(c.token_ids) for r in results for c in r.outputs),
           "prompt_token_ids": [list(r.prompt_token_ids or []) for r in results],
           "seconds": seconds, "load_seconds": load_s, "vllm": getattr(vllm, "__version__", "unknown"),
           "pid": os.getpid()}
    tmp = result_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
