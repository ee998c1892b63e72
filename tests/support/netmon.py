"""``dynamic-asgs netmon`` as a real process inside a network namespace, and its metrics.

netmon measures the namespace it runs in (interfaces, sysfs, iptables), so the daemon is
started with ``ip netns exec <ns>``; its metrics port is on that namespace's loopback and
is scraped from inside it too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from support.daemons import Daemon, wait_for
from support.netns import ns_run

__all__ = ["Netmon", "scrape", "start_netmon"]

_FETCH = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=10).read().decode())"


def scrape(ns: str, port: int) -> str:
    """The text of ``http://127.0.0.1:<port>/metrics`` inside ``ns``."""
    return ns_run(ns, [sys.executable, "-c", _FETCH, f"http://127.0.0.1:{port}/metrics"], timeout=30).stdout


@dataclass
class Netmon:
    """A running netmon and where its metrics are."""

    ns: str
    daemon: Daemon
    port: int

    def text(self) -> str:
        return scrape(self.ns, self.port)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(self.text()) for s in family.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))


def start_netmon(ns: str, directory: Path, *, backend: str, port: int = 9102, **overrides: Any) -> Netmon:
    """Start netmon in ``ns`` with ``backend``'s save tools (1 s poll) and wait for its first measurement."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"poll_interval": 1, "iptables_lock_file": str(directory / "iptables.lock"),
              "iptables_save_command": f"iptables-{backend}-save",
              "ip6tables_save_command": f"ip6tables-{backend}-save",
              "metrics_port": port, **overrides}
    path = directory / "netmon.json"
    path.write_text(json.dumps(config))
    netmon = Netmon(ns, Daemon(["netmon", "--config-file", str(path)], directory / "netmon.log", ns=ns), port)
    try:
        wait_for(lambda: netmon.value("netmon_measurement_seconds_count", measurement="overlay"), timeout=30,
                 what="netmon's first measurement")
    except AssertionError:
        netmon.daemon.stop()
        raise
    return netmon
