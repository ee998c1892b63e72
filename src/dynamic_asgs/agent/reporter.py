"""The cell's status report to the policy server: the agent's half of the fleet audit (issue 14).

Goals and the mechanism serving each:

* **The policy server knows every cell.** :func:`cell_report` condenses the agent's
  status snapshot into a :class:`~dynamic_asgs.fleet.report.CellReport` (counts per
  state, one entry per app, never one per container), sent over the same mutual TLS
  as the agent's queries.
* **Prompt, yet bounded.** The converger wakes the reporter whenever it publishes a
  status; a report goes out when it differs from the last one sent (at most one per
  ``min_gap``) and at least every ``interval`` (so the server can tell a silent cell).
* **Never in the way.** The reporter has its own thread and its own HTTP session; a
  policy server that is down costs one logged error per distinct failure and retries
  backing off (with jitter) up to the interval, never a cycle.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from dynamic_asgs.agent.status import AgentStatus
from dynamic_asgs.agent.worker import Worker
from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.fleet.report import AppEnforcement, CellReport, ContainerCounts
from dynamic_asgs.lager import Logger

__all__ = ["FleetReporter", "ReportSink", "cell_report"]


class ReportSink(Protocol):
    """Where reports go (real: :meth:`~.policy_client.PolicyClient.report`)."""

    def report(self, report: CellReport) -> None: ...


class ReportMetrics(Protocol):
    def observe_report(self, *, sent: bool) -> None: ...


def cell_report(status: AgentStatus, *, cell_id: str, cell_name: str, interval: float) -> CellReport:
    """What ``status`` says, as the policy server wants it.

    A container is *failed* when the last cycle could not write it (failed or refused),
    *current* when it enforces the dataset version the agent last fetched, *lagging*
    otherwise; *drifted* counts those the last cycle found edited in place. An app's
    ``version`` is the lowest any of its containers on the cell enforces.
    """
    version = status.dataset_version
    last = status.last_cycle
    failed = set(last.failed) | set(last.refused) if last else set()
    current = lagging = 0
    apps: dict[str, tuple[str, int, int, int, datetime | None]] = {}
    for handle, c in status.containers.items():
        if handle not in failed:
            if version is not None and c.dataset_version == version:
                current += 1
            else:
                lagging += 1
        if not c.app_guid:
            continue
        enforced = c.dataset_version if c.dataset_version is not None else -1
        space, low, count, denied, rose = apps.get(c.app_guid, (c.space_guid or "", enforced, 0, 0, None))
        if c.denials_rose_at is not None and (rose is None or c.denials_rose_at > rose):
            rose = c.denials_rose_at
        apps[c.app_guid] = (space, min(low, enforced), count + 1, denied + c.denied_packets, rose)
    return CellReport(
        cell_id=cell_id, cell_name=cell_name, interval_seconds=interval,
        dataset_version=version if version is not None else -1,
        containers=ContainerCounts(current=current, lagging=lagging, failed=len(failed),
                                   drifted=len(last.drifted) if last else 0),
        lagging_since=status.dataset_changed_at if lagging else None,
        apps=tuple(AppEnforcement(guid, space, low, count, denied, rose)
                   for guid, (space, low, count, denied, rose) in sorted(apps.items())),
    )


class FleetReporter(Worker):
    """Sends the cell's report after each change of its status and at least every ``interval``."""

    def __init__(self, *, sink: ReportSink, status: Callable[[], AgentStatus], cell_id: str, cell_name: str,
                 interval: float, logger: Logger, metrics: ReportMetrics, min_gap: float = 1.0) -> None:
        self._sink, self._status, self._metrics = sink, status, metrics
        self._cell_id, self._cell_name, self._interval, self._min_gap = cell_id, cell_name, interval, min_gap
        self._log = logger.session("fleet-report")
        self._wake = threading.Event()
        self._last: CellReport | None = None
        self._sent_at = -float("inf")
        self._error: str | None = None
        super().__init__("fleet-reporter")

    def wake(self) -> None:
        """The status changed: report it soon (never blocks)."""
        self._wake.set()

    def report_once(self, *, force: bool = False) -> bool:
        """Send the current report if it changed (or ``force``); whether one was sent."""
        report = cell_report(self._status(), cell_id=self._cell_id, cell_name=self._cell_name,
                             interval=self._interval)
        if report == self._last and not force:
            return False
        try:
            self._sink.report(report)
        except DynamicASGsError as exc:
            self._metrics.observe_report(sent=False)
            if self._error != str(exc):
                self._log.error("report-failed", exc, {"effect": "the policy server's view of this cell ages; "
                                                                  "retried at the next change or interval"})
            self._error = str(exc)
            return False
        if self._error is not None:
            self._log.info("report-recovered")
        self._error, self._last, self._sent_at = None, report, time.monotonic()
        self._metrics.observe_report(sent=True)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reporting (a wait for the next wake ends at once)."""
        self._stop.set()
        self._wake.set()
        super().stop(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.report_once(force=time.monotonic() >= self._sent_at + self._interval)
            except Exception as exc:  # the agent outlives any failure here: log and go on
                self._log.error("report-crashed", exc)
                self._error = str(exc)
            if self._error is not None:  # back off (with jitter: a fleet must not retry in step), then retry
                failures += 1
                self._stop.wait(min(self._interval, self._min_gap * 2 ** min(failures, 10)) * random.uniform(0.5, 1))
                continue
            failures = 0
            self._stop.wait(self._min_gap)  # at most one report per min_gap
            self._wake.wait(max(0.0, self._sent_at + self._interval - time.monotonic()))
            self._wake.clear()
