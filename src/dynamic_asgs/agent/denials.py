"""Denied egress per container, and whether it rose because the container's security groups changed (issue 14).

Goals and the mechanism serving each:

* **Off the write path, cheap.** The agent reads every ASG chain's final ``REJECT``
  counter in one ``iptables-save -c`` on its own schedule
  (:meth:`~dynamic_asgs.iptables.runner.IptablesRunner.final_reject_packets`); this module
  only does arithmetic on the readings.
* **Counts that only grow.** A rewritten chain starts from zero (the restore declares it
  anew): after :meth:`DenialTracker.rules_changed`, and whenever a reading is below the
  previous one, only the new count is added, so ``denied_packets`` per container is
  monotonic and the cell's metric is a true counter.
* **The likely cause, told once.** When a container's rules were replaced (not created:
  a new container has no "before"), its denials are compared before and after: if they
  start (none in the last interval before the change) or jump (at least ``jump_factor``
  times the rate before), by at least ``min_packets``, within ``window`` seconds of the
  change, :meth:`DenialTracker.observe` returns one :class:`DenialsRose` per container and
  change; the caller tells the app once per app and change. Containers the change did not
  touch are never compared, so an app the edit does not affect hears nothing.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol

from dynamic_asgs.agent.worker import Worker
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import Container
from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.lager import Logger

__all__ = ["ROSE_MESSAGE", "DenialTracker", "DenialWatcher", "DenialsRose", "DeniedEgress", "Observation"]


@dataclass(frozen=True, slots=True)
class DenialsRose:
    """A container's denials started or jumped after its rules changed at ``changed_at`` (dataset ``version``)."""

    handle: str
    changed_at: float
    version: int | None
    rose_at: float


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reading found: packets refused since the previous reading, and the rises to tell."""

    added: int
    rose: tuple[DenialsRose, ...]


@dataclass(slots=True)
class _Change:
    at: float
    version: int | None
    rate_before: float
    counted: int = 0  # denials since the change
    told: bool = False


@dataclass(slots=True)
class _Counter:
    last: int
    at: float
    total: int = 0
    rate: float = 0.0  # denials per second over the last interval
    change: _Change | None = None
    rose_at: float | None = None
    reset: bool = False  # the chain was rewritten since the last reading: it counts from zero


class DenialTracker:
    """Per-container denied packets from successive counter readings (see the module docstring)."""

    def __init__(self, *, window: float = 600.0, min_packets: int = 5, jump_factor: float = 3.0) -> None:
        self._window = window
        self._min = min_packets
        self._factor = jump_factor
        self._counters: dict[str, _Counter] = {}

    def rules_changed(self, handles: Iterable[str], at: float, version: int | None) -> None:
        """The rules of ``handles`` (each had rules before) were replaced at ``at``, enforcing ``version``."""
        for handle in handles:
            counter = self._counters.get(handle)
            if counter is not None:
                counter.change = _Change(at, version, counter.rate)
                counter.reset = True

    def observe(self, readings: Mapping[str, int], now: float) -> Observation:
        """Take one reading (handle -> final REJECT packets); forget containers absent from it.

        The result names the containers whose denials rose after a change of their rules,
        each once per change.
        """
        for gone in set(self._counters) - set(readings):
            del self._counters[gone]
        rose: list[DenialsRose] = []
        total = 0
        for handle, packets in readings.items():
            counter = self._counters.get(handle)
            if counter is None:
                self._counters[handle] = _Counter(last=packets, at=now, total=packets)
                total += packets
                continue
            added = packets if counter.reset or packets < counter.last else packets - counter.last
            counter.reset = False
            elapsed = max(now - counter.at, 1e-6)
            counter.total += added
            total += added
            counter.last, counter.at = packets, now
            change = counter.change
            if change is not None:
                if now - change.at > self._window:
                    counter.change = None
                else:
                    change.counted += added
                    if not change.told and self._rose(change, now):
                        change.told = True
                        counter.rose_at = now
                        rose.append(DenialsRose(handle, change.at, change.version, now))
            counter.rate = added / elapsed
        return Observation(total, tuple(rose))

    def _rose(self, change: _Change, now: float) -> bool:
        if change.counted < self._min:
            return False
        if change.rate_before == 0:
            return True
        return change.counted / max(now - change.at, 1e-6) >= self._factor * change.rate_before

    def denied(self, handle: str) -> int:
        """Packets refused for ``handle`` since it was first read (0 when unknown)."""
        counter = self._counters.get(handle)
        return counter.total if counter else 0

    def rose_at(self, handle: str) -> float | None:
        """When ``handle``'s denials last rose after a change of its rules (None: never, or unknown)."""
        counter = self._counters.get(handle)
        return counter.rose_at if counter else None


#: What the app sees in ``cf logs`` when its denials rose after its rules changed.
ROSE_MESSAGE = ("Egress connections are being refused since its security groups changed at {at} "
                "(dataset version {version})")


class CounterReader(Protocol):
    """One family's REJECT counters (real: :class:`~dynamic_asgs.iptables.runner.IptablesRunner`)."""

    def final_reject_packets(self, prefix: str) -> dict[str, int]: ...


class AppLog(Protocol):
    """Where app-visible lines go (real: :class:`~dynamic_asgs.agent.loggregator.AppLogEmitter`)."""

    def emit(self, container: Container, message: str) -> None: ...


class DenialMetrics(Protocol):
    def observe_denials(self, *, added: int, rose: int, failed: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class DeniedEgress:
    """One container's denied egress as last read."""

    packets: int
    rose_at: float | None


class DenialWatcher(Worker):
    """Reads the counters every ``interval`` in its own thread; tells each app once per change that hurt it.

    Shares nothing mutable with the converger: rule changes arrive through a queue
    (:meth:`rules_replaced`), containers through the converger's published snapshot, and
    :meth:`counts` returns an immutable mapping replaced after each read.
    """

    def __init__(self, *, readers: Mapping[int, CounterReader], containers: Callable[[], Mapping[str, Container]],
                 logger: Logger, metrics: DenialMetrics, interval: float, tracker: DenialTracker,
                 app_log: AppLog | None = None, clock: Callable[[], float] = time.time) -> None:
        self._readers, self._containers, self._app_log = readers, containers, app_log
        self._log, self._metrics, self._interval, self._tracker = logger.session("denials"), metrics, interval, tracker
        self._clock = clock
        self._events: queue.SimpleQueue[tuple[tuple[str, ...], float, int | None]] = queue.SimpleQueue()
        self._counts: Mapping[str, DeniedEgress] = MappingProxyType({})
        self._error: str | None = None
        super().__init__("denied-egress")

    def rules_replaced(self, handles: Collection[str], at: float, version: int | None) -> None:
        """The rules of ``handles`` were replaced at ``at`` (called by the converger; never blocks)."""
        if handles:
            self._events.put((tuple(handles), at, version))

    def counts(self) -> Mapping[str, DeniedEgress]:
        """Per container, its denied egress as of the last read."""
        return self._counts

    def read_once(self) -> Observation | None:
        """Read every family's counters once; None when a read failed (logged once per distinct error)."""
        while True:
            try:
                handles, at, version = self._events.get_nowait()
            except queue.Empty:
                break
            self._tracker.rules_changed(handles, at, version)
        containers = self._containers()
        by_chain = {chains.asg_chain_name(h): h for h in containers}
        readings: dict[str, int] = {}
        try:
            for reader in self._readers.values():
                for chain, packets in reader.final_reject_packets(chains.ASG_PREFIX).items():
                    handle = by_chain.get(chain)
                    if handle is not None:
                        readings[handle] = readings.get(handle, 0) + packets
        except DynamicASGsError as exc:
            self._metrics.observe_denials(added=0, rose=0, failed=True)
            if self._error != str(exc):
                self._log.error("denied-egress-read-failed", exc, {"effect": "denied egress not updated; retried"})
            self._error = str(exc)
            return None
        self._error = None
        seen = self._tracker.observe(readings, self._clock())
        self._counts = MappingProxyType({h: DeniedEgress(self._tracker.denied(h), self._tracker.rose_at(h))
                                         for h in readings})
        self._tell(seen.rose, containers)
        self._metrics.observe_denials(added=seen.added, rose=len(seen.rose))
        return seen

    def _tell(self, rose: Iterable[DenialsRose], containers: Mapping[str, Container]) -> None:
        told: set[tuple[str, float]] = set()  # once per app and change, however many of its instances
        for event in rose:
            container = containers.get(event.handle)
            if container is None:
                continue
            at = datetime.fromtimestamp(event.changed_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._log.info("egress-denials-rose-after-rules-changed", {
                "handle": event.handle, "app_guid": container.app_guid, "space_guid": container.space_id,
                "rules_changed_at": at, "dataset_version": event.version, "denied_packets":
                self._tracker.denied(event.handle)})
            if self._app_log is not None and (container.app_guid, event.changed_at) not in told:
                told.add((container.app_guid, event.changed_at))
                self._app_log.emit(container, ROSE_MESSAGE.format(at=at, version=event.version))

    def _run(self) -> None:
        while True:
            try:
                self.read_once()
            except Exception as exc:  # the agent outlives any counter text: log and go on
                self._log.error("denied-egress-read-crashed", exc)
            if self._stop.wait(self._interval):
                return
