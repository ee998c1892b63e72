"""Learn of an ASG change within about a second: a blocking query held at the policy server.

Between cycles the agent keeps one request open with ``If-None-Match: <etag>`` and
``wait=<seconds>``; the policy server answers the moment its dataset version changes
(or 304 when the wait ends). A changed answer starts a cycle at once, and so does a 304
carrying a newer dataset version (to record that this cell is current); the poll
interval stays the upper bound and the fallback. A server that does not do ETags
(silk's) stops the watcher; one that ignores ``wait`` (answers 304 at once) is
asked at most once per ``wait`` seconds; errors back off exponentially.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dynamic_asgs.agent.converger import Converger, PolicySource
from dynamic_asgs.agent.worker import Worker
from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.lager import Logger

__all__ = ["PolicyWatcher"]


class PolicyWatcher(Worker):
    """A background thread holding blocking queries; calls ``on_change`` when the answer changes."""

    def __init__(
        self, *, policy: PolicySource, converger: Converger, wait: float, on_change: Callable[[], None],
        logger: Logger, max_backoff: float = 30.0,
    ) -> None:
        self._policy, self._converger, self._wait = policy, converger, wait
        self._on_change, self._max_backoff = on_change, max_backoff
        self._log = logger.session("policy-watcher")
        super().__init__("policy-watcher")
        self.changes = 0

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            spaces, etag = self._converger.query()
            if etag is None:
                if self._converger.dataset_version is not None:  # fetched, but the answer had no ETag
                    self._log.info("blocking-queries-unsupported", {"reason": "the policy server sends no ETag"})
                    return
                self._stop.wait(0.5)  # no cycle has fetched groups yet
                continue
            started = time.monotonic()
            try:
                result = self._policy.fetch(spaces, etag=etag, wait=self._wait)
            except UpstreamError as exc:
                self._log.debug("blocking-query-failed", {"error": str(exc), "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 1.0
            if result.etag is None:
                self._log.info("blocking-queries-unsupported", {"reason": "the policy server sends no ETag"})
                return
            if result.not_modified:
                known = self._converger.dataset_version
                if result.dataset_version is not None and (known is None or result.dataset_version > known):
                    # The dataset changed elsewhere; this cell's answer did not. A cycle (one 304
                    # poll, no iptables write) records that the cell enforces the new version, so
                    # audits see it within one wait rather than one poll interval.
                    self._on_change()
                elapsed = time.monotonic() - started
                if elapsed < self._wait / 2:  # the server does not hold requests: do not spin
                    self._stop.wait(self._wait - elapsed)
                continue
            if (spaces, etag) == self._converger.query():
                self.changes += 1
                self._log.debug("policy-changed", {"dataset_version": result.dataset_version})
                self._on_change()
            else:
                self._stop.wait(0.05)  # a cycle moved on meanwhile; ask again with its ETag
