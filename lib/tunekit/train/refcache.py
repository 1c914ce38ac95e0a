"""Reference log-probs computed once, cached on disk by content, never a second model in memory.

DPO compares the policy with a frozen reference (the starting policy). Holding a live reference
doubles the model memory and adds a forward pass per step; the reference's log-probs of the
training pairs never change, so the kit computes them ONCE, before the first optimiser step, with
the freshly loaded policy itself (at that moment it IS the reference), and stores them:

    <cache>/refcache/<key[:2]>/<key>/logps.npz   per unique pair: digest, chosen and rejected sums
                                    /meta.json   what went into the key, counts, timing

The key is a hash of everything the numbers depend on: the pairs' token ids (so the data, the
template, the over-length policy and the sequence length are all covered by content), the
reference weights' content (not their path), the template version, the sequence length and the
compute dtype. Sums are stored with the token counts known from the ids, so summed and
per-token-averaged losses (`preference_average_log_probs`) both come from the same entry: the
normalisation is derived, not part of the key. A sweep over beta, lr or loss type reuses it.

Writes are atomic (a killed computation leaves nothing a later run trusts). An entry that cannot
be read or lacks a pair it should hold (flipped bytes fail the zip CRC check) is reported naming
the file and recomputed in place, like a damaged data-cache entry. Rank 0 takes a file
lock so that two jobs needing the same entry compute it once; all ranks of a job share the work
(each runs its share of the micro-batches, results are gathered).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .. import atomic
from ..paths import cache_root
from ..runtime import progress
from .batches import Pair, PairBatch, build_pair_batch

FORMAT_VERSION = 2
_HASH_CHUNK = 16 << 20


# ----------------------------------------------------------------------------- fingerprints
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(model_dir: str | os.PathLike, cache_dir: Path | None = None) -> str:
    """A content hash of an HF model dir's config and weights (memoised by path, size and mtime).

    Hashing 16 GB of llm-jp-4-8b safetensors takes a while, so each file's hash is remembered in
    `<cache>/refcache/file-hashes.json` under its absolute path, size and mtime; a changed file is
    hashed again. The fingerprint itself is always derived from file contents.
    """
    model_dir = Path(model_dir).resolve()
    files = sorted([model_dir / "config.json", *model_dir.glob("*.safetensors")])
    memo_path = (cache_dir or cache_root()) / "refcache" / "file-hashes.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    h, changed = hashlib.sha256(), False
    for f in files:
        st = f.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        entry = memo.get(str(f))
        if not entry or entry.get("stamp") != stamp:
            entry, changed = {"stamp": stamp, "sha256": _file_sha256(f)}, True
            memo[str(f)] = entry
        h.update(f.name.encode() + b"\0" + entry["sha256"].encode() + b"\n")
    if changed:
        with contextlib.suppress(OSError):  # the memo is an optimisation; never fail on it
            atomic.write_json(memo_path, memo)
    return h.hexdigest()


def cache_key(pairs: Sequence[Pair], *, weights: str, template: str, max_seq_length: int,
              compute_dtype: str) -> tuple[str, dict[str, Any]]:
    """The content address of the reference log-probs of `pairs`, and what went into it."""
    digests = sorted({p.digest() for p in pairs})
    data = hashlib.sha256(b"".join(digests)).hexdigest()
    parts = {"format": FORMAT_VERSION, "data": data, "unique_pairs": len(digests),
             "weights": weights, "template": template, "max_seq_length": int(max_seq_length),
             "compute_dtype": compute_dtype}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return key, parts


# ----------------------------------------------------------------------------- the table
@dataclass
class ReferenceLogps:
    """Summed reference log-probs per pair digest (chosen, rejected), with look-up by batch."""

    table: dict[bytes, tuple[float, float]]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, digests: Sequence[bytes], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] chosen and [N] rejected summed reference log-probs of these pairs (fp32)."""
        try:
            vals = [self.table[d] for d in digests]
        except KeyError:
            raise KeyError("a pair has no cached reference log-probs (the cache entry does not "
                           "match this data; delete it and rerun)") from None
        t = torch.tensor(vals, dtype=torch.float32, device=device).reshape(len(vals), 2)
        return t[:, 0], t[:, 1]

    def for_batch(self, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of a pair batch, on the batch's device."""
        return self.lookup(pb.digests, device=pb.n_chosen.device)

    def save(self, directory: Path) -> None:
        """Write logps.npz + meta.json into `directory` (callers make that directory atomic)."""
        digests = list(self.table)
        arr = np.array([self.table[d] for d in digests], dtype=np.float32).reshape(len(digests), 2)
        dig = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16)
        with open(directory / "logps.npz", "wb") as f:
            np.savez(f, digest=dig, chosen=arr[:, 0], rejected=arr[:, 1])
        atomic.write_json(directory / "meta.json", self.info)

    @classmethod
    def load(cls, directory: Path) -> "ReferenceLogps":
        """Read an entry written by `save`."""
        with np.load(directory / "logps.npz") as z:
            dig, c, r = z["digest"], z["chosen"], z["rejected"]
        table = {bytes(d): (float(a), float(b)) for d, a, b in zip(dig, c, r)}
        info = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        return cls(table, info)


def load_checked(directory: Path, digests: Sequence[bytes]) -> tuple[ReferenceLogps | None, str | None]:
    """(the entry, None) if it reads back whole and holds every pair in `digests`, else (None, why)."""
    import zipfile

    try:
        ref = ReferenceLogps.load(directory)
    except FileNotFoundError as exc:
        return None, f"{Path(exc.filename or '?').name} is missing"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # zip CRC mismatches (flipped bytes), truncation and garbage all land here
        name = "meta.json" if isinstance(exc, json.JSONDecodeError) else "logps.npz"
        return None, f"{name} cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    missing = sum(d not in ref.table for d in set(digests))
    if missing:
        return None, f"logps.npz lacks {missing} of the pairs its key covers"
    return ref, None


# ----------------------------------------------------------------------------- computing
def _groups(pairs: Sequence[Pair], micro_batch_size: int, world_size: int,
            eval_layout: bool) -> list[tuple[list[Pair], int]]:
    """Micro-batches to run, each with its number of real pairs, a multiple of `world_size` long.

    Unique layout: duplicates removed, the last group may be short, missing groups repeat group 0
    (with 0 real pairs). Eval layout: exactly how `tunekit.train.engine.evaluate` groups a dataset
    (in order, every group filled up with copies of pair 0), so the cached values of the dev pairs
    are bit-identical to what the policy computes there at step 0.
    """
    if eval_layout:
        seq = list(pairs)
    else:
        seq = list({p.digest(): p for p in pairs}.values())
    if not seq:
        return []
    groups = []
    for i in range(0, len(seq), micro_batch_size):
        g = seq[i:i + micro_batch_size]
        real = len(g)
        if eval_layout:
            g = g + [seq[0]] * (micro_batch_size - real)
        groups.append((g, real))
    while len(groups) % world_size:
        groups.append((groups[0][0] if not eval_layout else [seq[0]] * micro_batch_size, 0))
    return groups


@torch.no_grad()
def compute_reference_logps(logps_fn: Callable[[PairBatch], tuple[torch.Tensor, torch.Tensor]],
                            pairs: Sequence[Pair], *, micro_batch_size: int, packed: bool = True,
                            pad_id: int = 0, pad_multiple: int = 8, varlen: bool = False, device=None,
                            rank: int = 0, world_size: int = 1, eval_layout: bool = False,
                            desc: str = "reference log-probs") -> dict[bytes, tuple[float, float]]:
    """Summed log-probs of `pairs` under `logps_fn` (the reference): this rank's share.

    Micro-batches are dealt round-robin over ranks (group j to rank j % world_size, which is also
    how evaluation deals them); every rank runs the same number of forward passes, as FSDP's
    collectives need.
    """
    groups = _groups(pairs, micro_batch_size, world_size, eval_layout)
    mine = groups[rank::world_size]
    out: dict[bytes, tuple[float, float]] = {}
    bar = progress(mine, desc=desc, unit="batch", disable=rank != 0)
    for group, real in bar:
        pb = build_pair_batch(group, packed=packed, pad_id=pad_id, pad_multiple=pad_multiple, varlen=varlen)
        if device is not None:
            pb = pb.to(device)
        c, r = logps_fn(pb)
        cs, rs = c.float().cpu().tolist(), r.float().cpu().tolist()
        for d, a, b in list(zip(pb.digests, cs, rs))[:real]:
            out[d] = (a, b)
    bar.close()
    return out


def _gather(table: dict[bytes, tuple[float, float]], world_size: int) -> dict[bytes, tuple[float, float]]:
    if world_size == 1:
        return table
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, table)
    merged: dict[bytes, tuple[float, float]] = {}
    for p in parts:
        merged.update(p)
    return merged


@contextlib.contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`; `on_wait` runs once if we have to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def entry_dir(key: str, cache_dir: Path | None = None) -> Path:
    """Where the entry with this key lives."""
    return (cache_dir or cache_root()) / "refcache" / key[:2] / key


def _broadcast(obj: Any, world_size: int) -> Any:
    if world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ensure_reference_logps(logps_fn: Callable[[PairBatch], tuple[torch.Tensor, torch.Tensor]],
                           pairs: Sequence[Pair], *, eval_pairs: Sequence[Pair] = (),
                           model_dir: str | os.PathLike,
                           template: str, max_seq_length: int, compute_dtype: str,
                           micro_batch_size: int, packed: bool = True, pad_id: int = 0,
                           pad_multiple: int = 8, varlen: bool = False, device=None, rank: int = 0,
                           world_size: int = 1,
                           cache_dir: Path | None = None, log: Callable[[str], None] = print
                           ) -> ReferenceLogps:
    """The reference log-probs of `pairs`: loaded from the cache, or computed once and stored.

    Collective: every rank calls it with the same pairs. `logps_fn` must be the reference
    (in the DPO stage: the freshly loaded policy, before any optimiser step or checkpoint load).

    Args:
        logps_fn: pair batch -> (chosen, rejected) summed log-probs; run under no_grad.
        pairs: the training pairs (duplicates are computed once).
        eval_pairs: the dev pairs, computed in the evaluation layout (bit-identical at step 0).
        model_dir: the reference model's HF dir (its weights' content is part of the key).
        template, max_seq_length, compute_dtype: the rest of the key.
        micro_batch_size: pairs per forward pass while computing.
        packed, pad_id, pad_multiple, varlen: the batch layout (batches.build_pair_batch), the
            training one, so dev values equal what evaluation computes at step 0.
        cache_dir: the cache root (default: tunekit.paths.cache_root()).
        log: where one-line progress messages go (rank 0 only).
    """
    say = log if rank == 0 else (lambda _msg: None)
    weights = _broadcast(weights_fingerprint(model_dir, cache_dir) if rank == 0 else None, world_size)
    key, parts = cache_key([*pairs, *eval_pairs], weights=weights, template=template,
                           max_seq_length=max_seq_length, compute_dtype=compute_dtype)
    target = entry_dir(key, cache_dir)
    if not pairs and not eval_pairs:
        return ReferenceLogps({}, {"key": key, **parts, "hit": True})
    lock_path = target.parent / f"{key}.lock"
    lock = _file_lock(lock_path, on_wait=lambda: say(
        f"reference log-probs: waiting for another process computing the same entry ({key[:12]})"))
    with (lock if rank == 0 else contextlib.nullcontext()):
        found = None
        if rank == 0 and target.is_dir():
            found, damaged = load_checked(target, [p.digest() for p in [*pairs, *eval_pairs]])
            if damaged:
                say(f"reference log-probs: cache entry {target} is damaged: {damaged}; recomputing it")
        hit = _broadcast(found is not None if rank == 0 else None, world_size)
        if hit:
            ref = found if rank == 0 else ReferenceLogps.load(target)
            ref.info["hit"] = True
            say(f"reference log-probs: cache hit {key[:12]} ({len(ref)} pairs) at {target}")
            return ref
        say(f"reference log-probs: computing {parts['unique_pairs']} pairs once (cache {key[:12]})")
        t0 = time.time()
        common = dict(micro_batch_size=micro_batch_size, packed=packed, pad_id=pad_id, pad_multiple=pad_multiple,
                      varlen=varlen, device=device, rank=rank, world_size=world_size)
        table = _gather(compute_reference_logps(logps_fn, pairs, **common), world_size)
        if eval_pairs:
            # dev values win for pairs in both splits: then they match evaluation exactly
            table.update(_gather(compute_reference_logps(logps_fn, eval_pairs, eval_layout=True,
                                                         desc="reference log-probs (dev)", **common),
                                 world_size))
        info = {"key": key, **parts, "model_dir": str(Path(model_dir).resolve()),
                "seconds": round(time.time() - t0, 3), "world_size": world_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ref = ReferenceLogps(table, info)
        if rank == 0:
            with atomic.atomic_dir(target, overwrite=True) as tmp:
                ref.save(tmp)
            say(f"reference log-probs: stored at {target} ({info['seconds']:.1f} s)")
    ref.info["hit"] = False
    return ref

