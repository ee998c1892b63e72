"""Bounded request heads: no client can make a worker buffer, parse or wait for a head without limit.

uvicorn's httptools protocol accepts request heads of any size, any number of headers, and
waits for the end of a head for ever; an ASGI middleware cannot help, since it runs only
once a head is complete. Worse, httptools joins a header value's pieces by concatenating
bytes, so a header streamed in small pieces costs time quadratic in its length: one client
streaming an unterminated header slowed every agent's answers by tens of seconds (issue 13).
:class:`GuardedHttpToolsProtocol` (uvicorn's ``http=`` class) adds, per connection:

* **Whole lines only.** While a head is incomplete, received bytes are buffered here and
  handed to the parser up to the last complete line, so every header reaches the parser
  in one piece and parsing stays linear however the bytes are split.
* **Size.** Only ``max_head_bytes`` of a head are ever parsed: a head that has not ended
  within them is answered 431 and the connection is closed. (A head that starts inside
  the same read as the end of a pipelined request is counted from the next read: at most
  one read more.)
* **Header count.** Past ``max_headers`` fields, further fields are not kept and the
  request is answered 431 when its head ends (or meets one of the other bounds first).
* **Time.** A head must be complete within ``head_timeout`` seconds of its first byte (of
  the connection, for the first request, so a connection that sends nothing is closed
  too); otherwise 408 and close. Idle keep-alive connections are uvicorn's
  ``timeout_keep_alive``; bodies are bounded by the API (:mod:`.api`).
* **Lingering close.** After a refusal the connection stops reading into anything: what
  still arrives is discarded, and a plain-TCP connection is half-closed and closed
  ``_LINGER_SECONDS`` later (a TLS close waits for the peer's close_notify anyway), so the
  client reads the refusal instead of a reset caused by the bytes it was still sending.

Each refusal is reported through the worker's :class:`~dynamic_asgs.policy_server.refusals.Refusals`;
the limits and the reporter reach every connection through the ASGI lifespan state
(``GUARD_STATE``), which the app's lifespan fills in each worker.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from dynamic_asgs.policy_server.refusals import Refusal, Refusals
from dynamic_asgs.policy_server.settings import RequestLimits

__all__ = ["GUARD_STATE", "Guard", "GuardedHttpToolsProtocol"]

#: Key of the :class:`Guard` in the ASGI lifespan state.
GUARD_STATE = "dynamic_asgs.guard"
_LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Guard:
    """What every connection of a worker enforces, and where it reports refusals."""

    limits: RequestLimits
    refusals: Refusals


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads (size, header count, time)."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guard: Guard = app_state[GUARD_STATE]
        self._limits, self._refusals = guard.limits, guard.refusals
        self._in_head = True  # the next bytes belong to a request head
        self._heads_done = 0
        self._head_bytes = 0
        self._fields = 0
        self._pending = bytearray()  # the incomplete last line of a head
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            super().data_received(data)
            return
        self._unset_keepalive_if_required()  # a request has begun: the head timer governs now
        self._arm()
        allowance = self._limits.max_head_bytes - self._head_bytes
        ended = self._feed_head(data[:allowance])
        if self._refused or self.transport.is_closing():
            return
        if not ended:
            if len(data) > allowance:
                self._refuse(Refusal.HEAD_TOO_LARGE, 431,
                             f"request head larger than {self._limits.max_head_bytes} bytes")
            return
        rest, self._pending = bytes(self._pending) + data[allowance:], bytearray()
        if rest:  # the head ended: the rest is its body or the next request
            super().data_received(rest)

    def _feed_head(self, part: bytes) -> bool:
        """Count ``part`` as head bytes and parse its complete lines; return whether a head ended."""
        heads_done = self._heads_done
        self._head_bytes += len(part)
        last_newline = part.rfind(b"\n")
        self._pending += part
        if last_newline >= 0:
            end = len(self._pending) - len(part) + last_newline + 1
            lines = bytes(self._pending[:end])
            del self._pending[:end]
            super().data_received(lines)
        return self._heads_done != heads_done

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields = 0
        self._arm()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields <= self._limits.max_headers:  # past the bound nothing more is kept
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._heads_done += 1
        self._disarm()
        if self._fields > self._limits.max_headers:
            self._refuse(Refusal.TOO_MANY_HEADERS, 431,
                         f"{self._fields} header fields; at most {self._limits.max_headers} are allowed")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what httptools cannot parse, counted and logged as a refusal."""
        self._refused = True
        self._disarm()
        self._refusals.refuse(Refusal.MALFORMED, client=self._peer(), detail=msg)
        super().send_400_response(msg)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self._limits.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head and not self._refused:
            self._refuse(Refusal.HEAD_TIMEOUT, 408,
                         f"request head not received within {self._limits.head_timeout:g} s")

    def _refuse(self, reason: Refusal, status: int, message: str) -> None:
        self._refused = True
        self._disarm()
        self._pending.clear()
        self._refusals.refuse(reason, client=self._peer(), detail=message)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:  # never inside another response
            self.transport.close()
            return
        body = json.dumps({"error": message}).encode()
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _peer(self) -> str:
        return self.client[0] if self.client else ""
