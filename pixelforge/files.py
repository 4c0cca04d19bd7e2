"""Atomic file writes: a reader sees the old file or the whole new one, never half of it, even after
a power cut; and the removal of the temporary files a killed writer leaves behind."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates files readable by their owner only; a finished file gets the mode open() would
# give it. The umask is read once, at import: reading it means setting it, which is not thread-safe.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = "", *, mode: int | None = None) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to; on success it replaces `path` (with the
    usual file mode, or `mode`: 0o600 for a private key, which is then never readable by others, not
    even while it is written), on an exception it is removed and `path` is left as it was.

    The new contents reach the disk before the rename, and the rename before this returns: without
    the first fsync a power cut can leave `path` renamed but empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE if mode is None else mode)
        _fsync_path(tmp, directory=False)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_path(path: str | os.PathLike, *, directory: bool) -> None:
    if directory and os.name == "nt":  # Windows cannot open a folder to fsync it (nor needs to)
        return
    fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError as e:
        # a few file systems cannot sync a folder; the file itself is already on disk
        if not (directory and e.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (`.tmp-*`) an atomic write killed mid-way left in `folder`; returns them.

    Only call it while no one else can be writing there (the trainer does, holding the run's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.glob(TEMP_PREFIX + "*")):
        if not p.is_dir():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
