"""Reading and validating the official JSONL formats, line by line, with `path:line:` messages.

SFT line:  {"messages": [system, user, assistant, (user, assistant)*, (user)?]}
DPO line:  {"messages": [system, user, (assistant, user)*], "chosen_response": str,
            "rejected_response": str}

Tolerated without comment: a UTF-8 BOM, CRLF endings, blank lines, a missing final newline and
extra keys (top level and inside messages). Every other problem is an error (the line cannot be
used) or a warning (the line is used, but probably not as intended). Each problem is reported once.
Counts always add up: records = kept + skipped, and blank lines are counted on their own.

A line longer than MAX_RECORD_BYTES is refused without being held in memory or tokenised: no
record that long fits a training sequence, and tokenising 50 MB only to keep 4096 tokens costs
minutes and gigabytes. Problems of a whole file (a directory, a FIFO, gzip, UTF-16, ...) are
found by `tunekit.data.files` before any line is read; duplicates across lines and files by
`tunekit.data.validate`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import jiter

from ..errors import UserError

Kind = Literal["sft", "dpo"]
ROLES = ("system", "user", "assistant")
# Special-token texts that an HF tokenizer turns into control tokens when they appear in content:
# the competition tokenizer's names (<|unk|> ... <|sep|>, see tunekit.model.portable) and the
# classic SentencePiece/LLaMA ones other tokenizers use.
SPECIAL_TEXTS = ("<|bos|>", "<|eos|>", "<|unk|>", "<|pad|>", "<|mask|>", "<|cls|>", "<|eod|>", "<|sep|>",
                 "<s>", "</s>", "<pad>", "<unk>")
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TEXTS))
MAX_REPORTED = 200  # per file; the rest are counted, not printed
# The longest line (bytes, without its line ending) read as a record. 1 MiB is ~250k tokens of
# text, 30x what llm-jp-4-8b trains on (4096 tokens); change it here (the cache key covers this
# file, so cached data is re-validated).
MAX_RECORD_BYTES = 1 << 20
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SPECIAL_BYTES_RE = re.compile(b"|".join(re.escape(t.encode()) for t in SPECIAL_TEXTS))
_SPECIAL_LEADS = sorted({t.encode()[:1] for t in SPECIAL_TEXTS})   # b"<": a memchr rules most chunks out
# Characters that show nothing: whitespace (str.isspace, NBSP included), zero-width and other
# format characters. Content made only of these is empty to a reader, not to the tokenizer.
_INVISIBLE_RE = re.compile("[\\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]*")


@dataclass
class Problem:
    """One problem of one line: error (line skipped) or warning (line kept)."""

    path: str
    line: int
    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path  # line 0: the whole file
        return f"{where}: {self.level}: {self.message}"


@dataclass
class FileReport:
    """What reading one file found; counts add up (records == kept + skipped)."""

    path: str
    kind: Kind
    records: int = 0          # non-blank lines
    kept: int = 0
    skipped: int = 0
    blank: int = 0
    warnings: int = 0
    file_errors: int = 0      # 1 when the whole file was refused (a directory, gzip, ...)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    warnings_by_reason: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)   # the first MAX_REPORTED
    # Called with each stored problem as it is found (`tunekit data validate` prints them then).
    listener: Callable[[Problem], None] | None = field(default=None, repr=False, compare=False)

    def add(self, p: Problem, reason: str) -> None:
        """Record one problem (counted always, stored up to MAX_REPORTED)."""
        bucket = self.skipped_by_reason if p.level == "error" else self.warnings_by_reason
        bucket[reason] = bucket.get(reason, 0) + 1
        if p.level == "warning":
            self.warnings += 1
        elif p.line == 0:
            self.file_errors += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(p)
            if self.listener is not None:
                self.listener(p)

    @property
    def errors(self) -> int:
        """Skipped lines plus a refused file."""
        return self.skipped + self.file_errors

    @property
    def status(self) -> str:
        """clean | warnings | errors."""
        return "errors" if self.errors else ("warnings" if self.warnings else "clean")

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (manifest, notebook table)."""
        return {"path": self.path, "kind": self.kind, "records": self.records, "kept": self.kept,
                "skipped": self.skipped, "blank": self.blank, "warnings": self.warnings,
                "file_errors": self.file_errors,
                "skipped_by_reason": dict(self.skipped_by_reason),
                "warnings_by_reason": dict(self.warnings_by_reason)}

    @classmethod
    def from_summary(cls, d: dict[str, Any], problems: list[dict] | None = None) -> "FileReport":
        """Rebuild a report from `summary()` output plus stored problems."""
        r = cls(path=d["path"], kind=d["kind"], records=d["records"], kept=d["kept"],
                skipped=d["skipped"], blank=d["blank"], warnings=d["warnings"],
                file_errors=d.get("file_errors", 0),
                skipped_by_reason=dict(d["skipped_by_reason"]),
                warnings_by_reason=dict(d["warnings_by_reason"]))
        r.problems = [Problem(**p) for p in (problems or [])]
        return r

    def raise_if_errors(self, what: str = "") -> None:
        """UserError naming the refused file or the first bad lines, if there are any."""
        if self.file_errors:
            first = next(p for p in self.problems if p.level == "error" and p.line == 0)
            raise UserError(f"{first.path}: {first.message} (or set on_error='skip' to train "
                            f"without this file{what})")
        if not self.skipped:
            return
        errs = [str(p) for p in self.problems if p.level == "error"][:5]
        more = f" (and {self.skipped - len(errs)} more)" if self.skipped > len(errs) else ""
        raise UserError(f"{self.path}: {self.skipped} bad line(s){more}: " + "; ".join(errs)
                        + f" (fix the data, or set on_error='skip' to train without them{what})")


def _err(reason: str, message: str) -> tuple[str, str, str]:
    return ("error", reason, message)


def _warn(reason: str, message: str) -> tuple[str, str, str]:
    return ("warning", reason, message)


def texts_are_plain(raws: list[bytes]) -> bool:
    """True when these raw JSON lines cannot hold a surrogate, a NUL or special-token text, so
    `check_record(..., scan_texts=False)` may skip searching their strings one by one: no `\\u`
    escape anywhere (JSON writes NUL and surrogates only as escapes), no `\\/` (`<\\/s>` reads as
    `</s>`) and no special-token text literally. One search over a whole chunk instead of several
    per message; any doubt (data written with escapes, a backslash before a `u`) returns False and
    every string is searched."""
    blob = b"\n".join(raws)
    if b"\\u" in blob or b"\\/" in blob:
        return False
    return not any(c in blob for c in _SPECIAL_LEADS) or not _SPECIAL_BYTES_RE.search(blob)


def check_record(obj: Any, kind: Kind, scan_texts: bool = True) -> list[tuple[str, str, str]]:
    """Problems of one parsed line as (level, reason, message); no errors = usable.
    `scan_texts=False`: the caller found with `texts_are_plain` that no string holds a surrogate,
    a NUL or special-token text."""
    if not isinstance(obj, dict):
        return [_err("not an object", f"a line must be a JSON object, got {type(obj).__name__}")]
    msgs = obj.get("messages")
    if msgs is None:
        return [_err("no messages", "missing key 'messages'")]
    if not isinstance(msgs, list):
        return [_err("messages not a list", f"'messages' must be a list, got {type(msgs).__name__}")]
    roles = _plain_roles(msgs)
    if roles is None:   # something is wrong with a message: find the first one and say what
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                return [_err("bad message", f"messages[{i}] must be an object, got {type(m).__name__}")]
            role = m.get("role")
            if role not in ROLES:
                return [_err("bad role", f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                                         f"got {role!r}")]
            content = m.get("content")
            if not isinstance(content, str):
                return [_err("content not a string", f"messages[{i}].content must be a string, got "
                                                     f"{type(content).__name__}")]
        roles = tuple(m["role"] for m in msgs)
    out = list(_role_order(roles, kind))
    if out and out[0][0] == "error":
        return out
    if kind == "dpo":
        for key in ("chosen_response", "rejected_response"):
            if key not in obj:
                return [_err(f"no {key}", f"missing key '{key}'")]
            if not isinstance(obj[key], str):
                return [_err(f"{key} not a string",
                             f"'{key}' must be a string, got {type(obj[key]).__name__}")]
        if obj["chosen_response"] == obj["rejected_response"]:
            out.append(_warn("chosen == rejected", "chosen_response and rejected_response are "
                                                   "identical (the pair teaches nothing)"))
    texts = [m["content"] for m in msgs]
    if kind == "dpo":
        texts += [obj["chosen_response"], obj["rejected_response"]]
    if scan_texts:
        return _scan_texts(texts, msgs, out)
    for i in range(1, len(texts)):   # (the system message may be empty)
        if _INVISIBLE_RE.fullmatch(texts[i]):
            out.append(_empty(texts[i], i, msgs))
    return out


def _where(i: int, msgs: list) -> str:
    return f"messages[{i}]" if i < len(msgs) else ("chosen_response", "rejected_response")[i - len(msgs)]


def _empty(text: str, i: int, msgs: list) -> tuple[str, str, str]:
    what = ("is empty" if not text.strip(" \t\r\n") else
            "is empty to a reader: it holds only invisible characters (NBSP, zero-width, ...)")
    if i < len(msgs):
        return _warn("empty content", f"{_where(i, msgs)} ({msgs[i]['role']}) {what}")
    return _warn("empty response", f"{_where(i, msgs)} {what}")


def _scan_texts(texts: list[str], msgs: list, out: list) -> list[tuple[str, str, str]]:
    """check_record's look into every string: surrogates (an error), special-token text, NUL and
    empty content (warnings)."""
    for i, text in enumerate(texts):
        bad = _SURROGATE_RE.search(text)
        if bad:  # a JSON escape of half a UTF-16 pair ("\ud800"): not text, no tokenizer takes it
            return [_err("unpaired surrogate", f"{_where(i, msgs)} holds \\u{ord(bad.group()):04x} at "
                                               f"character {bad.start() + 1}, half of a UTF-16 surrogate pair "
                                               "that is not text (fix the escape, or remove it)")]
    for i, text in enumerate(texts):
        hit = _SPECIAL_RE.search(text)
        if hit:
            out.append(_warn("special token text", f"{_where(i, msgs)} contains {hit.group()!r}, which the "
                                                   "tokenizer reads as a control token"))
        if "\x00" in text:
            out.append(_warn("NUL character", f"{_where(i, msgs)} contains a NUL character (\\u0000), "
                                              "almost always a conversion error"))
        if i and _INVISIBLE_RE.fullmatch(text):
            out.append(_empty(text, i, msgs))
    return out


def _plain_roles(msgs: list) -> tuple | None:
    """The messages' roles when every message is an object with a known role and string content
    (the common case, checked at C speed), else None."""
    try:
        roles = tuple([m["role"] for m in msgs])
        if _ROLE_SET.issuperset(roles) and all([type(m["content"]) is str for m in msgs]):
            return roles
    except (TypeError, KeyError):   # a message that is not an object, or lacks a key
        pass
    return None


_ROLE_SET = frozenset(ROLES)


@functools.lru_cache(maxsize=1024)
def _role_order(roles: tuple[str, ...], kind: Kind) -> tuple[tuple[str, str, str], ...]:
    """Problems of the order of roles alone (an error first, or warnings); a few role sequences
    make up a whole file, so each is judged once."""
    if not roles or roles[0] != "system":
        return (_err("no system first", "messages[0] must be the system message (role 'system'; "
                                        "its content may be empty)"),)
    for i, role in enumerate(roles[1:], start=1):
        want = "user" if i % 2 == 1 else "assistant"
        if role != want:
            return (_err("roles not alternating",
                         f"messages[{i}].role is {role!r} but {want!r} was expected (after the "
                         "system message, user and assistant must alternate, starting with user)"),)
    if kind == "sft":
        if len(roles) < 3:
            return (_err("no answered turn", "an SFT line needs at least system, user and assistant "
                                             f"messages, got {len(roles)}"),)
        if roles[-1] == "user":
            return (_warn("trailing user turn", "the last user message has no answer and is "
                                                "ignored (as in the official kit)"),)
    elif len(roles) < 2 or roles[-1] != "user":
        return (_err("prompt must end with user", "a DPO prompt must end with a user message "
                                                  "(the pair answers it)"),)
    return ()


class LongLine(bytes):
    """The first bytes of a line longer than MAX_RECORD_BYTES (never read whole); `size` = its length."""

    size: int = 0


def _long_line(head: bytes, size: int) -> LongLine:
    line = LongLine(head[:80])
    line.size = size
    return line


def iter_lines(path: str | os.PathLike, start: int = 0, end: int | None = None,
               first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes without line ending) of bytes [start, end) (whole
    lines, numbered from `first_line`); tolerates BOM, CRLF and no final newline. A line longer
    than MAX_RECORD_BYTES comes as a `LongLine` and is skipped, never held in memory whole."""
    limit = MAX_RECORD_BYTES + 2  # + room for "\r\n"
    with open(path, "rb") as f:
        f.seek(start)
        pos, n = start, first_line
        while end is None or pos < end:
            raw = f.readline(limit)
            if not raw:
                break
            pos += len(raw)
            if len(raw) == limit and not raw.endswith(b"\n"):
                size, more = len(raw), b""
                for more in iter(lambda: f.readline(1 << 20), b""):  # skip the rest in pieces
                    pos += len(more)
                    size += len(more)
                    if more.endswith(b"\n"):
                        break
                raw = _long_line(raw, size - len(more) + len(more.rstrip(b"\r\n")))
            else:
                if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                raw = raw.rstrip(b"\r\n")
                if len(raw) > MAX_RECORD_BYTES:
                    raw = _long_line(raw, len(raw))
            yield n, raw
            n += 1


def lines_in_range(path: str | os.PathLike, start: int, end: int, first_line: int) -> list[tuple[int, bytes]]:
    """The lines of bytes [start, end) of a file (whole lines), numbered from `first_line`, with
    the same tolerance as `iter_lines`."""
    return list(iter_lines(path, start, end, first_line))


def line_ranges(path: str | os.PathLike, per_range: int) -> list[tuple[int, int, int, int]]:
    """Split a file into (start byte, end byte, first line number, line count) of `per_range` lines."""
    import numpy as np

    ranges, start, first, done, size = [], 0, 1, 0, 0   # done: complete lines before this block
    with open(path, "rb") as f:
        # Newlines found by numpy in 16 MiB blocks (~50x faster than reading line by line).
        for block in iter(lambda: f.read(1 << 24), b""):
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + (size + 1)   # byte after each "\n"
            for j in range(first + per_range - 2 - done, len(ends), per_range):
                ranges.append((start, int(ends[j]), first, per_range))
                start, first = int(ends[j]), first + per_range
            done += len(ends)
            size += len(block)
            last = block[-1:]
    lines = done + (size > 0 and last != b"\n")   # a last line without its newline counts too
    if size > start:
        ranges.append((start, size, first, lines - first + 1))
    return ranges


class _DuplicateKey(Exception):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def parse_line(raw: bytes) -> tuple[Any, tuple[str, str, str] | None]:
    """Decode and parse one line; returns (object, None) or (None, error)."""
    if isinstance(raw, LongLine):
        return None, _err("line too long", f"the line is {_megabytes(raw.size)}, more than the "
                                           f"{_megabytes(MAX_RECORD_BYTES)} a record may have (no record "
                                           "that long fits a training sequence; split or shorten it)")
    try:
        # The fast path: jiter (Rust) parses the bytes and refuses duplicate keys in one pass, 4x
        # cheaper than json + the duplicate hook. It accepts exactly the lines `parse_exact`
        # accepts, with equal objects, except a lone surrogate escape ("\\udc00"), which it
        # refuses and json reads (check_record then names it): tests/test_data_json_reader.py
        # compares the two. Whatever it refuses is read again by `parse_exact`, which finds the
        # same failure and words it (column, key, hint).
        return jiter.from_json(raw, catch_duplicate_keys=True), None
    except ValueError:
        return parse_exact(raw)


def parse_exact(raw: bytes) -> tuple[Any, tuple[str, str, str] | None]:
    """`parse_line` with Python's json reader alone: the reference, and the wording of failures."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _err("invalid UTF-8", f"invalid UTF-8 at byte {exc.start + 1} of the line")
    try:
        return json.loads(text, object_pairs_hook=_object), None   # finds duplicate keys
    except json.JSONDecodeError as exc:
        # Some of json's messages end in "at" ("Invalid control character at"): one "at" only.
        msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
        hint = (" (a tab or line break inside a string must be written \\t or \\n)"
                if "control character" in msg else "")
        return None, _err("invalid JSON", f"invalid JSON: {msg} at column {exc.colno}{hint}")
    except _DuplicateKey as exc:
        return None, _err("duplicate key", f"key {exc.args[0]!r} appears twice in one object (JSON "
                                           "readers keep only the last one; remove the other)")
    except RecursionError:
        return None, _err("nested too deeply", "invalid JSON: nested too deeply to read (no record "
                                               "of the official format nests like this)")
    except ValueError:  # json refuses integers of more than sys.get_int_max_str_digits() digits
        return None, _err("number too long", f"invalid JSON: a number has more than "
                                             f"{sys.get_int_max_str_digits()} digits (no record needs "
                                             "one; remove it)")


def read_records(path: str | os.PathLike, kind: Kind,
                 report: FileReport | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for every usable line; problems go into `report`."""
    report = report if report is not None else FileReport(str(path), kind)
    for n, raw in iter_lines(path):
        if not raw.strip():
            report.blank += 1
            continue
        report.records += 1
        obj, error = parse_line(raw)
        problems = [error] if error else check_record(obj, kind)
        bad = False
        for level, reason, message in problems:
            report.add(Problem(str(path), n, level, message), reason)
            bad = bad or level == "error"
        if bad:
            report.skipped += 1
            continue
        report.kept += 1
        yield n, obj


def finish_file(report: FileReport) -> None:
    """The file-level warning of a readable file without records (empty, or blank lines only)."""
    if report.records or report.file_errors:
        return
    what = (f"has no records, only {report.blank} blank line(s)" if report.blank
            else "is empty (0 records)")
    report.add(Problem(report.path, 0, "warning", f"{what}; nothing is trained from it"), "empty file")


def record_hash(obj: dict, kind: Kind) -> int:
    """A 64-bit hash of the record's training content (roles, contents, responses; not extra keys)."""
    parts = [m["role"] + "\x1e" + m["content"] for m in obj["messages"]]
    if kind == "dpo":
        parts += [obj["chosen_response"], obj["rejected_response"]]
    blob = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def id_hash(obj: dict) -> int:
    """A 64-bit hash of the record's own identifier (an `ID` or `id` key, not part of the official
    format; 0 = none), for finding IDs used twice."""
    for key in ("ID", "id"):
        if obj.get(key) is not None:
            blob = json.dumps(obj[key], ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")
            return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") or 1
    return 0


def kind_of(path: str | os.PathLike) -> Kind:
    """sft for files under tuning/, dpo under preference/ (the official layout)."""
    parts = Path(os.path.abspath(path)).parts  # not resolve(): a symlink loop must not raise here
    if "preference" in parts:
        return "dpo"
    if "tuning" in parts:
        return "sft"
    raise UserError(f"{path}: cannot tell SFT from DPO data by its folder (pass --kind sft|dpo)")


def find_files(version_dir: Path, kind: Kind) -> dict[str, Path]:
    """{dataset name: path} of `<version>/{tuning|preference}/train/*.jsonl` (any file type: what
    cannot be read is refused, with its reason, when it is read)."""
    sub = version_dir / ("tuning" if kind == "sft" else "preference") / "train"
    return {p.stem: p for p in sorted(sub.glob("*.jsonl"))} if sub.is_dir() else {}
