"""Propagation benchmark: from an ASG edit at the CC stand-in until cells enforce it.

Run as root (it builds network namespaces; nothing touches the root namespace's tables)::

    .venv/bin/python bench/propagation.py [--edits 10] [--cells 100] [--containers 20] [--syncer-interval 5]

Everything is a real process: the CC stand-in, the syncer (polling every
``--syncer-interval`` s, 5 by default), the policy server (SQLite, blocking queries
on) and the agents, with their default 60 s poll interval (so the blocking query,
not the poll, is what carries a change). Two kinds of cells, measured in one run:

* **real cell** — a cell in network namespaces with real iptables (legacy), a
  container per space and a destination; a change counts as enforced when the
  agent has written every container's chains (its ``container-rules-updated``
  lines), and the last edit is also checked with a connection;
* **simulated cells** — ``--cells`` agent processes (the real daemon) whose
  dataplane writes to the in-memory table of :mod:`dynamic_asgs.iptables.fake`
  instead of the kernel, each with ``--containers`` containers.

Each edit changes the port of a globally enabled group, so every container on
every cell must change. Latency per cell = time of the cell's last update line
for that edit - time the ASG file was replaced. It prints p50/p90/p99/max for
both kinds beside the Go design's worst case: the syncer's and the agent's
60 s poll intervals back to back (120 s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))  # the test harness: processes, namespaces, certificates

from dynamic_asgs.asg import chains  # noqa: E402
from dynamic_asgs.metadata_store import MetadataStore  # noqa: E402
from support.cell import Cell, cell  # noqa: E402
from support.daemons import Daemon, PolicyServer, wait_for  # noqa: E402
from support.stack import asg, control_plane, start_agent, store_add  # noqa: E402

GO_WORST_CASE = 120.0  # syncer poll (60 s) + agent poll (60 s), the Go design's defaults
DEST = "198.18.0.10"
BASE_PORT = 8000


def groups(port: int, spaces: int) -> list[dict[str, Any]]:
    """A global group on ``port`` (the one the edits change) and one bound group per space."""
    rule = {"protocol": "tcp", "destination": DEST, "ports": str(port)}
    bound = [asg(f"space-{i}", [{"protocol": "udp", "destination": "198.18.1.0/24", "ports": "53"}],
                 running=[f"s{i}"]) for i in range(spaces)]
    return [asg("edited", [rule], globally_enabled=True), *bound]


# -- simulated cells -------------------------------------------------------------------------


def _sim_worker(config_file: str, handles: list[str]) -> int:
    """Run the real agent daemon with the fake table (parents pre-created, as the CNI would have)."""
    import argparse as ap

    import dynamic_asgs.agent.command as command
    from dynamic_asgs.iptables.fake import FakeRunner, FakeTable

    def fake_runner(*, version: int, **_: Any) -> FakeRunner:
        table = FakeTable()
        reject = "REJECT --reject-with " + ("icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable")
        for handle in handles:
            table.create_chain(chains.netout_chain_name(handle), [f"-j {reject}"])
        return FakeRunner(version, table)

    command.IptablesRunner = fake_runner  # type: ignore[attr-defined,assignment]
    return command.run(ap.Namespace(config_file=config_file))


_PORTS = itertools.count(20000)  # below the kernel's ephemeral range: 100 agents' outgoing connections
                                 # would otherwise take ports handed out by free_port() before they bind


def local_port() -> int:
    """A free loopback port outside the ephemeral range."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def start_sim_agent(directory: Path, policy: PolicyServer, n: int, containers: int, spaces: int) -> Daemon:
    directory.mkdir(parents=True)
    store = MetadataStore(directory / "store.json")
    handles = [f"cell{n}-c{i}" for i in range(containers)]
    for i, handle in enumerate(handles):
        store.add(handle, f"10.{n // 200}.{n % 200}.{i + 2}", {"app_id": f"app-{handle}", "space_id": f"s{i % spaces}",
                                                              "policy_group_id": f"app-{handle}",
                                                              "container_workload": "app"})
    config = {"policy_server_url": policy.url, "ca_cert_file": str(policy.pki.client.ca),
              "client_cert_file": str(policy.pki.client.cert), "client_key_file": str(policy.pki.client.key),
              "cni_datastore_path": str(directory / "store.json"), "iptables_lock_file": str(directory / "lock"),
              "force_policy_poll_cycle_port": local_port(), "debug_server_port": local_port(), "metrics_port": 0,
              "asg_poll_interval": 60, "log_level": "info"}
    (directory / "agent.json").write_text(json.dumps(config))
    (directory / "handles.json").write_text(json.dumps(handles))
    return Daemon([], directory / "agent.log", argv=[sys.executable, __file__, "--worker", str(directory)])


# -- measuring -------------------------------------------------------------------------------


def _ts(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")[:26] + "+00:00").timestamp()


class UpdateLog:
    """Reads one agent's ``container-rules-updated`` lines as they come."""

    def __init__(self, daemon: Daemon, containers: int) -> None:
        self.daemon, self.containers, self._seen = daemon, containers, 0

    def updates(self) -> list[tuple[float, str, int]]:
        lines = self.daemon.events("container-rules-updated")
        return [(_ts(e), e["data"]["handle"], e["data"]["dataset_version"]) for e in lines]

    def mark(self) -> None:
        self._seen = len(self.updates())

    def enforced_at(self) -> float | None:
        """When every container had been rewritten since :meth:`mark`, or None if not yet."""
        new = self.updates()[self._seen:]
        if len({handle for _, handle, _ in new}) < self.containers:
            return None
        return max(t for t, _, _ in new)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


@contextmanager
def real_cell(tmp: Path, policy: PolicyServer, spaces: int) -> Iterator[tuple[Cell, UpdateLog]]:
    with cell("legacy", tmp) as c:
        c.add_destination("d", [DEST], tcp=[BASE_PORT + i for i in range(64)])
        store = tmp / "real-store.json"
        for i in range(spaces):
            handle = f"real-{i}"
            c.add_container(handle)
            c.hook(handle)
            store_add(store, c, handle, space=f"s{i}")
        agent = start_agent(tmp, c, policy, store, name="real-agent", asg_poll_interval=60, metrics_port=0)
        try:
            yield c, UpdateLog(agent.daemon, spaces)
        finally:
            agent.daemon.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"dasg-propagation-{os.getpid()}"
    tmp.mkdir(parents=True)
    spaces = 4
    results: dict[str, list[float]] = {"real cell": [], "simulated cells": []}
    with ExitStack() as stack:
        plane = stack.enter_context(control_plane(tmp, groups(BASE_PORT, spaces), poll=args.syncer_interval))
        the_cell, real_log = stack.enter_context(real_cell(tmp / "real", plane.policy, spaces))
        started = time.monotonic()
        sims = []
        for n in range(args.cells):
            daemon = start_sim_agent(tmp / f"sim-{n}", plane.policy, n, args.containers, spaces)
            stack.callback(daemon.stop)
            sims.append(UpdateLog(daemon, args.containers))

        def stop_together() -> None:  # each agent may take a few seconds to end its blocking query
            for log in sims:
                if log.daemon.running():
                    os.kill(log.daemon.pid, signal.SIGTERM)

        stack.callback(stop_together)
        logs = [real_log, *sims]
        wait_for(lambda: all(log.enforced_at() for log in logs), timeout=60 + args.cells,
                 what="every agent's first cycle")
        print(f"started {args.cells} simulated cells ({args.containers} containers each) and a real cell "
              f"in {time.monotonic() - started:.0f} s", file=sys.stderr)
        rss = sum(_rss(log.daemon.pid) for log in sims) / max(1, len(sims))
        for edit in range(1, args.edits + 1):
            time.sleep(1.0 + (edit % 3))  # edits land at different points of the syncer's interval
            for log in logs:
                log.mark()
            plane.stub.write_groups(groups(BASE_PORT + edit, spaces))
            t_edit = time.time()
            wait_for(lambda: all(log.enforced_at() for log in logs), timeout=3 * args.syncer_interval + 60,
                     interval=0.2, what=f"edit {edit} to reach every cell")
            results["real cell"].append(real_log.enforced_at() - t_edit)  # type: ignore[operator]
            results["simulated cells"].extend(log.enforced_at() - t_edit for log in sims)  # type: ignore[operator]
            print(f"edit {edit}: real cell {results['real cell'][-1]:.2f} s, slowest simulated cell "
                  f"{max(results['simulated cells'][-len(sims):], default=0):.2f} s", file=sys.stderr)
        port = BASE_PORT + args.edits
        assert the_cell.probe("real-0", "tcp", DEST, port) == "ok", "the last edit's port must connect"
        assert the_cell.probe("real-0", "tcp", DEST, port - 1) != "ok", "the previous port must be refused"
    return {"syncer_interval_s": args.syncer_interval, "edits": args.edits, "simulated_cells": args.cells,
            "containers_per_simulated_cell": args.containers, "agent_rss_mb": round(rss / 1024, 1),
            "latency_s": {k: percentiles(v) for k, v in results.items() if v}}


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"\nASG edit -> enforced on every container (syncer interval {r['syncer_interval_s']} s, "
          f"{r['edits']} edits, {r['simulated_cells']} simulated cells x {r['containers_per_simulated_cell']} "
          f"containers + 1 real cell; agent RSS {r['agent_rss_mb']} MB each)")
    print(f"{'cells':<18}{'n':>6}{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}{'max s':>9}{'Go worst / our p99':>21}")
    for kind, p in r["latency_s"].items():
        print(f"{kind:<18}{p['n']:>6}{p['p50']:>9.2f}{p['p90']:>9.2f}{p['p99']:>9.2f}{p['max']:>9.2f}"
              f"{GO_WORST_CASE / p['p99']:>20.0f}x")
    print(f"Go design worst case: {GO_WORST_CASE:.0f} s (two 60 s polls); target: p99 <= 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--cells", type=int, default=100, help="simulated cells (agent processes)")
    parser.add_argument("--containers", type=int, default=20, help="containers per simulated cell")
    parser.add_argument("--syncer-interval", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        directory = Path(args.worker)
        sys.exit(_sim_worker(str(directory / "agent.json"), json.loads((directory / "handles.json").read_text())))
    if os.geteuid() != 0:
        sys.exit("bench/propagation.py: run as root (it builds network namespaces for the real cell)")
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
