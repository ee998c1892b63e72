"""What netmon measures, each metric on its own so one failure never hides the others.

* ``IPTablesRuleCount`` keeps the Go meaning: the lines ``iptables -S`` prints for the
  filter and nat tables (IPv4), i.e. one per chain (``-P``/``-N``) plus one per rule.
  It comes from one ``iptables-save`` read under the iptables lock (the runner streams
  and counts; no per-rule walk). IPv6 and per-table counts are reported beside it.
* ``NetInterfaceCount``: the interfaces of the network namespace (netlink).
* The overlay interface's ``rx/tx bytes`` and ``rx/tx dropped`` from sysfs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dynamic_asgs.lager import Logger

__all__ = ["Measurements", "NetmonMetrics", "RuleCounter", "interface_count", "overlay_stats"]

_STATS = ("rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")


class RuleCounter(Protocol):
    """Counts ``iptables -S`` lines per table for one family (real: the iptables runner)."""

    @property
    def version(self) -> int: ...

    def count_rules(self) -> Mapping[str, int]: ...


def interface_count() -> int:
    """Network interfaces in this namespace (as Go's ``net.Interfaces()`` counts them)."""
    return len(socket.if_nameindex())


def overlay_stats(interface: str, sysfs: Path = Path("/sys/class/net")) -> dict[str, int]:
    """rx/tx bytes and drops of ``interface``; raises OSError/ValueError when unreadable."""
    base = sysfs / interface / "statistics"
    return {name: int((base / name).read_text().strip()) for name in _STATS}


class NetmonMetrics:
    """netmon's Prometheus metrics (Go name -> ours: see the README's metrics table)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.rule_count = Gauge("iptables_rule_count", "IPv4 `iptables -S` lines of filter + nat (IPTablesRuleCount)",
                                registry=r)
        self.table_rules = Gauge("iptables_table_rule_count", "`iptables -S` lines per family and table",
                                 ["family", "table"], registry=r)
        self.interfaces = Gauge("net_interface_count", "Network interfaces (NetInterfaceCount)", registry=r)
        self.overlay = {name: Gauge(f"overlay_{name}", f"Overlay interface {name.replace('_', ' ')} "
                                    f"(Overlay{name.split('_')[0].title()}{name.split('_')[1].title()})",
                                    ["interface"], registry=r) for name in _STATS}
        self.up = Gauge("netmon_measurement_up", "1 when the last measurement of this kind succeeded", ["measurement"],
                        registry=r)
        self.errors = Counter("netmon_measurement_errors", "Failed measurements", ["measurement"], registry=r)
        self.seconds = Histogram("netmon_measurement_seconds", "Time of one measurement", ["measurement"],
                                 buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30), registry=r)


class Measurements:
    """One poll: every measurement, each guarded on its own."""

    def __init__(self, *, counters: list[RuleCounter], interface: str, metrics: NetmonMetrics, logger: Logger,
                 sysfs: Path = Path("/sys/class/net")) -> None:
        self._counters, self._interface, self._m, self._sysfs = counters, interface, metrics, sysfs
        self._log = logger.session("measure")
        self._failing: dict[str, str] = {}

    def poll(self) -> dict[str, bool]:
        """Measure everything; return which measurements succeeded."""
        results = {f"iptables_v{c.version}": self._guard(f"iptables_v{c.version}", self._rules(c))
                   for c in self._counters}
        results["interfaces"] = self._guard("interfaces", lambda: self._m.interfaces.set(interface_count()))
        results["overlay"] = self._guard("overlay", self._overlay)
        return results

    def _rules(self, counter: RuleCounter) -> Callable[[], None]:
        def measure() -> None:
            counts = counter.count_rules()
            for table, n in counts.items():
                self._m.table_rules.labels(family=str(counter.version), table=table).set(n)
            if counter.version == 4:
                self._m.rule_count.set(counts.get("filter", 0) + counts.get("nat", 0))
        return measure

    def _overlay(self) -> None:
        for name, value in overlay_stats(self._interface, self._sysfs).items():
            self._m.overlay[name].labels(interface=self._interface).set(value)

    def _guard(self, name: str, measure: Callable[[], None]) -> bool:
        started = time.monotonic()
        try:
            measure()
        except Exception as exc:  # one failing measurement must not hide the others
            self._m.errors.labels(measurement=name).inc()
            self._m.up.labels(measurement=name).set(0)
            if self._failing.get(name) != str(exc):
                self._log.error(f"{name.replace('_', '-')}-failed", exc)
            self._failing[name] = str(exc)
            return False
        finally:
            self._m.seconds.labels(measurement=name).observe(time.monotonic() - started)
        if name in self._failing:
            self._log.info(f"{name.replace('_', '-')}-recovered")
            del self._failing[name]
        self._m.up.labels(measurement=name).set(1)
        return True
