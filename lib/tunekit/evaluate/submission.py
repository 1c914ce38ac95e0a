"""Prepare a submission-ready model folder and smoke-test the submission's inference contract.

The submission is a Singularity image that runs an HF model on ONE GPU with no network, with
transformers 4.57.0 (the competition's lock file): it reads a problems JSONL, sends each problem
as one user message through `llm.chat` (so the tokenizer must carry a chat template), and writes
the same records plus `output`. `prepare_submission` copies exactly what that needs (weights as
safetensors, generation config), writes config.json and the tokenizer in a form transformers 4.x
reads exactly like the kit does (`model.portable.portable_model_config`, `model.portable`), checks it
loads here, and then loads it in a side environment with transformers 4.57.0 and compares the
config, tokenizer ids and chat-prompt ids with this environment's (`model.compat`). If that
environment cannot be built (no PyPI access), prepare stops with one sentence unless
`skip_compat_check=True` (`--skip-compat-check`), which is recorded in the manifest.
`smoke_test` runs the submission's contract locally.
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

# What an HF model folder needs at inference time (no optimizer state, no training leftovers);
# config.json and the tokenizer files are rewritten, not copied (see module doc).
WANTED = ("*.safetensors", "*.safetensors.index.json", "generation_config.json")
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


def prepare_submission(spec: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                       skip_compat_check: bool = False, log=print) -> dict[str, Any]:
    """Copy the model behind `spec` into `out_dir` as a submission-ready HF folder and check it.

    The folder is checked in a transformers 4.57.0 side environment (the submission image's
    version) unless `skip_compat_check`; a difference or a failure to build that environment is
    a UserError, and nothing is left at `out_dir`.
    """
    from ..atomic import atomic_dir, write_json
    from ..convert.configs import read_json
    from ..model.portable import portable_model_config
    from ..model.portable import publish_tokenizer

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
        write_json(tmp / "config.json", portable_model_config(read_json(src / "config.json")))
        publish_tokenizer(src, tmp, template="keep")  # the model's own prompt format, portable
        if not (tmp / "generation_config.json").exists():
            _write_generation_config(tmp)
        leftover = check_model_folder(tmp)
        if leftover:
            raise UserError("; ".join(leftover))
        compat = _check_in_submission_env(tmp, skip_compat_check, log)
        manifest = {"source": str(src.resolve()), "compat_check": compat,
                    "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"folder": str(out), "source": str(src), "files": sorted(p.name for p in out.iterdir()),
            "bytes": size, "compat_check": compat}


def _check_in_submission_env(folder: Path, skip: bool, log) -> dict[str, Any]:
    """Load the folder in transformers 4.57.0 and compare with this environment (see module doc)."""
    from ..model import compat

    if skip:
        log("compat check skipped (--skip-compat-check): the folder was NOT loaded in transformers "
            f"{compat.ENVS['submission'].transformers}")
        return {"skipped": True}
    try:
        result = compat.check_folder(folder, "submission", log=log)
    except compat.SideEnvUnavailable as exc:
        raise UserError(f"{exc}; pass --skip-compat-check to prepare the folder without this check") from None
    if result["differences"]:
        raise UserError(f"the prepared folder does not load in transformers {result['transformers']} as it "
                        f"does here ({'; '.join(result['differences'])}); the submission image would "
                        "see another model (please report this)")
    log(f"compat check: config, tokenizer and chat-prompt ids identical in transformers "
        f"{result['transformers']} (the submission image's version)")
    return {"skipped": False, "transformers": result["transformers"], "identical": True}


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
