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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["DenialTracker", "DenialsRose"]


@dataclass(frozen=True, slots=True)
class DenialsRose:
    """A container's denials started or jumped after its rules changed at ``changed_at`` (dataset ``version``)."""

    handle: str
    changed_at: float
    version: int | None
    rose_at: float


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

    def observe(self, readings: Mapping[str, int], now: float) -> list[DenialsRose]:
        """Take one reading (handle -> final REJECT packets); forget containers absent from it.

        Returns the containers whose denials rose after a change of their rules, each once per change.
        """
        for gone in set(self._counters) - set(readings):
            del self._counters[gone]
        rose: list[DenialsRose] = []
        for handle, packets in readings.items():
            counter = self._counters.get(handle)
            if counter is None:
                self._counters[handle] = _Counter(last=packets, at=now, total=packets)
                continue
            added = packets if counter.reset or packets < counter.last else packets - counter.last
            counter.reset = False
            elapsed = max(now - counter.at, 1e-6)
            counter.total += added
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
        return rose

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
