"""Files shared by concurrent jobs and colleagues: the mode of files written via ``tempfile``, and a file lock."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout


def current_umask() -> int:
    """The process umask. Read from ``/proc/self/status`` on Linux (setting and restoring it with ``os.umask``
    would briefly change it for every thread of the process); that dance elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_new_file(path: str | os.PathLike[str], base: int = 0o666) -> None:
    """Give ``path`` the mode ``open()`` would have given a new file (``base & ~umask``).

    ``tempfile.mkstemp`` / ``NamedTemporaryFile`` create files ``0600``; a cache shared by colleagues (group or
    world readable under the usual umask) needs the normal mode once the file is moved into place.
    """
    os.chmod(path, base & ~current_umask())


@contextmanager
def file_lock(path: str | os.PathLike[str], logger: logging.Logger, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (``filelock``), logging ``waiting`` when another process holds it
    and this one has to wait."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("%s (lock %s)", waiting, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
