"""What netmon measures, each metric on its own so one failure never hides the others.

* ``IPTablesRuleCount`` keeps the Go meaning: the lines ``iptables -S`` prints for the
  filter and nat tables (IPv4), i.e. one per chain (``-P``/``-N``) plus one per rule.
  It comes from one ``iptables-save`` read of all tables under the iptables lock
  (:meth:`~dynamic_asgs.iptables.runner.IptablesRunner.count_rules` streams and counts;
  no per-rule walk). IPv6 and per-table counts are reported beside it.
* ``NetInterfaceCount``: the interfaces of the network namespace (``if_nameindex``).
* The overlay interface's rx/tx bytes and drops from sysfs, exported as counters (the
  kernel's cumulative values, so ``rate()`` works on them).

Each measurement runs in :meth:`Measurements._guard`: a failure sets
``netmon_measurement_up{measurement}`` to 0, counts ``netmon_measurement_errors_total``,
is logged once per distinct error (and once on recovery), and leaves the other
measurements alone.

========================================================  =====================================
Prometheus (this project)                                 Go (silk netmon)
========================================================  =====================================
``iptables_rules`` (gauge)                                ``IPTablesRuleCount`` (filter + nat, IPv4)
``iptables_table_rules{family,table}`` (gauge)            (new) ``iptables -S`` lines per table
``net_interfaces`` (gauge)                                ``NetInterfaceCount``
``overlay_rx_bytes_total{interface}`` (counter)           ``OverlayRxBytes``
``overlay_tx_bytes_total{interface}`` (counter)           ``OverlayTxBytes``
``overlay_rx_dropped_total{interface}`` (counter)         ``OverlayRxDropped``
``overlay_tx_dropped_total{interface}`` (counter)         ``OverlayTxDropped``
``netmon_measurement_up{measurement}`` (gauge)            (new) 1 when the last try succeeded
``netmon_measurement_errors_total{measurement}``          (new) failed measurements
``netmon_measurement_seconds{measurement}`` (histogram)   (new) time of one measurement
========================================================  =====================================

``measurement`` is ``iptables_v4``, ``iptables_v6``, ``interfaces`` or ``overlay``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from dynamic_asgs.lager import Logger

__all__ = ["OVERLAY_STATS", "Measurements", "NetmonMetrics", "RuleCounter", "interface_count", "overlay_stats"]

#: The sysfs statistics of the overlay interface netmon exports (Go's Overlay{Rx,Tx}{Bytes,Dropped}).
OVERLAY_STATS = ("rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")
_GO_NAMES = {"rx_bytes": "OverlayRxBytes", "tx_bytes": "OverlayTxBytes", "rx_dropped": "OverlayRxDropped",
             "tx_dropped": "OverlayTxDropped"}


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
    return {name: int((base / name).read_text().strip()) for name in OVERLAY_STATS}


class _OverlayCollector:
    """Exports the last overlay reading as counters (the kernel's own cumulative values)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, int]] = {}  # interface -> stat -> value

    def set(self, interface: str, values: Mapping[str, int]) -> None:
        with self._lock:
            self._values[interface] = dict(values)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values = {i: dict(v) for i, v in self._values.items()}
        for name in OVERLAY_STATS:
            what = name.replace("_", " ")
            family = CounterMetricFamily(f"overlay_{name}", f"Overlay interface {what} ({_GO_NAMES[name]})",
                                         labels=["interface"])
            for interface, stats in sorted(values.items()):
                family.add_metric([interface], stats[name])
            yield family


class NetmonMetrics:
    """netmon's Prometheus metrics, in their own registry (Go name -> ours: the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.rule_count = Gauge("iptables_rules", "IPv4 `iptables -S` lines of filter + nat (IPTablesRuleCount)",
                                registry=r)
        self.table_rules = Gauge("iptables_table_rules", "`iptables -S` lines per family and table",
                                 ["family", "table"], registry=r)
        self.interfaces = Gauge("net_interfaces", "Network interfaces (NetInterfaceCount)", registry=r)
        self.overlay = _OverlayCollector()
        r.register(self.overlay)
        self.up = Gauge("netmon_measurement_up", "1 when the last measurement of this kind succeeded", ["measurement"],
                        registry=r)
        self.errors = Counter("netmon_measurement_errors", "Failed measurements", ["measurement"], registry=r)
        self.seconds = Histogram("netmon_measurement_seconds", "Time of one measurement", ["measurement"],
                                 buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30), registry=r)


class Measurements:
    """One poll: every measurement, each guarded on its own."""

    def __init__(self, *, counters: list[RuleCounter], interface: str, metrics: NetmonMetrics, logger: Logger,
                 sysfs: Path = Path("/sys/class/net"), interfaces: Callable[[], int] = interface_count) -> None:
        self._counters, self._interface, self._m, self._sysfs = counters, interface, metrics, sysfs
        self._interfaces = interfaces
        self._log = logger.session("measure")
        self._failing: dict[str, str] = {}
        self._tables: dict[int, set[str]] = {}  # per family, the tables of the last count
        for name in (*(f"iptables_v{c.version}" for c in counters), "interfaces", "overlay"):
            metrics.errors.labels(measurement=name)  # exported as 0 before the first failure

    def poll(self) -> dict[str, bool]:
        """Measure everything; return which measurements succeeded."""
        results = {f"iptables_v{c.version}": self._guard(f"iptables_v{c.version}", self._rules(c))
                   for c in self._counters}
        results["interfaces"] = self._guard("interfaces", lambda: self._m.interfaces.set(self._interfaces()))
        results["overlay"] = self._guard("overlay", self._overlay)
        return results

    def _rules(self, counter: RuleCounter) -> Callable[[], None]:
        def measure() -> None:
            counts = counter.count_rules()
            family = str(counter.version)
            for table in self._tables.get(counter.version, set()) - set(counts):
                self._m.table_rules.remove(family, table)  # a table no longer loaded is not "0 rules"
            for table, n in counts.items():
                self._m.table_rules.labels(family=family, table=table).set(n)
            self._tables[counter.version] = set(counts)
            if counter.version == 4:
                self._m.rule_count.set(counts.get("filter", 0) + counts.get("nat", 0))
        return measure

    def _overlay(self) -> None:
        self._m.overlay.set(self._interface, overlay_stats(self._interface, self._sysfs))

    def _guard(self, name: str, measure: Callable[[], None]) -> bool:
        started = time.monotonic()
        event = name.replace("_", "-")
        try:
            measure()
        except Exception as exc:  # one failing measurement must not hide the others
            self._m.errors.labels(measurement=name).inc()
            self._m.up.labels(measurement=name).set(0)
            if self._failing.get(name) != str(exc):  # log each distinct failure once, not every poll
                self._log.error(f"{event}-failed", exc)
            self._failing[name] = str(exc)
            return False
        finally:
            self._m.seconds.labels(measurement=name).observe(time.monotonic() - started)
        if name in self._failing:
            self._log.info(f"{event}-recovered")
            del self._failing[name]
        self._m.up.labels(measurement=name).set(1)
        return True
