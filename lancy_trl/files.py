"""Writes a crash cannot tear and locks two processes cannot both hold.

    write_json(run_dir / "metrics.json", metrics, fault="finish.metrics")   # readers see the old file or the new one
    with exclusive(cache_dir() / "models" / ".lock"):                        # one process converts, the next reuses
        ...
    lock = hold(run_dir / "run.lock")                                        # held until released or the process dies
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lancy_trl import faults

NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}  # a write the user's disk refused
WHY = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
       errno.EACCES: "permission denied", errno.EROFS: "read-only file system", errno.EPERM: "not permitted"}


def write_text(path: Path, text: str, fault: str | None = None) -> None:
    """Replace `path` whole: the text goes to a file of this process beside it, then renames over it (atomic on one
    file system), so a kill at any moment leaves the old file or the new one, never half of either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        if fault:
            faults.point(fault, path)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, fault: str | None = None) -> None:
    write_text(path, json.dumps(data, indent=2, default=str), fault)


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    import shutil

    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def refused(e: OSError, folder: Path, needed: int | None = None) -> str:
    """One line for a write the disk refused: what, where, the space it needs (when known) and the space there is."""
    need = f"it needs about {gb(needed)} and " if needed else ""
    return f"could not write {folder} ({WHY.get(e.errno or 0, e.strerror)}): {need}{gb(free_bytes(folder))} is free there"


class Lock:
    """An exclusive lock on a file, held by an open descriptor: the kernel drops it when the process ends, however
    it ends (a `kill -9` included), so a lock is never left stale."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def hold(path: Path, note: str = "") -> Lock | None:
    """The lock on `path` for this process (`note`, e.g. its pid, written into the file), or None when another
    process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, note.encode())
    return Lock(path, fd)


def held_elsewhere(path: Path) -> bool:
    """Whether another open descriptor (another process, or another lock of this one) holds the lock on `path`."""
    if not path.is_file():
        return False
    lock = hold_quietly(path)
    if lock is None:
        return True
    lock.release()
    return False


def hold_quietly(path: Path) -> Lock | None:
    """hold() without touching the file's contents."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Lock(path, fd)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Wait for the lock on `path`, hold it while inside: a second process doing the same work waits, then finds it
    done (a model conversion, a download into the cache)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
