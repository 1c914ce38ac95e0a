"""The CUDA_VISIBLE_DEVICES guard: vLLM needs numeric GPU ids.

On ABCI the scheduler may set CUDA_VISIBLE_DEVICES to GPU UUIDs (`GPU-3f1c...`), and vLLM then
crashed (FACTS.md section 6); the submission is run with `--env CUDA_VISIBLE_DEVICES=0`. We check
before starting vLLM and, when `nvidia-smi` is available, say which numeric ids to use instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Mapping

from ..errors import UserError

_NUMERIC = re.compile(r"^\d+$")


def visible_device_problems(value: str | None) -> list[str]:
    """The entries of a CUDA_VISIBLE_DEVICES value that are not numeric ids ([] if all fine or unset)."""
    if value is None or value.strip() == "":
        return []
    return [item.strip() for item in value.split(",") if not _NUMERIC.match(item.strip())]


def uuid_to_index() -> dict[str, str]:
    """{GPU UUID: index} from `nvidia-smi`, or {} where it is not available."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = [line.split(",") for line in out.splitlines() if "," in line]
    return {uuid.strip(): index.strip() for index, uuid in pairs}


def numeric_devices(value: str, mapping: Mapping[str, str]) -> str | None:
    """The value rewritten with numeric ids using `mapping` (UUID -> index), or None if impossible."""
    items = []
    for item in (i.strip() for i in value.split(",")):
        if _NUMERIC.match(item):
            items.append(item)
        elif item in mapping:
            items.append(mapping[item])
        else:
            return None
    return ",".join(items)


def check_cuda_visible_devices(env: Mapping[str, str] | None = None) -> None:
    """Raise UserError if CUDA_VISIBLE_DEVICES holds anything but numeric GPU ids (e.g. UUIDs)."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    bad = visible_device_problems(value)
    if not bad:
        return
    fixed = numeric_devices(value or "", uuid_to_index())
    hint = (f"export CUDA_VISIBLE_DEVICES={fixed}" if fixed
            else "export CUDA_VISIBLE_DEVICES=0, or the numeric ids of your GPUs")
    raise UserError(f"CUDA_VISIBLE_DEVICES={value!r}: vLLM needs numeric GPU ids, not {bad[0]!r} "
                    f"({hint}; the submission runs with CUDA_VISIBLE_DEVICES=0)")
