"""Prepare a submission-ready model folder and smoke-test the submission's inference contract.

The submission is a Singularity image that runs an HF model on ONE GPU with no network: it reads
a problems JSONL, sends each problem as one user message through `llm.chat` (so the tokenizer
must carry a chat template), and writes the same records plus `output`. `prepare_submission`
copies exactly what that needs (weights as safetensors, config, generation config, tokenizer
with its chat template), checks it loads, and `smoke_test` runs the same contract locally.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from .generate import Decoding, generate_answers, resolve_model_dir
from .gpu_env import check_cuda_visible_devices
from .records import PREDICTION_KEYS, read_jsonl, write_jsonl

# What an HF model folder needs at inference time (no optimizer state, no training leftovers).
WANTED = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
          "tokenizer.model", "added_tokens.json")
MANIFEST = "tunekit_submission.json"


def _wanted_files(src: Path) -> list[Path]:
    files = {f for pattern in WANTED for f in src.glob(pattern) if f.is_file()}
    return sorted(files)


def check_model_folder(model_dir: Path) -> list[str]:
    """Problems that would break the submission with this folder ([] if it looks ready)."""
    from transformers import AutoConfig, AutoTokenizer

    problems = []
    if not list(model_dir.glob("*.safetensors")):
        problems.append(f"{model_dir}: no *.safetensors weights (save with safe_serialization)")
    try:
        AutoConfig.from_pretrained(str(model_dir))
    except Exception as exc:  # any loader failure is a reason the image would fail
        problems.append(f"{model_dir}: config does not load ({exc})")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        return problems + [f"{model_dir}: tokenizer does not load ({exc})"]
    if not getattr(tok, "chat_template", None):
        problems.append(f"{model_dir}: the tokenizer has no chat template (llm.chat needs one; export with the kit)")
    if tok.eos_token_id is None:
        problems.append(f"{model_dir}: the tokenizer has no eos token (generation would never stop)")
    return problems


def _write_generation_config(dst: Path) -> None:
    """A generation_config.json with only the special ids: no sampling defaults that vLLM might adopt."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(dst))
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(dst))


def prepare_submission(spec: str | os.PathLike, out_dir: str | os.PathLike,
                       overwrite: bool = False) -> dict[str, Any]:
    """Copy the model behind `spec` into `out_dir` as a submission-ready HF folder and check it."""
    from ..atomic import atomic_dir

    src = resolve_model_dir(spec)
    problems = check_model_folder(src)
    if problems:
        raise UserError("; ".join(problems))
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists (choose another folder or pass --overwrite)")
    files = _wanted_files(src)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in files:
            shutil.copy2(f, tmp / f.name)
        if not (tmp / "generation_config.json").exists():
            _write_generation_config(tmp)
        manifest = {"source": str(src.resolve()),
                    "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    leftover = check_model_folder(out)
    if leftover:
        raise UserError("; ".join(leftover))
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"folder": str(out), "source": str(src), "files": sorted(p.name for p in out.iterdir()),
            "bytes": size}


def smoke_test(model: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
               max_new_tokens: int = 64, backend: str = "transformers", limit: int = 0,
               batch_size: int = 8) -> dict[str, Any]:
    """Run the submission's contract locally: problems JSONL -> same records + `output`.

    Same prompt (official answer-only), same decoding (greedy, 64 new tokens by default), same
    output shape as the official `main.py`. Returns what was checked; raises UserError on a breach.
    """
    check_cuda_visible_devices()
    problems = read_jsonl(input_path)
    if limit:
        problems = problems[:limit]
    bad = [i for i, p in enumerate(problems, 1) if not isinstance(p.get("problem"), str)]
    if bad:
        raise UserError(f"{input_path}:{bad[0]}: every input line needs a string `problem`")
    gen = generate_answers(model, [p["problem"] for p in problems], "official",
                           Decoding(max_new_tokens=max_new_tokens, batch_size=batch_size), backend)
    records = [{**p, "output": outs[0]} for p, outs in zip(problems, gen.outputs)]
    write_jsonl(output_path, records)
    back = read_jsonl(output_path)
    if len(back) != len(problems) or [r.get("id") for r in back] != [p.get("id") for p in problems]:
        raise UserError(f"{output_path}: output records do not match the input records one to one")
    if not all(isinstance(r.get("output"), str) for r in back):
        raise UserError(f"{output_path}: every output record needs a string `output`")
    extra = sorted({k for r in back for k in r} - PREDICTION_KEYS)
    return {"records": len(back), "backend": gen.backend, "seconds": round(gen.seconds, 2),
            "new_tokens": gen.new_tokens, "empty_outputs": sum(not r["output"].strip() for r in back),
            "keys_the_scorer_rejects": extra}
