"""netmon's measurements: each on its own, failures counted and logged once, metrics as exported."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynamic_asgs.lager import Logger
from dynamic_asgs.netmon.measure import Measurements, NetmonMetrics, overlay_stats


class FakeCounter:
    def __init__(self, version: int, counts: Mapping[str, int] | Exception) -> None:
        self._version = version
        self.counts = counts

    @property
    def version(self) -> int:
        return self._version

    def count_rules(self) -> Mapping[str, int]:
        if isinstance(self.counts, Exception):
            raise self.counts
        return self.counts


def sysfs(tmp_path: Path, interface: str, **stats: int) -> Path:
    base = tmp_path / "net" / interface / "statistics"
    base.mkdir(parents=True, exist_ok=True)
    for name, value in stats.items():
        (base / name).write_text(f"{value}\n")
    return tmp_path / "net"


def samples(metrics: NetmonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


STATS = {"rx_bytes": 1000, "tx_bytes": 2000, "rx_dropped": 3, "tx_dropped": 4}


def make(tmp_path: Path, counters: list[FakeCounter], interface: str = "silk-vtep"
         ) -> tuple[Measurements, NetmonMetrics, io.StringIO]:
    out = io.StringIO()
    metrics = NetmonMetrics()
    m = Measurements(counters=list(counters), interface=interface, metrics=metrics,
                     logger=Logger("netmon", stream=out), sysfs=sysfs(tmp_path, "silk-vtep", **STATS),
                     interfaces=lambda: 5)
    return m, metrics, out


def test_every_metric_is_reported(tmp_path: Path) -> None:
    v4 = FakeCounter(4, {"filter": 100_003, "nat": 7, "mangle": 5})
    v6 = FakeCounter(6, {"filter": 40, "nat": 4})
    m, metrics, _ = make(tmp_path, [v4, v6])
    assert m.poll() == {"iptables_v4": True, "iptables_v6": True, "interfaces": True, "overlay": True}
    got = samples(metrics)
    assert got[("iptables_rules", ())] == 100_010, "IPTablesRuleCount is IPv4 filter + nat, not mangle nor IPv6"
    assert got[("iptables_table_rules", (("family", "4"), ("table", "mangle")))] == 5
    assert got[("iptables_table_rules", (("family", "6"), ("table", "filter")))] == 40
    assert got[("net_interfaces", ())] == 5
    for name, value in STATS.items():
        assert got[(f"overlay_{name}_total", (("interface", "silk-vtep"),))] == value
    assert got[("netmon_measurement_errors_total", (("measurement", "overlay"),))] == 0


def test_one_failing_measurement_hides_nothing_else_and_is_counted_and_logged_once(tmp_path: Path) -> None:
    v4 = FakeCounter(4, {"filter": 10, "nat": 4})
    v6 = FakeCounter(6, FileNotFoundError("ip6tables-save: not found"))
    m, metrics, out = make(tmp_path, [v4, v6], interface="missing0")
    for _ in range(3):
        assert m.poll() == {"iptables_v4": True, "iptables_v6": False, "interfaces": True, "overlay": False}
    got = samples(metrics)
    assert got[("iptables_rules", ())] == 14 and got[("net_interfaces", ())] == 5
    assert got[("netmon_measurement_errors_total", (("measurement", "iptables_v6"),))] == 3
    assert got[("netmon_measurement_errors_total", (("measurement", "overlay"),))] == 3
    assert got[("netmon_measurement_up", (("measurement", "overlay"),))] == 0
    assert got[("netmon_measurement_up", (("measurement", "iptables_v4"),))] == 1
    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    failures = [e["message"] for e in logged if e["level"] == "error"]
    assert sorted(failures) == ["netmon.measure.iptables-v6-failed", "netmon.measure.overlay-failed"]
    assert any("ip6tables-save: not found" in e["data"].get("error", "") for e in logged)

    v6.counts = {"filter": 2}
    assert m.poll()["iptables_v6"] is True
    recovered = [json.loads(line)["message"] for line in out.getvalue().splitlines()[len(logged):]]
    assert recovered == ["netmon.measure.iptables-v6-recovered"]
    assert samples(metrics)[("netmon_measurement_up", (("measurement", "iptables_v6"),))] == 1


def test_a_table_that_disappears_stops_being_reported(tmp_path: Path) -> None:
    v4 = FakeCounter(4, {"filter": 10, "nat": 4, "raw": 2})
    m, metrics, _ = make(tmp_path, [v4])
    m.poll()
    assert samples(metrics)[("iptables_table_rules", (("family", "4"), ("table", "raw")))] == 2
    v4.counts = {"filter": 12, "nat": 4}  # the raw table was unloaded (a netns recreated, a module removed)
    m.poll()
    got = samples(metrics)
    assert ("iptables_table_rules", (("family", "4"), ("table", "raw"))) not in got
    assert got[("iptables_table_rules", (("family", "4"), ("table", "filter")))] == 12
    v4.counts = FileNotFoundError("iptables-save: not found")
    m.poll()  # a failed count keeps the last figures: it says nothing about which tables exist
    assert samples(metrics)[("iptables_table_rules", (("family", "4"), ("table", "filter")))] == 12


def test_overlay_stats_reads_sysfs(tmp_path: Path) -> None:
    assert overlay_stats("silk-vtep", sysfs(tmp_path, "silk-vtep", **STATS)) == STATS
