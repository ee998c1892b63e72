"""netmon as operators run it: a real process in a network namespace with 100k+ real iptables rules.

The count must equal what ``iptables -S`` prints for filter + nat (Go's ``IPTablesRuleCount``),
on legacy and nft, and follow the table from one poll to the next; interface count and the
overlay interface's counters must be those of the namespace netmon runs in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.netmon import start_netmon
from support.netns import iptables, netns, ns_run, restore

RULES = 100_000
CHAINS = 500


def big_table() -> str:
    """One restore for filter (100k rules in 500 chains, jumped to from FORWARD) and nat."""
    lines = ["*filter", ":FORWARD DROP [0:0]"]
    lines += [f":asg-{c:05d} - [0:0]" for c in range(CHAINS)]
    lines += [f"-A FORWARD -s 10.{c // 256}.{c % 256}.2/32 -j asg-{c:05d}" for c in range(CHAINS)]
    lines += [f"-A asg-{i % CHAINS:05d} -d 172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}/32 -j ACCEPT"
              for i in range(RULES)]
    lines += ["COMMIT", "*nat", ":POSTROUTING ACCEPT [0:0]", ":snat - [0:0]", "-A POSTROUTING -j snat",
              "-A snat -s 10.0.0.0/8 -o silk-vtep -j MASQUERADE", "COMMIT", ""]
    return "\n".join(lines)


def listing_lines(ns: str, backend: str, version: int, table: str) -> int:
    return len(iptables(ns, backend, version, "-t", table, "-S").splitlines())


@pytest.fixture(params=IPTABLES_BACKENDS)
def cell_ns(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    backend: str = request.param
    require_backend(backend)
    with netns("nm") as ns:
        # The overlay stand-in: a veth pair, IPv6 off so that nothing sends on it unless the test does.
        ns_run(ns, ["ip", "link", "add", "silk-vtep", "type", "veth", "peer", "name", "vtep-peer"])
        for dev in ("silk-vtep", "vtep-peer"):
            ns_run(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
            ns_run(ns, ["ip", "link", "set", dev, "up"])
        ns_run(ns, ["ip", "addr", "add", "10.99.0.1/24", "dev", "silk-vtep"])
        ns_run(ns, ["ip", "neigh", "add", "10.99.0.3", "lladdr", "02:00:00:00:00:03", "dev", "silk-vtep"])
        yield ns, backend


def send_udp(ns: str, count: int) -> None:
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x' * 200, ('10.99.0.3', 9))")
    ns_run(ns, ["python3", "-c", code])


def sysfs_stats(ns: str) -> dict[str, float]:
    out = ns_run(ns, ["sh", "-c", "cd /sys/class/net/silk-vtep/statistics && "
                                  "echo $(cat rx_bytes tx_bytes rx_dropped tx_dropped)"]).stdout.split()
    return dict(zip(("rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped"), map(float, out), strict=True))


def test_netmon_counts_what_iptables_S_lists(cell_ns: tuple[str, str], tmp_path: Path) -> None:
    ns, backend = cell_ns
    built = restore(ns, backend, 4, big_table())
    assert built.returncode == 0, built.stderr
    assert restore(ns, backend, 6, "*filter\n:v6chain - [0:0]\n-A v6chain -j DROP\n-A FORWARD -j v6chain\nCOMMIT\n"
                   ).returncode == 0
    filter_lines, nat_lines = listing_lines(ns, backend, 4, "filter"), listing_lines(ns, backend, 4, "nat")
    expected = filter_lines + nat_lines
    assert expected > RULES + CHAINS

    netmon = start_netmon(ns, tmp_path / "netmon", backend=backend)
    try:
        wait_for(lambda: netmon.value("iptables_rules") == expected, timeout=30,
                 what=f"iptables_rules == {expected} (`iptables -S` filter + nat)")
        got = netmon.samples()
        assert got[("iptables_table_rules", (("family", "4"), ("table", "filter")))] == filter_lines
        assert got[("iptables_table_rules", (("family", "4"), ("table", "nat")))] == nat_lines
        assert got[("iptables_table_rules", (("family", "6"), ("table", "filter")))] == \
            listing_lines(ns, backend, 6, "filter")
        links = len(ns_run(ns, ["ip", "-o", "link", "show"]).stdout.splitlines())
        assert links == 3 and got[("net_interfaces", ())] == links  # lo and the pair: this namespace's, not root's

        # The next poll sees a change: 3 more rules and one more chain.
        added = restore(ns, backend, 4, "*filter\n:extra - [0:0]\n-A extra -j DROP\n-A extra -j ACCEPT\n"
                                        "-A FORWARD -j extra\nCOMMIT\n", "--noflush")
        assert added.returncode == 0, added.stderr
        wait_for(lambda: netmon.value("iptables_rules") == expected + 4, timeout=30,
                 what="the next poll to count the added chain and rules")
        assert expected + 4 == listing_lines(ns, backend, 4, "filter") + listing_lines(ns, backend, 4, "nat")

        send_udp(ns, 25)
        stats = sysfs_stats(ns)
        assert stats["tx_bytes"] >= 25 * 200
        wait_for(lambda: all(netmon.value(f"overlay_{k}_total", interface="silk-vtep") == v
                             for k, v in sysfs_stats(ns).items()),
                 timeout=30, what="overlay counters equal to the interface's sysfs statistics")
        assert netmon.value("netmon_measurement_errors_total", measurement="iptables_v4") == 0
    finally:
        assert netmon.daemon.stop() == 0, "netmon exits cleanly on SIGTERM"


def test_a_failing_measurement_leaves_the_others_reported(cell_ns: tuple[str, str], tmp_path: Path) -> None:
    ns, backend = cell_ns
    netmon = start_netmon(ns, tmp_path / "netmon", backend=backend, interface_name="no-such-if",
                          ip6tables_save_command=str(tmp_path / "missing-ip6tables-save"))
    try:
        wait_for(lambda: (netmon.value("netmon_measurement_errors_total", measurement="overlay") or 0) >= 2,
                 what="two failed overlay measurements")
        got = netmon.samples()
        assert got[("netmon_measurement_up", (("measurement", "overlay"),))] == 0
        assert got[("netmon_measurement_up", (("measurement", "iptables_v6"),))] == 0
        assert got[("netmon_measurement_up", (("measurement", "iptables_v4"),))] == 1
        assert got[("net_interfaces", ())] == 3
        assert ("overlay_tx_bytes_total", (("interface", "no-such-if"),)) not in got
        failures = [e["message"] for e in netmon.daemon.log_lines() if e["level"] == "error"]
        assert sorted(failures) == ["cfnetworking.netmon.measure.iptables-v6-failed",
                                    "cfnetworking.netmon.measure.overlay-failed"], "each failure logged once"
    finally:
        netmon.daemon.stop()
