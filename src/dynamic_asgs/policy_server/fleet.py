"""The fleet audit on the policy server (issue 14): buffered cell reports, the fleet view, fleet metrics.

* **Reports in, batched.** Each worker keeps the reports it accepted in a
  :class:`ReportBuffer` (the newest per cell) and a background task writes them every
  ``report_flush_interval_ms`` in one transaction (:meth:`~dynamic_asgs.policydb.reports.ReportStore.write`),
  so DB transactions per second do not grow with the number of cells. A failed write keeps
  the reports (newer ones of a cell replace them) for the next flush; a buffer holding
  :data:`MAX_BUFFERED_CELLS` cells refuses more until it is written. With an interval of 0
  the worker writes each report before it answers (one transaction per report).
* **The view from the DB.** :func:`build_view` computes a
  :class:`~dynamic_asgs.fleet.view.FleetView` from one consistent read of the reports, with
  the DB's clock, so every worker of every policy server answers alike.
* **Metrics and convergence.** :class:`FleetEvaluator` runs in the server's main process
  (the one that serves the merged metrics): every few seconds it reads the reports (without
  their apps), publishes ``fleet_cells``, ``fleet_containers`` and ``fleet_oldest_lag_seconds``
  through :class:`FleetCollector`, and when every non-silent cell enforces the current
  version with nothing lagging it claims that version's convergence in the DB; only the
  policy server that wins the claim observes ``fleet_convergence_seconds``, so each version
  is observed once across all instances. A version superseded before the fleet enforced it
  is never observed. Once a minute it forgets cells silent for ``forget_silent_cells_after_hours``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import assert_never

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.fleet.report import CellReport, ContainerCounts, parse_time
from dynamic_asgs.fleet.view import (
    CellState,
    CellStatus,
    ContainerTotals,
    DenialRise,
    Enforcement,
    FleetTotals,
    FleetView,
)
from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.reports import FleetRows, ReportRow, ReportStore

__all__ = [
    "CONVERGENCE_BUCKETS",
    "MAX_BUFFERED_CELLS",
    "FleetCollector",
    "FleetEvaluator",
    "ReportBuffer",
    "apps_wanted",
    "build_view",
    "classify",
    "converged",
    "read_for_view",
]

#: Most cells one worker buffers between two writes (past it, reports are refused with 503).
MAX_BUFFERED_CELLS = 100_000
#: Buckets of ``fleet_convergence_seconds``.
CONVERGENCE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def classify(row: ReportRow, rows: FleetRows, silent_after_intervals: int) -> tuple[CellState, float | None]:
    """A cell's state and, when catching up, since when (epoch seconds)."""
    if rows.now - row.received_at > silent_after_intervals * row.interval_seconds:
        return CellState.SILENT, None
    if row.failed > 0:
        return CellState.FAILED, None
    if row.dataset_version < rows.version:
        lacking = rows.versions.get(row.dataset_version + 1)
        if lacking is not None:
            return CellState.CATCHING_UP, lacking.changed_at
        return CellState.CATCHING_UP, row.lagging_since if row.lagging_since is not None else rows.changed_at
    if row.lagging > 0:
        return CellState.CATCHING_UP, row.lagging_since if row.lagging_since is not None else row.received_at
    return CellState.CURRENT, None


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class _Tally:
    cells: dict[CellState, int] = field(default_factory=lambda: dict.fromkeys(CellState, 0))
    current: int = 0
    lagging: int = 0
    failed: int = 0
    drifted: int = 0
    silent: int = 0
    oldest_lag: float = 0.0

    def add(self, row: ReportRow, state: CellState, since: float | None, now: float) -> None:
        self.cells[state] += 1
        match state:
            case CellState.SILENT:
                self.silent += row.current + row.lagging + row.failed
                return
            case CellState.CATCHING_UP:
                if since is not None:
                    self.oldest_lag = max(self.oldest_lag, now - since)
            case CellState.CURRENT | CellState.FAILED:
                pass
            case _:
                assert_never(state)
        self.current += row.current
        self.lagging += row.lagging
        self.failed += row.failed
        self.drifted += row.drifted

    def totals(self) -> FleetTotals:
        return FleetTotals(cells=dict(self.cells),
                           containers=ContainerTotals(self.current, self.lagging, self.failed, self.drifted,
                                                      self.silent),
                           oldest_lag_seconds=round(self.oldest_lag, 3))


def build_view(rows: FleetRows, *, silent_after_intervals: int, app: str | None = None,
               space: str | None = None) -> FleetView:
    """The fleet view of ``rows``; with ``app``/``space``, which cells' instances enforce which version.

    ``denials_rose`` lists the apps (narrowed by ``app``/``space``) on non-silent cells whose
    report carries ``denials_rose_at``; it needs the rows' apps, read for the rows that have a
    rise or match the filter (:func:`read_for_view`).
    """
    tally = _Tally()
    cells: list[CellStatus] = []
    enforcement: list[Enforcement] = []
    rises: list[DenialRise] = []
    filtered = app is not None or space is not None
    for row in rows.reports:
        state, since = classify(row, rows, silent_after_intervals)
        tally.add(row, state, since, rows.now)
        cells.append(CellStatus(row.cell_id, row.cell_name, state, None if since is None else _at(since),
                                row.dataset_version,
                                ContainerCounts(row.current, row.lagging, row.failed, row.drifted),
                                _at(row.received_at), row.interval_seconds))
        if row.apps is None:
            continue
        for entry in json.loads(row.apps):
            if (app is not None and entry["guid"] != app) or (space is not None and entry["space"] != space):
                continue
            if filtered:
                enforcement.append(Enforcement(row.cell_id, row.cell_name, state, entry["guid"], entry["space"],
                                               entry["version"], entry["containers"]))
            rose = parse_time(entry.get("denials_rose_at"))
            if rose is not None and state is not CellState.SILENT:
                rises.append(DenialRise(entry["guid"], entry["space"], row.cell_id, row.cell_name, entry["version"],
                                        entry.get("denied_packets", 0), rose))
    lacking = rows.versions.get(rows.version)
    return FleetView(
        generated_at=_at(rows.now), dataset_version=rows.version,
        current_since=_at(lacking.changed_at if lacking is not None else rows.changed_at),
        silent_after_intervals=silent_after_intervals, totals=tally.totals(), cells=tuple(cells),
        app=app, space=space, enforcement=tuple(enforcement),
        denials_rose=tuple(sorted(rises, key=lambda d: (d.denials_rose_at, d.app, d.cell_id))),
    )


def read_for_view(store: ReportStore, app: str | None = None, space: str | None = None) -> FleetRows:
    """The rows :func:`build_view` needs: with the apps of the cells that mention ``app``/``space``, or else of
    the cells where some app's denials rose."""
    if app is None and space is None:
        return store.read(rising_apps=True)
    return store.read(apps_containing=apps_wanted(app, space))


def apps_wanted(app: str | None, space: str | None) -> tuple[str, ...]:
    """What a row's apps text must contain to mention ``app`` and ``space``."""
    wanted = []
    if app is not None:
        wanted.append(json.dumps({"guid": app}, separators=(",", ":"))[1:-1])
    if space is not None:
        wanted.append(json.dumps({"space": space}, separators=(",", ":"))[1:-1])
    return tuple(wanted)


def converged(rows: FleetRows, silent_after_intervals: int) -> bool:
    """Whether some cell reports and every non-silent cell enforces the current version with nothing lagging."""
    reporting = [r for r in rows.reports
                 if classify(r, rows, silent_after_intervals)[0] is not CellState.SILENT]
    return bool(reporting) and all(r.dataset_version >= rows.version and r.lagging == 0 for r in reporting)


class ReportBuffer:
    """A worker's accepted reports, the newest per cell, written in one transaction per interval."""

    def __init__(self, store: ReportStore, *, interval: float, logger: Logger,
                 on_flush: Callable[[int, float], None] | None = None) -> None:
        self.store = store
        self.interval = interval
        self.log = logger
        self.on_flush = on_flush
        self.pending: dict[str, CellReport] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def batching(self) -> bool:
        """Whether reports are buffered (else each is written before the answer)."""
        return self.interval > 0

    def full(self) -> bool:
        return len(self.pending) >= MAX_BUFFERED_CELLS

    async def accept(self, report: CellReport) -> None:
        """Buffer ``report``, or write it now when batching is off (DatabaseError propagates then)."""
        if not self.batching:
            start = time.monotonic()
            written = await asyncio.to_thread(self.store.write, [report])
            if self.on_flush is not None:
                self.on_flush(written, time.monotonic() - start)
            return
        self.pending[report.cell_id] = report

    async def start(self) -> None:
        if self.batching:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the task and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> int:
        """Write the buffered reports in one transaction; keep them if the write fails."""
        if not self.pending:
            return 0
        batch, self.pending = self.pending, {}
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            written = await asyncio.to_thread(self.store.write, batch.values())
        except DatabaseError as exc:
            self.pending = {**batch, **self.pending}  # newer reports that arrived meanwhile win
            if not self._failing:
                self._failing = True
                self.log.error("cell-reports-write-failed", exc, {"buffered_cells": len(self.pending)})
            return 0
        if self._failing:
            self._failing = False
            self.log.info("cell-reports-write-recovered", {"written": written})
        if self.on_flush is not None:
            self.on_flush(written, loop.time() - start)
        return written


class FleetCollector:
    """The fleet metrics of the last evaluation, as a Prometheus collector (registered in the main process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: FleetTotals | None = None
        self._buckets = [0] * (len(CONVERGENCE_BUCKETS) + 1)
        self._sum = 0.0

    def publish(self, totals: FleetTotals) -> None:
        with self._lock:
            self._totals = totals

    def observe_convergence(self, seconds: float) -> None:
        with self._lock:
            self._buckets[bisect.bisect_left(CONVERGENCE_BUCKETS, seconds)] += 1
            self._sum += seconds

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            totals, counts, total = self._totals, list(self._buckets), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip((*CONVERGENCE_BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", float(cumulative)))
        histogram = HistogramMetricFamily(
            "fleet_convergence_seconds",
            "Time from a dataset version becoming current until every non-silent cell enforced it "
            "(observed by the one policy server that claims the version)")
        histogram.add_metric([], buckets, total)
        yield histogram
        if totals is None:
            return
        cells = GaugeMetricFamily("fleet_cells", "Cells by state (from their reports in the policy DB)",
                                  labels=["state"])
        for state in CellState:
            cells.add_metric([state.value], totals.cells.get(state, 0))
        yield cells
        containers = GaugeMetricFamily("fleet_containers", "Containers by state, over the cells' last reports",
                                       labels=["state"])
        c = totals.containers
        for name, value in (("current", c.current), ("lagging", c.lagging), ("failed", c.failed),
                            ("drifted", c.drifted), ("silent", c.silent)):
            containers.add_metric([name], value)
        yield containers
        yield GaugeMetricFamily("fleet_oldest_lag_seconds", "How long the longest catching-up cell has been behind",
                                value=totals.oldest_lag_seconds)


class FleetEvaluator:
    """Periodically turns the cell reports into fleet metrics and claims convergences (main process)."""

    def __init__(self, store: ReportStore, collector: FleetCollector, *, silent_after_intervals: int,
                 forget_after: float, logger: Logger, interval: float = 5.0, forget_every: float = 60.0) -> None:
        self.store = store
        self.collector = collector
        self.silent_after_intervals = silent_after_intervals
        self.forget_after = forget_after
        self.log = logger
        self.interval = interval
        self.forget_every = forget_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def evaluate(self) -> float | None:
        """One evaluation; the convergence seconds this process observed, if it won a claim."""
        rows = self.store.read()
        view = build_view(rows, silent_after_intervals=self.silent_after_intervals)
        self.collector.publish(view.totals)
        version = rows.versions.get(rows.version)
        if version is None or version.converged_at is not None or not converged(rows, self.silent_after_intervals):
            return None
        seconds = self.store.claim_convergence(rows.version)
        if seconds is not None:
            self.collector.observe_convergence(seconds)
            self.log.info("fleet-converged", {"version": rows.version, "seconds": round(seconds, 3),
                                              "cells": len(rows.reports)})
        return seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        forgotten_at = float("-inf")
        clock = 0.0
        while not self._stop.is_set():
            try:
                self.evaluate()
                if clock - forgotten_at >= self.forget_every:
                    forgotten_at = clock
                    if gone := self.store.forget_silent(self.forget_after):
                        self.log.info("silent-cells-forgotten", {"cells": gone})
            except DatabaseError as exc:
                if not self._failing:
                    self._failing = True
                    self.log.error("fleet-evaluation-failed", exc)
            else:
                if self._failing:
                    self._failing = False
                    self.log.info("fleet-evaluation-recovered")
            self._stop.wait(self.interval)
            clock += self.interval
