"""File digests that are computed once: a file is hashed again only when its stat fingerprint changes.

Opening a cached dataset needs the digest of the data file and of the tokenizer's files (the cache
key). Hashing them on every open cost most of an open's time, so each digest is stored in a small
side file, `<cache>/fingerprints/<hash of the path>.json`, together with the file's fingerprint:
(size, mtime_ns, ctime_ns, inode, device). A later call whose `os.stat` gives the same fingerprint
reuses the digest; any write, copy, `touch` or replacement changes mtime/ctime or the inode, and the
file is hashed again.

Racy writes (as git calls them): a file changed again within the timestamp granularity of the
filesystem (a tick, or 1 s on Lustre) can keep its fingerprint. So a digest is trusted only if the
file's mtime and ctime were at least RACY_S older than the moment it was hashed; otherwise it is
hashed again (once: by then the file is old enough).

`verify_files` applies the same rule to the arrays of one cache entry, against the checksums in its
manifest: the arrays are re-hashed only when their fingerprint differs from the one recorded at the
last successful verification (`verified.json` in the entry).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..paths import cache_root

RACY_S = 2.0
BLOCK = 1 << 22
Stat = tuple[int, int, int, int, int]


def stat_key(path: str | os.PathLike) -> Stat:
    """The fingerprint of a file: (size, mtime_ns, ctime_ns, inode, device)."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def settled(key: Stat | list[int], hashed_ns: int) -> bool:
    """True if the file was last changed at least RACY_S before it was hashed."""
    return hashed_ns - max(key[1], key[2]) >= RACY_S * 1e9


def new_hasher(algo: str):
    """A hash object: "sha256" (cache keys) or "xxh3_128" (array checksums, ~10x faster)."""
    if algo == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.new(algo)


def hash_file(path: str | os.PathLike, algo: str) -> str:
    """The hex digest of a file's bytes (streamed)."""
    h = new_hasher(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _memo_path(path: Path) -> Path:
    name = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_root() / "fingerprints" / f"{name}.json"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing, unreadable or torn: hash again
    return data if isinstance(data, dict) else None


def write_side_file(path: Path, data: dict) -> None:
    """Replace a small side file (temp + rename; no fsync: a lost side file only costs a re-hash).
    Failures (a read-only shared cache) are ignored for the same reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def memoised(path: str | os.PathLike, algo: str = "sha256") -> str | None:
    """The digest of a file from its side file when its fingerprint is unchanged, else None."""
    path = Path(os.path.abspath(path))
    rec = _read_json(_memo_path(path))
    before = stat_key(path)
    if (rec and rec.get("path") == str(path) and rec.get("stat") == list(before)
            and settled(before, rec.get("hashed_ns", 0)) and algo in rec.get("digests", {})):
        return rec["digests"][algo]
    return None


def digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """The digest of a file, from the side file when its fingerprint is unchanged (see module doc)."""
    known = memoised(path, algo)
    if known is not None:
        return known
    path = Path(os.path.abspath(path))
    before = stat_key(path)
    memo = _memo_path(path)
    rec = _read_json(memo)
    hashed_ns = time.time_ns()
    value = hash_file(path, algo)
    if stat_key(path) == before:  # not changed while being hashed
        keep = rec.get("digests", {}) if rec and rec.get("stat") == list(before) else {}
        write_side_file(memo, {"path": str(path), "stat": list(before), "hashed_ns": hashed_ns,
                               "digests": {**keep, algo: value}})
    return value


VERIFIED = "verified.json"


def verify_files(entry: Path, checksums: dict[str, str], algo: str = "xxh3_128",
                 on_hash: Callable[[str], None] | None = None) -> str | None:
    """Check the files of a cache entry against `checksums` ({file name: hex digest}).

    Files whose fingerprint equals the one recorded at their last verification are trusted; the
    others are hashed (reported to `on_hash`). Returns why the entry must not be used, or None.
    """
    rec = _read_json(entry / VERIFIED) or {}
    seen = rec.get("files", {}) if rec.get("algo") == algo else {}
    now, hashed_any, out = time.time_ns(), False, {}
    for name, want in checksums.items():
        path = entry / name
        try:
            key = stat_key(path)
        except OSError:
            return f"{name} is missing"
        old = seen.get(name)
        if old and old.get("stat") == list(key) and old.get("digest") == want and settled(key, old.get("hashed_ns", 0)):
            out[name] = old
            continue
        if on_hash:
            on_hash(name)
        got = hash_file(path, algo)
        if got != want:
            return f"{name} does not match its checksum in the manifest (its bytes changed after it was written)"
        out[name] = {"stat": list(key), "digest": got, "hashed_ns": now}
        hashed_any = True
    if hashed_any:
        write_side_file(entry / VERIFIED, {"algo": algo, "files": out})
    return None
