"""Content-addressed cache of tokenised JSONL files: memory-mapped arrays plus a manifest.

The key hashes everything that can change the arrays: the data file's bytes, the tokenizer's
files, the template version, the source code of the builder (this module, `encode`, `schema`,
`template`, `tokenizer`) and every option. Editing any of them gives a new key, so a stale cache
can never be reused (the official kit reused `<name>.pkl` whenever it existed); unchanged inputs
are never tokenised again. One directory per key, written atomically (`tunekit.atomic.atomic_dir`);
a file lock makes concurrent ranks build it once while the others wait and then read it.
An entry is used only when `cache_entry.entry_problem` finds it whole (every array matches the
checksum in its manifest); a damaged one is rebuilt (with a message saying why), and a build
stopped by a full disk says "disk full at <path>".

Opening is O(1) in the data size: the digests in the key come from `fingerprint.digest` (hashed
again only when a file's stat fingerprint changes), array checksums are verified at build and when
an array's fingerprint changes, and each array is memory-mapped once per `TokenizedFile`.

Building: worker processes (all cores for large files) each load the tokenizer once, tokenise
their byte ranges of the file and write their token arrays to part files; the parent streams the
parts into the final arrays, so its memory does not grow with the data. SentencePiece-based
tokenizers (llm-jp) are run with the `sentencepiece` library (`tokenizer.sentencepiece_twin`).

Layout of `<cache_root>/data/<key24>/`:
    manifest.json        key inputs, the validation report (counts + first problems), array list
    lines.npy            source line number of each kept record (int32)
    hashes.npy           content hash of each kept record (uint64; duplicates, hashed dev split)
    ids.npy              hash of each kept record's `ID`/`id` key (uint64, 0 = none; duplicate IDs)
    SFT: tokens.npy (int32), mask.npy (uint8 loss mask), offsets.npy (int64, n+1),
         loss_tokens.npy (int32, trained tokens per record)
    DPO: prompt.npy / chosen.npy / rejected.npy (int32, responses without the prompt) with
         prompt_off.npy / chosen_off.npy / rejected_off.npy (int64, n+1), plus bad_pairs in the report
    verified.json        stat fingerprints of the arrays at their last checksum verification
"""
from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import UserError
from ..paths import cache_root
from .. import template
from . import cache_entry, encode, fingerprint, schema, tokenizer, validate
from .cache_entry import entry_problem, read_manifest, write_array, write_npy
from .files import refusal
from .schema import FileReport, Kind, Problem, id_hash, record_hash  # noqa: F401 (re-exported)
from .tokenizer import LightTokenizer, load_tokenizer  # noqa: F401  (re-exported)

CACHE_FORMAT = 3   # 3: array checksums in the manifest; 2: arrays listed, duplicates reported
# Files of an HF tokenizer directory that define its behaviour (a model dir also holds weights).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                    "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
PARALLEL_MIN_RECORDS = 10_000   # below this, worker start-up costs more than it saves
CHUNK_RECORDS = 2_000


# --------------------------------------------------------------------------- key
def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised by its stat fingerprint: see tunekit.data.fingerprint)."""
    return fingerprint.digest(path, "sha256")


def tokenizer_digest(tok_dir: str | os.PathLike) -> str:
    """sha256 over the names and digests of the tokenizer files in `tok_dir`."""
    tok_dir = Path(tok_dir)
    h = hashlib.sha256()
    found = [n for n in _TOKENIZER_FILES if (tok_dir / n).is_file()]
    if not found:
        raise UserError(f"{tok_dir}: no tokenizer files here (expected tokenizer.json or "
                        "tokenizer.model; pass an HF model or tokenizer directory)")
    for name in found:
        h.update(name.encode() + b"\0" + file_digest(tok_dir / name).encode() + b"\0")
    return h.hexdigest()


_CODE: dict[tuple, str] = {}


def code_digest() -> str:
    """sha256 of the builder's source code: a code change invalidates every cache."""
    files = [Path(m.__file__) for m in (encode, schema, template, tokenizer, validate, cache_entry)]
    files.append(Path(__file__))
    stamp = tuple(fingerprint.stat_key(f) for f in files)
    if stamp not in _CODE:
        h = hashlib.sha256(str(CACHE_FORMAT).encode())
        for f in files:
            h.update(f.read_bytes())
        _CODE.clear()
        _CODE[stamp] = h.hexdigest()
    return _CODE[stamp]


def cache_key(path: str | os.PathLike, kind: Kind, tok_dir: str | os.PathLike,
              options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(hex key, the inputs it hashes) for one data file tokenised with one tokenizer."""
    inputs = {"format": CACHE_FORMAT, "kind": kind, "data_sha256": file_digest(path),
              "tokenizer_sha256": tokenizer_digest(tok_dir), "template": template.TEMPLATE_VERSION,
              "code_sha256": code_digest(), "options": dict(sorted(options.items()))}
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), inputs


# --------------------------------------------------------------------------- building
_WORKER: dict[str, Any] = {}


def _worker_init(tok_dir: str, info: encode.TokenizerInfo, twin: dict[str, Any] | None) -> None:
    # One single-threaded tokenizer per worker process, loaded once (not per chunk): the pool
    # already uses every core, and a thread pool on top would oversubscribe them. The parent's
    # probe result and its choice of encoder (the sentencepiece twin it checked) are reused.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = tokenizer.SentencePieceTokenizer(**twin) if twin else load_tokenizer(tok_dir)
    _WORKER.update(tok=tok, info=info)


def process_chunk(lines: list[tuple[int, bytes]], path: str, kind: Kind, options: dict[str, Any],
                  tok=None, info=None) -> dict[str, Any]:
    """Validate and tokenise a chunk of raw lines; returns arrays, counts and problems."""
    tok = tok if tok is not None else _WORKER["tok"]
    info = info if info is not None else _WORKER["info"]
    report = FileReport(path, kind)
    kept: list[tuple[int, dict]] = []
    plain = schema.texts_are_plain([raw for _, raw in lines])   # one search for the whole chunk
    for n, raw in lines:
        if not raw or raw.isspace():   # (bytes.isspace: the whitespace bytes.strip removes, no copy)
            report.blank += 1
            continue
        report.records += 1
        obj, error = schema.parse_line(raw)
        problems = [error] if error else schema.check_record(obj, kind, scan_texts=not plain)
        if not problems:
            kept.append((n, obj))
            continue
        for level, reason, message in problems:
            report.add(Problem(path, n, level, message), reason)
        if any(p[0] == "error" for p in problems):
            report.skipped += 1
        else:
            kept.append((n, obj))
    style = options["style"]
    out: dict[str, Any] = {}
    if kind == "sft" and style == "kit" and (arrays := _sft_arrays(kept, tok, info)) is not None:
        good = kept
        out.update(arrays)   # the hot path: ids and masks assembled by numpy
    elif kind == "sft":
        kept, enc = _encode_each_or_report(kept, lambda recs: encode.encode_sft_records(recs, tok, info, style),
                                           path, report)
        good = kept
        _flat(out, "tokens", [ids for ids, _ in enc], np.int32)
        # The mask from run lengths in one vectorised call (no per-token Python work).
        runs = [r for _, rr in enc for r in rr]
        values = np.fromiter((k % 2 for _, rr in enc for k in range(len(rr))), np.uint8, count=len(runs))
        out["mask"] = np.repeat(values, np.asarray(runs, np.int64))
        # Trained tokens per record: the loss runs are the odd ones.
        out["loss_tokens"] = np.fromiter((sum(rr[1::2]) for _, rr in enc), np.int32, count=len(enc))
    else:
        kept, enc = _encode_each_or_report(
            kept, lambda recs: encode.encode_dpo_records(recs, tok, info, style, options["dpo_append_eos"]),
            path, report)
        good, parts = [], []
        for (n, obj), e in zip(kept, enc):
            if isinstance(e, str):  # official style only: the prompt is not a prefix
                report.add(Problem(path, n, "error", f"tokenised prompt is not a prefix of the "
                                   f"response ids ({e})"), "prompt not a prefix")
                report.skipped += 1
                continue
            good.append((n, obj))
            parts.append(e)
        for j, name in enumerate(("prompt", "chosen", "rejected")):
            _flat(out, name, [e[j] for e in parts], np.int32)
    report.kept = len(good)
    out["lines"] = np.asarray([n for n, _ in good], np.int32)
    out["hashes"] = np.asarray([record_hash(o, kind) for _, o in good], np.uint64)
    out["ids"] = np.asarray([id_hash(o) for _, o in good], np.uint64)
    out["report"] = report
    return out


def _sft_arrays(kept: list[tuple[int, dict]], tok, info) -> dict[str, Any] | None:
    """`encode.encode_sft_arrays` of the records, or None on any failure: the record-by-record
    path then finds (and reports by path:line) the records at fault."""
    try:
        return encode.encode_sft_arrays([o for _, o in kept], tok, info)
    except Exception:  # noqa: BLE001 - a third-party tokenizer's error, or a record it cannot take
        return None


def _encode_each_or_report(kept: list[tuple[int, dict]], encode_many, path: str,
                           report: FileReport) -> tuple[list[tuple[int, dict]], list[Any]]:
    """Encode the records in one batch; if the tokenizer fails, encode them one by one and skip
    (as errors naming path:line) exactly those it fails on. Returns (records encoded, encodings)."""
    try:
        return kept, encode_many([o for _, o in kept])
    except Exception:  # noqa: BLE001 - any failure inside a third-party tokenizer; located below
        pass
    ok, out = [], []
    for n, obj in kept:
        try:
            [e] = encode_many([obj])
        except Exception as exc:  # noqa: BLE001 - the tokenizer's own error, reported per line
            report.add(Problem(path, n, "error", f"the tokenizer cannot encode this record "
                               f"({type(exc).__name__}: {exc})"), "tokenizer failed")
            report.skipped += 1
            continue
        ok.append((n, obj))
        out.append(e)
    return ok, out


def _flat(out: dict[str, Any], name: str, seqs: list[list[int]], dtype) -> None:
    """Store ragged lists as one flat array + lengths: cheap to pickle back from a worker."""
    out[name] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype)
    out[f"{name}_len"] = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))


def _merge_reports(path: str, kind: Kind, reports: list[FileReport]) -> FileReport:
    total = FileReport(path, kind)
    for r in reports:
        for attr in ("records", "kept", "skipped", "blank", "warnings"):
            setattr(total, attr, getattr(total, attr) + getattr(r, attr))
        for attr in ("skipped_by_reason", "warnings_by_reason"):
            bucket = getattr(total, attr)
            for k, v in getattr(r, attr).items():
                bucket[k] = bucket.get(k, 0) + v
        room = schema.MAX_REPORTED - len(total.problems)
        total.problems.extend(r.problems[:max(room, 0)])
    return total


def default_workers() -> int:
    """Worker processes for large files: all cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _facts_memo(tok_sha: str) -> Path:
    import importlib.metadata as md

    # The twin check compares two libraries: their versions are part of what it found.
    versions = "/".join(md.version(d) for d in ("sentencepiece", "tokenizers"))
    key = hashlib.sha256(f"{tok_sha}\0{code_digest()}\0{versions}".encode()).hexdigest()
    return cache_root() / "tokenizers" / f"{key[:32]}.json"


def tokenizer_facts(tok_dir: Path, tok_sha: str) -> tuple[encode.TokenizerInfo, dict[str, Any] | None, Any]:
    """(probe result, sentencepiece twin spec or None, the loaded tokenizer or None) for a tokenizer
    directory whose files hash to `tok_sha` (`tokenizer_digest`).

    Loading the HF tokenizer, probing it and checking its sentencepiece twin cost ~1.5 CPU-s, the
    same for every file tokenised with the same tokenizer files: the result is memoised in
    `<cache_root>/tokenizers/`, keyed by the files' digest, the builder's code and the versions of
    sentencepiece and tokenizers, so only the first build with a tokenizer pays for it (the
    workers then load just the encoder). The tokenizer is None when the facts came from the memo."""
    known = _memoised_facts(tok_dir, tok_sha)
    if known is not None:
        return (*known, None)
    memo = _facts_memo(tok_sha)
    tok = load_tokenizer(tok_dir)
    info = encode.probe(tok)
    twin = tokenizer.sentencepiece_twin(tok_dir, tok)
    spec = twin.spec() if twin else None
    fingerprint.write_side_file(memo, {"tokenizer_sha256": tok_sha, "info": asdict(info),
                                       "twin": {k: v for k, v in spec.items() if k != "model_file"}
                                       if spec else None})
    return info, spec, twin or tok


def _memoised_facts(tok_dir: Path, tok_sha: str) -> tuple[encode.TokenizerInfo, dict[str, Any] | None] | None:
    """`tokenizer_facts` from its memo, or None when there is none (or one of another layout)."""
    rec = fingerprint._read_json(_facts_memo(tok_sha))
    if not rec or rec.get("tokenizer_sha256") != tok_sha:
        return None
    try:
        info = encode.TokenizerInfo(**{**rec["info"], "prefix_ids": tuple(rec["info"]["prefix_ids"]),
                                       "newline_ids": tuple(rec["info"]["newline_ids"])})
        twin = rec["twin"]
        if twin is not None:
            if set(twin) != {"specials", "roles", "demote"}:
                return None
            twin = {**twin, "model_file": str(tok_dir / "tokenizer.model")}
        return info, twin
    except (KeyError, TypeError):
        return None


# SentencePiece encoders loaded in this process, by tokenizer digest and twin spec: loading one
# costs ~0.2 s, paid once per process however many files it tokenises, and started in a thread
# while a new data file is hashed and scanned (`_preload_encoder`).
_ENCODERS: dict[str, Future] = {}
_ENCODERS_LOCK = threading.Lock()


def sentencepiece_encoder(tok_sha: str, twin: dict[str, Any]) -> Future:
    """A future of the `tokenizer.SentencePieceTokenizer` for a twin spec, loaded once per process."""
    key = json.dumps([tok_sha, twin], sort_keys=True)
    with _ENCODERS_LOCK:
        fut = _ENCODERS.get(key)
        if fut is None:
            fut = _ENCODERS[key] = Future()

            def load():
                try:
                    fut.set_result(tokenizer.SentencePieceTokenizer(**twin))
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                    fut.set_exception(exc)

            threading.Thread(target=load, name="tunekit-sentencepiece-load", daemon=True).start()
    return fut


def _preload_encoder(path: Path, tok_dir: Path) -> None:
    """Start loading the encoder when `path` is new to the cache (its digest is not memoised, so a
    build is likely): the load then overlaps hashing the file. A known file costs one stat."""
    try:
        if fingerprint.memoised(path) is not None:
            return
        tok_sha = tokenizer_digest(tok_dir)
        facts = _memoised_facts(tok_dir, tok_sha)
    except (OSError, UserError):
        return   # the caller reports it
    if facts is not None and _forks(facts[1]):
        sentencepiece_encoder(tok_sha, facts[1])


BIG = {"sft": ("tokens", "mask"), "dpo": ("prompt", "chosen", "rejected")}
_DTYPES = {"mask": np.uint8}
# Arrays of one value per record: small (n x 8 bytes), returned by the workers and concatenated.
_PER_RECORD = {"sft": ("lines", "hashes", "ids", "loss_tokens"), "dpo": ("lines", "hashes", "ids")}
_SMALL_DTYPES = {"lines": np.int32, "hashes": np.uint64, "ids": np.uint64, "loss_tokens": np.int32}


def _build(path: Path, kind: Kind, tok_dir: Path, tok_sha: str, options: dict[str, Any], out: Path,
           workers: int, show_progress: bool) -> tuple[FileReport, dict[str, Any], dict[str, Any], dict]:
    from ..runtime import progress

    t0 = time.perf_counter()
    # Workers read their own byte ranges: only offsets travel between processes.
    info, twin_spec, tok = tokenizer_facts(tok_dir, tok_sha)
    if twin_spec and tok is None:
        sentencepiece_encoder(tok_sha, twin_spec)   # loads (in a thread) while the file is scanned
    ranges = schema.line_ranges(path, CHUNK_RECORDS)
    n_lines = sum(r[3] for r in ranges)
    workers = workers or default_workers()
    bar = progress(total=n_lines, desc=f"tokenise {path.name}", unit="line",
                   disable=not show_progress)
    parts = out / ".parts"
    parts.mkdir()
    jobs = [(str(path), r[0], r[1], r[2], kind, options, str(parts / f"{k:06d}")) for k, r in enumerate(ranges)]
    results: list[dict[str, Any]] = []
    processes = 1
    if workers > 1 and n_lines >= PARALLEL_MIN_RECORDS and (_forks(twin_spec) or _can_spawn()):
        processes = min(workers, len(jobs))
        results = _run_pool(jobs, processes, tok_dir, info, twin_spec, bar, tok, tok_sha)
    if not results:
        processes = 1
        if tok is None:   # the facts came from the memo: load the encoder they name
            tok = sentencepiece_encoder(tok_sha, twin_spec).result() if twin_spec else load_tokenizer(tok_dir)
        for job in jobs:
            res = _range_job(job, tok, info)
            results.append(res)
            bar.update(res["report"].records + res["report"].blank)
    bar.close()
    report = _merge_reports(str(path), kind, [r["report"] for r in results])
    small = {name: np.concatenate([r[name] for r in results] or [np.zeros(0, _SMALL_DTYPES[name])])
             for name in _PER_RECORD[kind]}
    # Duplicates within the file: the validator's rule and messages (across files: the mixture).
    index = validate.DuplicateIndex()
    twice = _seen_twice(small["hashes"]) | _seen_twice(small["ids"], ignore=0)   # the rest has nothing to say
    for n, h, i in zip(*(small[k][twice].tolist() for k in ("lines", "hashes", "ids"))):
        for reason, message, _ in index.check(str(path), n, h, i):
            report.add(Problem(str(path), n, "warning", message), reason)
    schema.finish_file(report)
    report.problems.sort(key=lambda p: p.line)  # line order, as the validator reports them
    specs: dict[str, dict[str, Any]] = {}
    for name in BIG[kind]:
        specs[name] = _join_parts(out / f"{name}.npy", name, [r["parts"][name] for r in results])
        if name != "mask":
            lens = np.concatenate([r[f"{name}_len"] for r in results] or [np.zeros(0, np.int64)])
            off = np.zeros(len(lens) + 1, np.int64)
            np.cumsum(lens, out=off[1:])
            key = "offsets" if name == "tokens" else f"{name}_off"
            specs[key] = write_array(out / f"{key}.npy", off)
    for name, arr in small.items():
        specs[name] = write_array(out / f"{name}.npy", arr)
    parts.rmdir()
    peaks = [r["peak_rss_mb"] for r in results if r.get("peak_rss_mb") is not None]
    build = {"seconds": round(time.perf_counter() - t0, 3), "lines": n_lines, "chunks": len(jobs),
             "processes": processes, "encoder": "sentencepiece" if twin_spec else "tokenizers",
             "peak_rss_mb": round(max(peaks), 1) if peaks else None}
    return report, asdict(info), build, specs


def _seen_twice(values: np.ndarray, ignore: int | None = None) -> np.ndarray:
    """Mask of the values that occur more than once (`ignore`: a value that never counts)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    twice = counts[inverse] > 1
    if ignore is not None:
        twice &= values != ignore
    return twice


def _join_parts(dst: Path, name: str, parts: list[tuple[str, int]]) -> dict[str, Any]:
    """Stream the workers' part files (raw array bytes, in file order) into one .npy, deleting
    each part once copied: memory stays at one block, disk at the data plus one part."""
    dtype = np.dtype(_DTYPES.get(name, np.int32))

    def blocks():
        for part, _ in parts:
            with open(part, "rb") as f:
                yield from iter(lambda: f.read(1 << 24), b"")
            os.unlink(part)

    return write_npy(dst, dtype, sum(n for _, n in parts), blocks())


def _range_job(job, tok=None, info=None):
    path, start, end, first, kind, options, part = job
    # A chunk allocates some 10^5 dicts, lists and strings that hold no cycles (parsed JSON, token
    # lists): refcounting frees them all, and the cyclic collector's passes over them (and, in a
    # forked worker, over every object inherited from the parent) cost 13-17% of the chunk.
    collecting = gc.isenabled()
    gc.disable()
    try:
        out = process_chunk(schema.lines_in_range(path, start, end, first), path, kind, options, tok, info)
    finally:
        if collecting:
            gc.enable()
    out["parts"] = {}
    for name in BIG[kind]:  # the token arrays go to disk here, not back to the parent
        arr = np.ascontiguousarray(out.pop(name))
        file = f"{part}.{name}"
        with open(file, "wb") as f:
            f.write(memoryview(arr).cast("B") if arr.size else b"")
        out["parts"][name] = (file, len(arr))
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _peak_rss_mb() -> float | None:
    """This worker's peak resident memory (VmHWM: unlike ru_maxrss, not inherited at spawn); for a
    forked worker, the part above what it shared with the parent when it started."""
    peak = _proc_status_mb("VmHWM")
    return None if peak is None else peak - _WORKER.get("rss_at_start", 0.0)


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _forks(twin: dict[str, Any] | None) -> bool:
    """Whether the workers are forked (the sentencepiece encoder, on Linux) rather than spawned."""
    return bool(twin) and sys.platform.startswith("linux")


def _can_spawn() -> bool:
    """Spawned workers re-import the main script; impossible when it is not a file (stdin)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _worker_forked(tok: tokenizer.SentencePieceTokenizer, info: encode.TokenizerInfo) -> None:
    # The parent's signal handlers (a training run's "finish the step" flags) mean nothing here:
    # behave like a fresh interpreter (Ctrl-C raises, SIGTERM ends the worker).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    # Memory counted from here: what the worker adds to the pages it shares with the parent.
    _WORKER.update(tok=tok, info=info, rss_at_start=_proc_status_mb("VmRSS") or 0.0)


def _run_pool(jobs: list[tuple], workers: int, tok_dir: Path, info: encode.TokenizerInfo,
              twin: dict[str, Any] | None, bar, tok=None, tok_sha: str = "") -> list[dict[str, Any]]:
    """Run the range jobs in worker processes, results in file order; [] if the workers could
    not run (the caller then tokenises in this process)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # Each worker's tokenizer runs single-threaded so cores are not oversubscribed. Unlike
    # multiprocessing.Pool, the executor fails instead of respawning workers that die at start
    # (e.g. a script without an `if __name__ == "__main__":` guard).
    if _forks(twin):
        # fork: the workers inherit the imported kit and the SentencePiece model loaded once here
        # (a spawned worker spends ~0.5 CPU-s importing and loading it: 10-25% of tokenising 100k
        # records). Safe after torch started its threads, as for torch's own DataLoader workers:
        # a worker runs only sentencepiece, jiter and numpy, never torch or the kernel's threads.
        # HF `tokenizers` is not fork-safe once it has used its thread pool: it keeps spawn.
        if not isinstance(tok, tokenizer.SentencePieceTokenizer):
            tok = sentencepiece_encoder(tok_sha, twin).result()
        ctx, init, args = mp.get_context("fork"), _worker_forked, (tok, info)
    else:
        # spawn: a fresh interpreter per worker, which loads the tokenizer itself.
        ctx, init, args = mp.get_context("spawn"), _worker_init, (str(tok_dir), info, twin)
    results = []
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init, initargs=args) as ex:
            for res in ex.map(_range_job, jobs):
                results.append(res)
                bar.update(res["report"].records + res["report"].blank)
    except BrokenProcessPool:
        print("tunekit.data: worker processes could not start (guard the script's entry point with "
              "`if __name__ == \"__main__\":`); tokenising in this process instead", file=sys.stderr)
        return []
    return results


# --------------------------------------------------------------------------- loading
@dataclass
class TokenizedFile:
    """One cached, tokenised data file; arrays are memory-mapped (read lazily)."""

    path: Path
    kind: Kind
    dir: Path
    manifest: dict[str, Any]
    report: FileReport
    built: bool  # True if this call tokenised it, False if it came from the cache
    rebuilt_because: str | None = None  # why the entry found in the cache was damaged
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def array(self, name: str) -> np.ndarray:
        """A cached array, memory-mapped (once per TokenizedFile: reading records one by one must
        not reopen files)."""
        arr = self._maps.get(name)
        if arr is None:
            arr = self._maps[name] = np.load(self.dir / f"{name}.npy", mmap_mode="r")
        return arr

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap would carry its data: send the paths, reopen on the other side.
        return {**self.__dict__, "_maps": {}}

    def __len__(self) -> int:
        return int(self.manifest["records"])

    @property
    def info(self) -> encode.TokenizerInfo:
        """The tokenizer facts (bos/eos/pad ids, prefix) recorded when the file was tokenised."""
        d = self.manifest["tokenizer_info"]
        return encode.TokenizerInfo(**{**d, "prefix_ids": tuple(d["prefix_ids"]),
                                       "newline_ids": tuple(d["newline_ids"])})

    def sft(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, loss_mask) of record i."""
        maps = self._maps
        if not {"offsets", "tokens", "mask"} <= maps.keys():
            for name in ("offsets", "tokens", "mask"):
                self.array(name)
        off = maps["offsets"]
        a, b = int(off[i]), int(off[i + 1])
        return np.asarray(maps["tokens"][a:b]), np.asarray(maps["mask"][a:b])

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt, chosen response, rejected response) ids of record i (responses without prompt)."""
        out = []
        for name in ("prompt", "chosen", "rejected"):
            off = self.array(f"{name}_off")
            out.append(np.asarray(self.array(name)[int(off[i]):int(off[i + 1])]))
        return out[0], out[1], out[2]

    def record(self, i: int) -> dict:
        """The source JSON record of kept record i (re-read from its line in the file)."""
        line = int(self.array("lines")[i])
        for n, raw in schema.iter_lines(self.path):
            if n == line:
                return json.loads(raw.decode("utf-8"))
        raise UserError(f"{self.path}:{line}: line no longer exists (the file changed; re-run)")

    def lengths(self, name: str = "tokens") -> np.ndarray:
        """Per-record lengths of an array (tokens for SFT; prompt/chosen/rejected for DPO)."""
        off = self.array("offsets" if name == "tokens" else f"{name}_off")
        return np.diff(off)


def tokenize_file(path: str | os.PathLike, kind: Kind, tok_dir: str | os.PathLike, *,
                  style: str = "kit", dpo_append_eos: bool = False, workers: int = 0,
                  show_progress: bool = True) -> TokenizedFile:
    """Tokenise a JSONL file into the content-addressed cache (or reuse it) and open it.

    Args:
        path: the .jsonl file. kind: "sft" or "dpo". tok_dir: HF tokenizer or model directory.
        style: "kit" (default) or "official" token semantics (see tunekit.data.encode).
        dpo_append_eos: append eos to DPO responses (the official kit does not).
        workers: processes for large files (0 = all cores).
    """
    from filelock import FileLock

    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker is re-importing an unguarded main script that calls us: fail fast so
        # the parent notices (it would otherwise wait on the cache lock the parent holds).
        raise RuntimeError("tunekit.data: tokenisation started while a worker process imports the "
                           "main script (guard it with `if __name__ == \"__main__\":`)")
    path, tok_dir = Path(path), Path(tok_dir)
    why = refusal(path)  # before anything opens it: a FIFO would block, a directory raise
    if why:
        raise UnreadableFile(path, kind, why)
    encode.check_style(style)
    options = {"style": style}
    if kind == "dpo":
        options["dpo_append_eos"] = bool(dpo_append_eos)
    _preload_encoder(path, tok_dir)
    key, inputs = cache_key(path, kind, tok_dir, options)
    root = cache_root() / "data"
    final = root / key[:24]  # content only: a renamed copy of the same bytes reuses it
    damaged = entry_problem(final, key) if final.exists() else None
    built = False
    if damaged or not final.exists():
        (root / ".locks").mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".locks" / f"{key[:32]}.lock")):
            # Another process may have built (or repaired) it while this one waited.
            damaged = entry_problem(final, key) if final.exists() else None
            if damaged or not final.exists():
                if damaged:
                    print(f"tunekit.data: cache entry {final} (for {path}) is damaged: {damaged}; "
                          "rebuilding it", file=sys.stderr, flush=True)
                _build_entry(path, kind, tok_dir, options, key, inputs, final, workers, show_progress)
                built = True
                again = entry_problem(final, key)
                if again:
                    raise UserError(f"{final}: the cache entry just built for {path} is not whole "
                                    f"({again}) (check the disk; the entry is not used)")
    manifest = read_manifest(final)
    # The key is content-only: the same bytes under another name reuse the cache, so messages
    # must name the file the caller asked for.
    summary = {**manifest["report"], "path": str(path)}
    report = FileReport.from_summary(summary, [{**p, "path": str(path)} for p in manifest["problems"]])
    return TokenizedFile(path, kind, final, manifest, report, built, damaged)


def _build_entry(path: Path, kind: Kind, tok_dir: Path, options: dict[str, Any], key: str,
                 inputs: dict[str, Any], final: Path, workers: int, show_progress: bool) -> None:
    """Tokenise `path` into a new cache entry at `final` (atomically; a full disk is one sentence)."""
    try:
        with atomic.atomic_dir(final, overwrite=True) as tmp:
            report, info, build, arrays = _build(path, kind, tok_dir, inputs["tokenizer_sha256"], options, tmp,
                                                   workers, show_progress)
            manifest = {"key": key, "inputs": inputs, "source": str(path.resolve()),
                        "tokenizer_info": info, "build": build, "arrays": arrays,
                        "records": report.kept, "report": report.summary(),
                        "problems": [vars(p) for p in report.problems]}
            atomic.write_json(tmp / cache_entry.MANIFEST, manifest)
    except OSError as exc:
        if cache_entry.is_disk_full(exc):
            raise cache_entry.disk_full_error(final, path, exc) from None
        raise


class UnreadableFile(UserError):
    """A data file refused as a whole (tunekit.data.files); `report` records it as one error."""

    def __init__(self, path: Path, kind: Kind, why: str):
        super().__init__(f"{path}: {why}")
        self.report = FileReport(str(path), kind)
        self.report.add(Problem(str(path), 0, "error", why), "file not readable")
