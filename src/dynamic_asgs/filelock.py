"""``flock`` with a bounded wait: the one place the project takes file locks.

Used for the container metadata store's lock file and the iptables lock file
(``/var/vcap/data/garden-cni/iptables.lock``), which silk's CNI and agent also flock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynamic_asgs.errors import LockTimeout

__all__ = ["locked"]

_POLL = 0.005


@contextmanager
def locked(path: str | Path, *, timeout: float, shared: bool = False) -> Iterator[float]:
    """Hold ``flock`` on ``path`` (created 0600 if missing); yield the seconds waited.

    Raises :class:`LockTimeout` when the lock is not free within ``timeout`` seconds.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
