"""Deadlines that reach the socket: no peer holds a request past its deadline, byte by byte.

A read timeout bounds each wait for bytes, not a whole answer: a peer that sends one byte
just inside every timeout holds a request for as long as it likes, in the TLS handshake,
the status line, the headers or the body (issue 13). :func:`scope` gives the calling
thread a :class:`Deadline` (an instant on the monotonic clock); the TLS sockets of a context passed
to :func:`enforce` cap every handshake and every read at the time left and fail with
``TimeoutError`` once none is left, which ``requests`` reports as a timeout. Outside a
scope they behave as plain ``ssl.SSLSocket`` s, so one context serves bounded and
unbounded calls alike.

Why a socket class: ``requests`` and urllib3 read the status line and headers before
they return a response, so nothing above the socket can stop a drip there; CPython's
TLS read and handshake each honour the socket's timeout as a whole, so capping that
timeout before every call bounds the total. ``SSLContext.sslsocket_class`` is the
documented way to choose the class of a context's sockets.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["Deadline", "DeadlineSocket", "enforce", "remaining", "scope"]

_T = TypeVar("_T")
_local = threading.local()


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant on the monotonic clock, and the ``seconds`` it was set from (for messages)."""

    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds until the deadline (zero or negative once it passed)."""
        return self.at - time.monotonic()


@contextmanager
def scope(deadline: Deadline | None) -> Iterator[None]:
    """Within the block, this thread's deadline sockets give up at ``deadline``; an inner scope never extends."""
    outer: float | None = getattr(_local, "at", None)
    at = None if deadline is None else deadline.at
    _local.at = at if outer is None else outer if at is None else min(at, outer)
    try:
        yield
    finally:
        _local.at = outer


def remaining() -> float | None:
    """Seconds left in this thread's scope (negative once passed), or ``None`` outside any scope."""
    at: float | None = getattr(_local, "at", None)
    return None if at is None else at - time.monotonic()


class DeadlineSocket(ssl.SSLSocket):
    """An ``SSLSocket`` whose handshake and reads end by the deadline of the thread's :func:`scope`."""

    def _bounded(self, call: Callable[[], _T]) -> _T:
        left = remaining()
        base = self.gettimeout()
        if left is None or base == 0.0:  # no deadline, or a non-blocking socket: nothing to cap
            return call()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.settimeout(left if base is None else min(base, left))
        try:
            return call()
        finally:
            self.settimeout(base)

    def read(self, len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:
        return self._bounded(lambda: ssl.SSLSocket.read(self, len, buffer))

    def do_handshake(self, block: bool = False) -> None:
        self._bounded(lambda: ssl.SSLSocket.do_handshake(self, block))


def enforce(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``context``'s client sockets honour :func:`scope`; returns ``context``."""
    context.sslsocket_class = DeadlineSocket
    return context
