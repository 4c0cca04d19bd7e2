"""An exclusive lock on a run folder, so two trainings of the same run cannot interleave their writes.

The lock is an flock on `RUN/.lock`, which the OS releases when its process ends, however it ends; the
file also names its owner (pid, host, start time) for the message a second process gets. A file that
still names an owner whose lock the OS has released was left by a process that died: it is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _owner_text(raw: bytes) -> str:
    """'pid 123 on host h (since 2026-01-01 10:00:00 UTC)' from a lock file's contents."""
    try:
        owner = json.loads(raw.decode())
        return f"pid {owner['pid']} on host {owner['host']} (since {owner['started']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (its lock file names no owner)"


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[str | None]:
    """Hold the lock of an existing run folder for the `with` block; yields the previous owner's
    description when a stale lock (of a process that died) was taken over, else None.

    Raises RunLockedError, naming the owner, when another process holds it."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:
        yield None
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner_text(_read_all(fd))
            os.close(fd)
            raise RunLockedError(
                f"{Path(run_dir)} is in use by another training, {owner}: wait for it to end, or train under another name"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The owner before us removes the file as it lets go: if it did so between our open and our
        # flock, we hold a lock on a file no one else will see; start again with the one there now.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        previous = _read_all(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        yield _owner_text(previous) if previous.strip() else None
    finally:
        # Remove the file while still holding the lock, so no one can lock it after we let go (unless
        # the folder was removed meanwhile and the file there now is another process's).
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        os.close(fd)
