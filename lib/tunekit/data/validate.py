"""Validation of whole data folders: every file, every line, and duplicates across both.

What `tunekit data validate` and the inspection notebook run. Each entry of a train folder gets a
`FileReport`: a file that cannot be read at all (tunekit.data.files) is one error, a data-like
name that is not read (x.json) one warning, and a readable file its per-line problems
(tunekit.data.schema) plus duplicates: an exact duplicate record or a reused `ID`, within a file
or across the files validated together, is a warning on the later occurrence. Problems are
handed to `on_problem` as they are found, so a long run shows them at once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from .files import Entry, refusal
from .schema import FileReport, Kind, Problem, finish_file, id_hash, read_records, record_hash


class DuplicateIndex:
    """First occurrences of record contents and IDs; says where a later one was seen first."""

    def __init__(self):
        self._records: dict[int, tuple[str, int]] = {}
        self._ids: dict[int, tuple[str, int]] = {}

    def check(self, path: str, line: int, content_hash: int, id_hash: int) -> list[tuple[str, str, str]]:
        """(reason, message, file of the first occurrence) warnings for the record at path:line;
        none for a first occurrence. `id_hash` 0 = the record has no ID."""
        out = []
        first = self._records.setdefault(content_hash, (path, line))
        if first != (path, line):
            out.append(("duplicate record", f"exact duplicate of {_where(first, path)} (it is "
                                            "trained twice; remove one copy, or upsample on purpose)",
                        first[0]))
        if id_hash:
            first = self._ids.setdefault(id_hash, (path, line))
            if first != (path, line):
                out.append(("duplicate ID", f"the same ID as {_where(first, path)} (an ID should "
                                            "name one record)", first[0]))
        return out


def _where(first: tuple[str, int], path: str) -> str:
    return f"line {first[1]}" if first[0] == path else f"{first[0]}:{first[1]}"


def validate_files(entries: Iterable[Entry | tuple[Path, Kind]],
                   on_problem: Callable[[Problem], None] | None = None,
                   duplicates: DuplicateIndex | None = None) -> list[FileReport]:
    """Validate files in order (no tokenizer needed); duplicates are found across all of them."""
    index = duplicates if duplicates is not None else DuplicateIndex()
    reports = []
    for entry in entries:
        if not isinstance(entry, Entry):
            entry = Entry(Path(entry[0]), entry[1])
        reports.append(validate_entry(entry, index, on_problem))
    return reports


def validate_entry(entry: Entry, index: DuplicateIndex,
                   on_problem: Callable[[Problem], None] | None = None) -> FileReport:
    """The report of one folder entry (see the module docstring)."""
    path = str(entry.path)
    report = FileReport(path, entry.kind, listener=on_problem)  # type: ignore[arg-type]
    if entry.ignored:
        report.add(Problem(path, 0, "warning", entry.ignored), "not read")
        return report
    why = refusal(entry.path)
    if why:
        report.add(Problem(path, 0, "error", why), "file not readable")
        return report
    try:
        for n, obj in read_records(entry.path, entry.kind, report):  # type: ignore[arg-type]
            for reason, message, _ in index.check(path, n, record_hash(obj, entry.kind), id_hash(obj)):  # type: ignore[arg-type]
                report.add(Problem(path, n, "warning", message), reason)
    except OSError as exc:  # e.g. an I/O error or the file vanishing halfway through
        report.add(Problem(path, 0, "error", f"reading stopped: {exc.strerror or exc} (check the "
                                             "file and the disk, then validate again)"), "read failed")
    finish_file(report)
    return report


def validate_file(path: str | os.PathLike, kind: Kind) -> FileReport:
    """Check one file (no tokenizer needed): file-level, per-line and duplicate problems."""
    return validate_files([(Path(path), kind)])[0]
