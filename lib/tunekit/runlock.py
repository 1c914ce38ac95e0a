"""One live writer per run directory: an exclusive `flock` on `<run_dir>/.lock`.

The operating system releases the lock when its holder dies (SIGKILL, node reboot on a local
file system), so a killed run never blocks its own resume. A second process that wants to write
the same run is refused with one sentence naming the holder (host, pid, start time), which the
holder writes into the lock file after taking the lock.

The processes a holder starts share its run: papermill's kernel under `tunekit notebooks run`,
the torchrun / mpirun ranks a training notebook launches. A process therefore also counts as the
writer when the lock's holder (same host) is one of its ancestors.

On a shared file system the lock is as good as the file system's `flock`: NFS and Lustre mounted
with `flock` lock across nodes; Lustre's `localflock` only within one node.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".lock"


_HELD: dict[str, int] = {}  # lock file path -> this process's open, locked descriptor


def _key(run_dir: Path) -> str:
    return str((Path(run_dir) / LOCK_FILE).resolve())


def holder(run_dir: str | os.PathLike) -> dict | None:
    """What the lock file says about its (last) holder: host, pid, started, argv; None if unreadable."""
    try:
        data = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ancestors() -> list[int]:
    """This process's parent, grandparent, ... (Linux /proc; [] elsewhere)."""
    out, pid = [], os.getpid()
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid <= 1:
            break
        out.append(pid)
    return out


def held_by_ancestor(run_dir: str | os.PathLike) -> bool:
    """True when a process that started this one (same host) holds the run's lock."""
    info = holder(run_dir)
    return bool(info) and info.get("host") == socket.gethostname() and info.get("pid") in _ancestors() \
        and _is_locked(Path(run_dir))


def _is_locked(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def refusal(run_dir: Path, info: dict | None) -> UserError:
    """The sentence for a run that another process is writing."""
    if info:
        who = f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
    else:
        who = "a process that has not recorded itself yet"
    return UserError(f"{run_dir}: another process is writing this run ({who}); wait for it to finish "
                     "or stop it, or use another run_name")


def check_free(run_dir: str | os.PathLike) -> None:
    """Raise the refusal if another live process (not this one or an ancestor) holds the run's lock."""
    run_dir = Path(run_dir)
    if _key(run_dir) in _HELD or not (run_dir / LOCK_FILE).exists():
        return
    if _is_locked(run_dir) and not held_by_ancestor(run_dir):
        raise refusal(run_dir, _settled_holder(run_dir))


def _settled_holder(run_dir: Path) -> dict | None:
    # The holder writes its record right after locking: give a racing reader a moment.
    info = holder(run_dir)
    for _ in range(10):
        if info and info.get("pid"):
            break
        time.sleep(0.05)
        info = holder(run_dir)
    return info


def acquire(run_dir: str | os.PathLike) -> bool:
    """Take the run's lock (a no-op if this process holds it); False when an ancestor holds it for us.

    Raises UserError naming the holder when another process writes the run. The folder must exist.
    """
    run_dir = Path(run_dir)
    key = _key(run_dir)
    if key in _HELD:
        return True
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    except PermissionError:
        raise UserError(f"{path}: no permission to write this run's lock file (is the run someone "
                        "else's? use another run_name)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            if held_by_ancestor(run_dir):
                return False
            raise refusal(run_dir, _settled_holder(run_dir)) from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            print(f"note: {path}: this file system does not support locks; a second writer of this "
                  "run would not be detected", flush=True)
            return True
        raise
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "pbs_job_id": os.environ.get("PBS_JOBID")}
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # a full disk: the lock holds; a refused second writer just cannot name us
    _HELD[key] = fd
    return True


def release(run_dir: str | os.PathLike) -> None:
    """Give the lock back (no-op if this process does not hold it)."""
    fd = _HELD.pop(_key(Path(run_dir)), None)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holds(run_dir: str | os.PathLike) -> bool:
    """True while this process holds the run's lock."""
    return _key(Path(run_dir)) in _HELD
