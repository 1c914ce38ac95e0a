"""One entry of the data cache on disk: writing its arrays, and deciding whether it is whole.

`entry_problem` is the single place that decides whether a cache entry may be used: the manifest
must parse and belong to the key, and every array it lists must match the xxh3-128 checksum the
manifest recorded when it was written (so flipped bytes, a truncated file or another array of the
same shape are all caught). Checksums are verified when the entry is built and again whenever an
array's stat fingerprint changes (`fingerprint.verify_files`), not on every open: a warm open
stays O(1). A damaged entry is never used: `tunekit.data.cache` says why and rebuilds it.
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


CHECKSUM = "xxh3_128"


def npy_header(dtype, length: int) -> bytes:
    """The .npy header of a 1-D C-order array (what np.save writes before the data)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": (length,)})
    return buf.getvalue()


def write_npy(path: Path, dtype, length: int, blocks) -> dict[str, Any]:
    """Stream a 1-D array into `path` as .npy from byte blocks (large sequential writes), hashing
    while writing; returns its manifest spec {"dtype", "shape", CHECKSUM}. A full disk is ENOSPC
    naming the file."""
    from .fingerprint import new_hasher

    h = new_hasher(CHECKSUM)
    written = 0
    try:
        with open(path, "wb") as f:
            head = npy_header(dtype, length)
            f.write(head)
            h.update(head)
            for block in blocks:
                f.write(block)
                h.update(block)
                written += len(block)
    except OSError as exc:
        if is_disk_full(exc) and not exc.filename:
            raise OSError(errno.ENOSPC, f"No space left on device ({exc})", str(path)) from None
        raise
    if written != length * np.dtype(dtype).itemsize:
        raise RuntimeError(f"internal: {path.name}: wrote {written} bytes for {length} x {dtype}")
    return {"dtype": str(np.dtype(dtype)), "shape": [length], CHECKSUM: h.hexdigest()}


def write_array(path: Path, arr: np.ndarray) -> dict[str, Any]:
    """`write_npy` of an in-memory 1-D array."""
    arr = np.ascontiguousarray(arr)
    return write_npy(path, arr.dtype, len(arr), [memoryview(arr).cast("B")] if arr.size else [])


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
    from .fingerprint import verify_files

    arrays = manifest["arrays"]
    if not isinstance(arrays, dict) or any(not isinstance(s, dict) or CHECKSUM not in s for s in arrays.values()):
        return f"{MANIFEST} lacks the array checksums (written by an older kit)"
    return verify_files(entry, {f"{name}.npy": spec[CHECKSUM] for name, spec in arrays.items()}, CHECKSUM)


def is_disk_full(exc: OSError) -> bool:
    """True for the errors a full disk or an exhausted quota gives (numpy's short write included)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or bool(_SHORT_WRITE.search(str(exc)))


def disk_full_error(entry: Path, data_file: Path, exc: OSError) -> UserError:
    """The one sentence for a cache build stopped by a full disk (`exc.filename`: what was written)."""
    what = Path(exc.filename).name if exc.filename else "it"
    return UserError(f"disk full at {entry}: the cache entry for {data_file} could not be written "
                     f"(writing {what}: {exc.strerror or exc}) (free space on that disk, or set "
                     "TUNEKIT_CACHE_DIR to a folder on a larger one; nothing half-written was kept)")
