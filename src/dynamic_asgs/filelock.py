"""``flock`` with a bounded wait, and opening by path without following links.

:func:`locked` is the one place the project takes file locks: the container metadata
store's lock file and the iptables lock file (``/var/vcap/data/garden-cni/iptables.lock``),
which silk's CNI and agent also flock. :func:`open_nofollow` is how root processes
open the files beside them (lock, version and data files): a symbolic link planted at
such a path is refused (:class:`~dynamic_asgs.errors.UnsafeFile`) instead of followed,
so its target is never created, truncated or overwritten (issue 13), and anything but
a regular file (a FIFO would block its reader) is refused too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynamic_asgs.errors import LockTimeout, UnsafeFile

__all__ = ["locked", "open_nofollow"]

_POLL = 0.005


def open_nofollow(path: str | Path, flags: int, *, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` and anything but a regular file.

    ``O_NOFOLLOW`` and ``O_CLOEXEC`` are always added (``O_NONBLOCK`` too, so that opening a
    FIFO cannot block); files it creates get ``mode`` (0600 unless told).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path}: is a symbolic link: refused (its target is left untouched)") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path}: is not a regular file: refused")
    return fd


@contextmanager
def locked(path: str | Path, *, timeout: float, shared: bool = False) -> Iterator[float]:
    """Hold ``flock`` on ``path`` (created 0600 if missing); yield the seconds waited.

    Raises :class:`LockTimeout` when the lock is not free within ``timeout`` seconds and
    :class:`~dynamic_asgs.errors.UnsafeFile` when ``path`` is a symbolic link.
    """
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        start = time.monotonic()
        delay = _POLL
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise LockTimeout(f"{path}: lock held by another process for {waited:.1f}s") from None
                time.sleep(min(delay, max(timeout - waited, 0.001)))
                delay = min(delay * 2, 0.1)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
