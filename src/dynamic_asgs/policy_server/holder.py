"""A worker's current dataset: one cheap version check per interval, a reload only on change.

Every ``dataset_check_interval_ms`` (0.5 s by default) the worker reads the dataset
version (one indexed single-row query, in a thread so the event loop never blocks). When it
differs from the version in memory, the worker reads a consistent snapshot, builds a new
:class:`~dynamic_asgs.policy_server.dataset.Dataset` off the loop, swaps it in and wakes every
blocking query through an ``asyncio.Event`` (one per version: the event a request waits on
is captured together with the dataset it was answered from, so no change is missed).

A failing DB never stops the service: the last dataset keeps being served, the failure is
logged once per outage and counted, and the check continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.lager import Logger
from dynamic_asgs.policy_server.dataset import Dataset
from dynamic_asgs.policydb.store import Snapshot

__all__ = ["DatasetHolder", "HolderMetrics"]


class HolderMetrics:
    """Reload metrics (prometheus multiprocess mode: one sample file per worker)."""

    def __init__(self) -> None:
        self.version = Gauge("policy_server_dataset_version", "Dataset version served", multiprocess_mode="max")
        self.groups = Gauge("policy_server_security_groups", "Security groups in the served dataset",
                            multiprocess_mode="max")
        self.reload = Histogram("policy_server_dataset_reload_seconds", "Time to load and index a new version",
                                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.check_errors = Counter("policy_server_dataset_check_errors", "Failed dataset version checks")


class DatasetHolder:
    """Keeps the newest dataset version of the policy store in memory."""

    def __init__(self, *, version: Callable[[], int], snapshot: Callable[[], Snapshot], interval: float,
                 logger: Logger, metrics: HolderMetrics | None = None) -> None:
        self._version = version
        self._snapshot = snapshot
        self.interval = interval
        self.log = logger
        self.metrics = metrics
        self.dataset: Dataset | None = None
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Load the current version (if the DB answers) and start checking."""
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def refresh(self) -> bool:
        """Check the version; reload and wake waiters if it changed. Return whether it did."""
        try:
            version = await asyncio.to_thread(self._version)
            if self.dataset is not None and version == self.dataset.version:
                self._recovered()
                return False
            start = time.monotonic()
            dataset = await asyncio.to_thread(lambda: Dataset(self._snapshot()))
        except DatabaseError as exc:
            if self.metrics:
                self.metrics.check_errors.inc()
            if not self._failing:
                self._failing = True
                self.log.error("dataset-check-failed", exc, {"serving_version": self.version})
            return False
        self._recovered()
        self._swap(dataset, time.monotonic() - start)
        return True

    @property
    def version(self) -> int | None:
        return None if self.dataset is None else self.dataset.version

    def _swap(self, dataset: Dataset, seconds: float) -> None:
        previous = self.version
        self.dataset = dataset
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()
        if self.metrics:
            self.metrics.reload.observe(seconds)
            self.metrics.version.set(dataset.version)
            self.metrics.groups.set(dataset.size)
        self.log.info("dataset-loaded", {"version": dataset.version, "previous_version": previous,
                                         "security_groups": dataset.size, "seconds": round(seconds, 3)})

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("dataset-check-recovered", {"serving_version": self.version})
