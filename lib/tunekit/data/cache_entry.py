"""One entry of the data cache on disk: writing its arrays, and deciding whether it is whole.

`entry_problem` is the single place that decides whether a cache entry may be used: the manifest
must parse and belong to the key, and every array it lists must be there with the recorded dtype
and shape and its bytes all present. A damaged entry (a truncated or missing array, a garbage or
empty manifest) is never used: `tunekit.data.cache` says why and rebuilds it. Checks of array
contents (e.g. checksums recorded in the manifest) belong in `entry_problem` too.
"""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

MANIFEST = "manifest.json"
_REQUIRED = ("key", "records", "report", "problems", "tokenizer_info", "arrays")
# numpy reports a short write on a full disk as "N requested and M written", without an errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def array_specs(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """What the manifest records of each array: {name: {"dtype", "shape"}}."""
    return {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}


def read_manifest(entry: Path) -> dict[str, Any]:
    """The manifest of an entry that `entry_problem` accepted."""
    return json.loads((entry / MANIFEST).read_text(encoding="utf-8"))


def entry_problem(entry: Path, key: str) -> str | None:
    """Why the cache entry at `entry` must not be used (one phrase), or None when it is whole."""
    path = entry / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return f"{MANIFEST} cannot be read ({exc})"
    if not text.strip():
        return f"{MANIFEST} is empty"
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        return f"{MANIFEST} is not valid JSON ({exc})"
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED):
        return f"{MANIFEST} lacks the fields of a cache entry (written by an older kit, or damaged)"
    if manifest["key"] != key:
        return f"{MANIFEST} belongs to another cache key"
    for name, spec in manifest["arrays"].items():
        problem = _array_problem(entry / f"{name}.npy", spec)
        if problem:
            return problem
    return None


def _array_problem(path: Path, spec: dict[str, Any]) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        # mmap needs every byte the header promises: a truncated file fails here.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return f"{path.name} is damaged ({exc})"
    if str(arr.dtype) != spec.get("dtype") or list(arr.shape) != spec.get("shape"):
        return (f"{path.name} holds {arr.dtype} {list(arr.shape)} but the manifest says "
                f"{spec.get('dtype')} {spec.get('shape')}")
    return None


def is_disk_full(exc: OSError) -> bool:
    """True for the errors a full disk or an exhausted quota gives (numpy's short write included)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or bool(_SHORT_WRITE.search(str(exc)))


def disk_full_error(entry: Path, data_file: Path, exc: OSError) -> UserError:
    """The one sentence for a cache build stopped by a full disk (`exc.filename`: what was written)."""
    what = Path(exc.filename).name if exc.filename else "it"
    return UserError(f"disk full at {entry}: the cache entry for {data_file} could not be written "
                     f"(writing {what}: {exc.strerror or exc}) (free space on that disk, or set "
                     "TUNEKIT_CACHE_DIR to a folder on a larger one; nothing half-written was kept)")


def save_array(path: Path, arr: np.ndarray) -> None:
    """np.save that reports a full disk as ENOSPC naming the file (numpy gives neither)."""
    try:
        np.save(path, arr, allow_pickle=False)
    except OSError as exc:
        if is_disk_full(exc) and not exc.filename:
            raise OSError(errno.ENOSPC, f"No space left on device ({exc})", str(path)) from None
        raise
