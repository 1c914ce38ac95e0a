"""Reading and validating the official JSONL formats, line by line, with `path:line:` messages.

SFT line:  {"messages": [system, user, assistant, (user, assistant)*, (user)?]}
DPO line:  {"messages": [system, user, (assistant, user)*], "chosen_response": str,
            "rejected_response": str}

Tolerated without comment: a UTF-8 BOM, CRLF endings, blank lines, a missing final newline and
extra keys (top level and inside messages). Every other problem is an error (the line cannot be
used) or a warning (the line is used, but probably not as intended). Each problem is reported once.
Counts always add up: records = kept + skipped, and blank lines are counted on their own.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from ..errors import UserError

Kind = Literal["sft", "dpo"]
ROLES = ("system", "user", "assistant")
# Special-token texts that an HF tokenizer turns into control tokens when they appear in content.
SPECIAL_TEXTS = ("<|bos|>", "<|eos|>", "<s>", "</s>", "<pad>", "<unk>")
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL_TEXTS))
MAX_REPORTED = 200  # per file; the rest are counted, not printed


@dataclass
class Problem:
    """One problem of one line: error (line skipped) or warning (line kept)."""

    path: str
    line: int
    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.level}: {self.message}"


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
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    warnings_by_reason: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)   # the first MAX_REPORTED

    def add(self, p: Problem, reason: str) -> None:
        """Record one problem (counted always, stored up to MAX_REPORTED)."""
        bucket = self.skipped_by_reason if p.level == "error" else self.warnings_by_reason
        bucket[reason] = bucket.get(reason, 0) + 1
        if p.level == "warning":
            self.warnings += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(p)

    @property
    def status(self) -> str:
        """clean | warnings | errors."""
        return "errors" if self.skipped else ("warnings" if self.warnings else "clean")

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (manifest, notebook table)."""
        return {"path": self.path, "kind": self.kind, "records": self.records, "kept": self.kept,
                "skipped": self.skipped, "blank": self.blank, "warnings": self.warnings,
                "skipped_by_reason": dict(self.skipped_by_reason),
                "warnings_by_reason": dict(self.warnings_by_reason)}

    @classmethod
    def from_summary(cls, d: dict[str, Any], problems: list[dict] | None = None) -> "FileReport":
        """Rebuild a report from `summary()` output plus stored problems."""
        r = cls(path=d["path"], kind=d["kind"], records=d["records"], kept=d["kept"],
                skipped=d["skipped"], blank=d["blank"], warnings=d["warnings"],
                skipped_by_reason=dict(d["skipped_by_reason"]),
                warnings_by_reason=dict(d["warnings_by_reason"]))
        r.problems = [Problem(**p) for p in (problems or [])]
        return r

    def raise_if_errors(self, what: str = "") -> None:
        """UserError naming the first bad lines if any line was skipped."""
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


def check_record(obj: Any, kind: Kind) -> list[tuple[str, str, str]]:
    """Problems of one parsed line as (level, reason, message); no errors = usable."""
    if not isinstance(obj, dict):
        return [_err("not an object", f"a line must be a JSON object, got {type(obj).__name__}")]
    msgs = obj.get("messages")
    if msgs is None:
        return [_err("no messages", "missing key 'messages'")]
    if not isinstance(msgs, list):
        return [_err("messages not a list", f"'messages' must be a list, got {type(msgs).__name__}")]
    out: list[tuple[str, str, str]] = []
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
    if not msgs or msgs[0]["role"] != "system":
        return [_err("no system first", "messages[0] must be the system message (role 'system'; "
                                        "its content may be empty)")]
    for i, m in enumerate(msgs[1:], start=1):
        want = "user" if i % 2 == 1 else "assistant"
        if m["role"] != want:
            return [_err("roles not alternating",
                         f"messages[{i}].role is {m['role']!r} but {want!r} was expected (after the "
                         "system message, user and assistant must alternate, starting with user)")]
    if kind == "sft":
        if len(msgs) < 3:
            return [_err("no answered turn", "an SFT line needs at least system, user and assistant "
                                             f"messages, got {len(msgs)}")]
        if msgs[-1]["role"] == "user":
            out.append(_warn("trailing user turn", "the last user message has no answer and is "
                                                   "ignored (as in the official kit)"))
    else:
        if len(msgs) < 2 or msgs[-1]["role"] != "user":
            return [_err("prompt must end with user", "a DPO prompt must end with a user message "
                                                      "(the pair answers it)")]
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
    for i, text in enumerate(texts):
        hit = _SPECIAL_RE.search(text)
        if hit:
            where = f"messages[{i}]" if i < len(msgs) else ("chosen_response", "rejected_response")[i - len(msgs)]
            out.append(_warn("special token text", f"{where} contains {hit.group()!r}, which the "
                                                   "tokenizer reads as a control token"))
        if 0 < i < len(msgs) and not text.strip():
            out.append(_warn("empty content", f"messages[{i}] ({msgs[i]['role']}) is empty"))
    return out


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes without line ending); tolerates BOM, CRLF, no final newline."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield n, raw.rstrip(b"\r\n")


def lines_in_range(path: str | os.PathLike, start: int, end: int, first_line: int) -> list[tuple[int, bytes]]:
    """The lines of bytes [start, end) of a file (whole lines), numbered from `first_line`, with
    the same tolerance as `iter_lines`."""
    with open(path, "rb") as f:
        f.seek(start)
        parts = f.read(end - start).split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the range ended with a newline
    out = []
    for i, raw in enumerate(parts):
        if first_line + i == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        out.append((first_line + i, raw.rstrip(b"\r")))
    return out


def line_ranges(path: str | os.PathLike, per_range: int) -> list[tuple[int, int, int, int]]:
    """Split a file into (start byte, end byte, first line number, line count) of `per_range` lines."""
    ranges, start, pos, n, first = [], 0, 0, 0, 1
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(), b""):
            n += 1
            pos += len(line)
            if n - first + 1 == per_range:
                ranges.append((start, pos, first, per_range))
                start, first = pos, n + 1
    if pos > start:
        ranges.append((start, pos, first, n - first + 1))
    return ranges


def parse_line(raw: bytes) -> tuple[Any, tuple[str, str, str] | None]:
    """Decode and parse one line; returns (object, None) or (None, error)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _err("invalid UTF-8", f"invalid UTF-8 at byte {exc.start + 1} of the line")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, _err("invalid JSON", f"invalid JSON: {exc.msg} at column {exc.colno}")


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


def validate_file(path: str | os.PathLike, kind: Kind) -> FileReport:
    """Read a whole file and return its report (no tokenizer needed)."""
    report = FileReport(str(path), kind)
    for _ in read_records(path, kind, report):
        pass
    return report


def kind_of(path: str | os.PathLike) -> Kind:
    """sft for files under tuning/, dpo under preference/ (the official layout)."""
    parts = Path(path).resolve().parts
    if "preference" in parts:
        return "dpo"
    if "tuning" in parts:
        return "sft"
    raise UserError(f"{path}: cannot tell SFT from DPO data by its folder (pass --kind sft|dpo)")


def find_files(version_dir: Path, kind: Kind) -> dict[str, Path]:
    """{dataset name: path} of `<version>/{tuning|preference}/train/*.jsonl`."""
    sub = version_dir / ("tuning" if kind == "sft" else "preference") / "train"
    return {p.stem: p for p in sorted(sub.glob("*.jsonl"))} if sub.is_dir() else {}
