"""Which entries of a data folder are read, and what is wrong with a file as a whole.

Checked before any line is read, so that no file can hang the reader (a FIFO blocks `open`
forever), end it with a traceback (a directory, a symlink loop, an unreadable file) or turn into
thousands of per-line errors (gzip, UTF-16, CR-only line endings): each is one sentence naming the
file, the likely cause and the fix.
"""
from __future__ import annotations

import codecs
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 1 << 16   # how much of a file the format checks look at
# Magic numbers of the compressed formats people ship JSONL in.
_COMPRESSED = [(b"\x1f\x8b", "gzip", "gunzip FILE"), (b"BZh", "bzip2", "bunzip2 FILE"),
               (b"\xfd7zXZ\x00", "xz", "unxz FILE"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd FILE"),
               (b"PK\x03\x04", "zip", "unzip FILE")]
_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")]
_TYPES = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
# Names next to *.jsonl files that look like data the reader does not take (case matters: the
# official kit globs *.jsonl, so x.JSONL is not read either).
_DATA_LIKE = (".json", ".jsonl", ".ndjson", ".jsonl.gz", ".json.gz", ".gz", ".bz2", ".xz", ".zst")


def refusal(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a JSONL data file (one sentence with the fix), or None."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks; never opens, so a FIFO cannot block here
    except FileNotFoundError:
        if path.is_symlink():
            return (f"broken symlink to {os.readlink(path)!r}, which does not exist (fix or remove "
                    "the link)")
        return "not found (was it moved or deleted while being read?)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop: following the link never reaches a file (fix or remove the link)"
        return f"cannot be examined: {exc.strerror} (check the path and its permissions)"
    if stat.S_ISDIR(st.st_mode):
        return ("a directory, not a data file (only files named *.jsonl are read; rename the "
                "folder or move it out of the train folder)")
    for test, what in _TYPES:
        if test(st.st_mode):
            return f"{what}, not a regular file (only regular *.jsonl files are read; copy the data into one)"
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except PermissionError:
        return "cannot be read: permission denied (make it readable, e.g. `chmod a+r FILE`)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror} (check the file and the disk)"
    return format_problem(head)


def format_problem(head: bytes) -> str | None:
    """The likely cause when the first bytes of a file show it is not UTF-8 JSONL text."""
    for magic, name, command in _COMPRESSED:
        if head.startswith(magic):
            return f"{name}-compressed, not JSONL text (decompress it first: `{command}`)"
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"{name} text, not UTF-8 (save it as UTF-8, e.g. `iconv -f {name} -t UTF-8`)"
    sample = head[:4096]
    if len(sample) >= 8 and sample.count(b"\x00") * 3 >= len(sample):
        # ASCII JSON in UTF-16 without a BOM: every other byte is NUL.
        return "UTF-16 text without a byte-order mark, not UTF-8 (save it as UTF-8)"
    first_break = min((i for i in (head.find(b"\r"), head.find(b"\n")) if i >= 0), default=-1)
    if first_break >= 0 and head[first_break:first_break + 1] == b"\r" \
            and head[first_break + 1:first_break + 2] != b"\n":
        return ("lines end with a bare CR (old Mac style), so the file reads as one line (convert "
                "the line endings to LF, e.g. `tr '\\r' '\\n' < FILE > NEW`)")
    return None


@dataclass(frozen=True)
class Entry:
    """One entry of a train folder: read as data, or only reported (`ignored` says why)."""

    path: Path
    kind: str
    ignored: str = ""


def scan_folder(folder: Path, kind: str) -> list[Entry]:
    """The *.jsonl entries of a train folder (whatever their type), plus data-like names that are
    not read (x.json, x.JSONL) as ignored entries."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.endswith(".jsonl"):
            out.append(Entry(p, kind))
        elif not name.startswith(".") and name.lower().endswith(_DATA_LIKE):
            out.append(Entry(p, kind, f"not read: only files named *.jsonl are data (rename it to "
                                      f"{name.split('.')[0]}.jsonl if it is training data)"))
    return out


def scan_version(version_dir: Path) -> list[Entry]:
    """Every entry of `<version>/tuning/train` (SFT) and `<version>/preference/train` (DPO)."""
    return (scan_folder(version_dir / "tuning" / "train", "sft")
            + scan_folder(version_dir / "preference" / "train", "dpo"))
