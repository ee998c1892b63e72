"""Every request the policy server refuses is counted and logged, without letting a client flood the log.

* :class:`Refusal` names why (the ``reason`` label of ``internal_requests_refused_total``
  and of the ``request-refused`` log line); both the connection guard
  (:mod:`.guard`: heads too large, too slow, malformed) and the API (:mod:`.api`: invalid
  parameters, invalid cell reports, bodies too slow, blocking queries past their bounds) report through one
  :class:`Refusals` per worker.
* The counter counts every refusal. The log line is written for the first refusal of a
  reason and then at most once per ``interval`` seconds per reason, carrying how many
  were not logged since (:class:`Throttle`): a client cannot turn refusals into log volume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Counter

from dynamic_asgs.lager import Logger

__all__ = ["Refusal", "Refusals", "Throttle"]


class Refusal(StrEnum):
    """Why a request was refused."""

    HEAD_TOO_LARGE = "head-too-large"  # 431
    TOO_MANY_HEADERS = "too-many-headers"  # 431
    HEAD_TIMEOUT = "head-timeout"  # 408
    BODY_TIMEOUT = "body-timeout"  # 408
    MALFORMED = "malformed-request"  # 400, from the HTTP parser
    INVALID_PARAMETER = "invalid-parameter"  # 400, from the API
    BLOCKING_QUERIES = "blocking-queries-limit"  # 503, the worker holds its maximum
    CLIENT_BLOCKING_QUERIES = "client-blocking-queries-limit"  # 503, this client holds its maximum
    INVALID_REPORT = "invalid-report"  # 400 or 413, a cell report the schema refuses or too large
    REPORTS_BUFFER_FULL = "reports-buffer-full"  # 503, the worker buffers its maximum of cells


class Throttle:
    """Lets one event per key through per ``interval`` seconds; counts the ones it held back."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """``None`` to hold this event back, else how many of ``key`` were held back since the last one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class Refusals:
    """Counts (``counter``, labelled by reason) and logs (throttled) the refusals of one worker."""

    def __init__(self, logger: Logger, counter: Counter, *, throttle: Throttle | None = None) -> None:
        self.log = logger
        self.counter = counter
        self.throttle = throttle or Throttle()

    def refuse(self, reason: Refusal, *, client: str, detail: str) -> None:
        self.counter.labels(reason=reason.value).inc()
        held = self.throttle.admit(reason.value)
        if held is not None:
            self.log.info("request-refused", {"reason": reason.value, "client": client, "detail": detail[:200],
                                              "not_logged_since_last": held})
