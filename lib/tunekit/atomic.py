"""Atomic writes: a killed process never leaves a half-written file or directory that looks complete.

Files are written to a temp name in the same folder and renamed (rename is atomic on POSIX within
one filesystem). Directories are built under `<name>.tmp-<host>-<pid>-<random>` and renamed into
place last; readers trust only the final name. A write that fails because the file system is full
raises `DiskFull` ("disk full at <path> ...") and leaves the previous version of the file in place.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFull

_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError a write gets on a full file system or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(path: str | os.PathLike, need: int | None = None) -> DiskFull:
    """The one-sentence error for a full file system at `path` (optionally: how much was needed)."""
    try:
        free = human_bytes(free_bytes(path))
    except OSError:
        free = "unknown"
    wanted = f", about {human_bytes(need)} needed" if need is not None else ""
    return DiskFull(f"disk full at {path} ({free} free{wanted}; free space there, or move the folder to "
                    "another file system: runs_dir / TUNEKIT_RUNS_DIR for runs, TUNEKIT_CACHE_DIR for caches)")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename); the old file survives any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise
    try:
        # mkstemp makes 0600 files; teammates sharing an ABCI group folder must be able to read
        # results, so apply the normal umask-derived mode instead.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as pretty, key-sorted JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one newline-terminated line; a failed or torn append leaves the file as it was.

    A line torn by an earlier kill (no final newline) is cut off first, so it can never glue
    itself to the next record. On a full disk the partial write is truncated away and DiskFull
    is raised.
    """
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            end = _last_newline_end(fd, end)
            os.ftruncate(fd, end)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            if is_disk_full(exc):
                raise disk_full(path, len(data)) from None
            raise
    finally:
        os.close(fd)


def _last_newline_end(fd: int, end: int) -> int:
    """Offset just after the last newline before `end` (0 if none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


# ------------------------------------------------------------------ directories
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
# <name>.tmp-<host>-<pid>-<random>; older kit versions wrote <name>.tmp-<pid>.
_TMP_OWNER = re.compile(r"\.tmp-(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def temp_owner(folder: Path) -> tuple[str | None, int | None]:
    """(host, pid) encoded in an `atomic_dir` temp folder's name; host None for the old format."""
    m = _TMP_OWNER.search(folder.name)
    if not m:
        return None, None
    return m.group("host"), int(m.group("pid"))


def _clean_stale(path: Path) -> None:
    """Remove temp folders of `path` whose owner is dead; leave live or foreign ones (and say so)."""
    for stale in path.parent.glob(f"{path.name}.tmp-*"):
        host, pid = temp_owner(stale)
        if pid is None:
            continue
        if host is not None and host != _HOST:
            print(f"note: leaving {stale}: it was made on host {host}, where this process cannot tell "
                  "whether its owner still runs (delete it by hand if that job is over)", file=sys.stderr)
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue  # another live writer (or this process, in another thread)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory that becomes `path` only if the block finishes without error.

    On error (or a kill) the temp directory is left as `<name>.tmp-<host>-<pid>-<random>`, a name
    no reader trusts; the next attempt removes it once its owner process is dead (a live owner's
    folder is never touched; one from another host is left in place with a note). With
    overwrite=True an existing `path` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path)
    tmp = path.parent / f"{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{path} already exists")
        old = path.parent / f"{path.name}.old-{os.getpid()}-{secrets.token_hex(3)}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
