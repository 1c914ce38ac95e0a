"""Making a conversion's output durable without waiting for the disk in the middle of the work.

The output is published by renaming its temp folder, so its files must be on disk (fsync) before
the rename, or a crash could leave a complete-looking folder with missing data. Syncing each file
as it is closed makes the conversion wait for the disk while the CPU idles; instead the files are
synced in a background thread while verification (checksum re-read, logits check) runs, and the
conversion waits for it just before publishing (`BackgroundSync.wait`).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


class BackgroundSync:
    """fsync `paths` (files, or every file under a folder) in a thread; `wait()` re-raises its error."""

    def __init__(self, paths: Iterable[Path]):
        files: list[Path] = []
        for p in paths:
            files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        self.files = files
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tunekit-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for f in self.files:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)   # releases the GIL: verification goes on meanwhile
                finally:
                    os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self.error = exc

    def wait(self) -> int:
        """Block until every file is on disk; returns the number of files synced."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return len(self.files)


@contextmanager
def synced_meanwhile(paths: Iterable[Path], checks: dict[str, Any]) -> Iterator[None]:
    """fsync `paths` in the background while the body runs (the verification): every file is on
    disk when it ends, also when the body fails; records `files_synced` and `sync_wait_seconds`
    (how long the end still waited for the disk) in `checks`."""
    disk = BackgroundSync(paths)
    try:
        yield
    finally:
        t_sync = time.time()
        synced = disk.wait()
    checks.update(files_synced=synced, sync_wait_seconds=round(time.time() - t_sync, 3))
