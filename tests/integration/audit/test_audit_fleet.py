"""``dynamic-asgs audit`` against a real fleet: control plane + two cells, each with its agent.

While an ASG edit propagates, cell b's agent is stopped (SIGSTOP): the audit, run as a real
process, must say cell a is current and cell b unreachable (exit 3). Resumed but cut off
from the policy server (a TCP relay the test can cut), cell b answers yet lags: the audit
must name its container, the version it still enforces and the lag (exit 1, or 0 within a
generous ``--max-lag``). Once the relay is restored, everything is current (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from support.cell import Cell, cell
from support.daemons import PolicyServer, wait_for
from support.env import require_backend
from support.stack import Agent, ControlPlane, asg, control_plane, start_agent, store_add

TCP80 = {"protocol": "tcp", "destination": "198.18.0.10", "ports": "80"}
TCP443 = {"protocol": "tcp", "destination": "198.18.0.10", "ports": "443"}


class Relay:
    """A TCP relay to ``target`` on a loopback port; :meth:`cut` drops every connection until :meth:`mend`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def mend(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def audit(policy: PolicyServer, agents: dict[str, Agent], *extra: str) -> tuple[int, dict[str, Any]]:
    """Run ``dynamic-asgs audit --json`` as a process; its exit status and report."""
    pki = policy.pki.client
    cmd = [sys.executable, "-m", "dynamic_asgs.cli", "audit", "--policy-server-url", policy.url,
           "--ca-cert", str(pki.ca), "--client-cert", str(pki.cert), "--client-key", str(pki.key), "--json",
           *(f for name, a in agents.items() for f in ("--agent", f"{name}={a.status_url}")), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def cells_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["cells"]}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[ControlPlane, dict[str, Cell], dict[str, Agent], Relay]]:
    require_backend("legacy")
    with ExitStack() as stack:
        plane = stack.enter_context(control_plane(tmp_path, [asg("web", [TCP80], running=["s1"])]))
        parts = urlsplit(plane.policy.url)
        relay = Relay((parts.hostname or "127.0.0.1", parts.port or 0))
        stack.callback(relay.close)
        cells: dict[str, Cell] = {}
        agents: dict[str, Agent] = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            c = cells[name] = stack.enter_context(cell("legacy", tmp_path / name))
            store = tmp_path / name / "store.json"
            c.add_container(f"{name}1")
            c.hook(f"{name}1")
            store_add(store, c, f"{name}1", space="s1")
            url = {"policy_server_url": f"https://127.0.0.1:{relay.port}"} if name == "b" else {}
            agent = agents[name] = start_agent(tmp_path / name, c, plane.policy, store, name=f"agent-{name}", **url)
            stack.callback(agent.daemon.stop)
            stack.callback(os.kill, agent.daemon.pid, signal.SIGCONT)  # never leave a stopped process behind
        yield plane, cells, agents, relay


def test_audit_reports_a_stopped_and_a_lagging_agent(
        fleet: tuple[ControlPlane, dict[str, Cell], dict[str, Agent], Relay]) -> None:
    plane, _, agents, relay = fleet
    code, report = wait_for(lambda: (r := audit(plane.policy, agents))[0] == 0 and r, timeout=60,
                            what="both cells to enforce the first dataset")
    v1 = report["policy_server"]["dataset_version"]
    assert report["totals"] == {"cells": 2, "cells_unreachable": 0, "containers": 2, "current": 2, "lagging": 0,
                                "lagging_beyond_max_lag": 0}

    os.kill(agents["b"].daemon.pid, signal.SIGSTOP)
    edited_at = time.time()
    plane.stub.write_groups([asg("web", [TCP443], running=["s1"])])
    wait_for(lambda: (s := agents["a"].status())["dataset_version"] > v1 and
             s["containers"]["a1"]["dataset_version"] == s["dataset_version"], timeout=60,
             what="cell a to enforce the edit")

    code, report = audit(plane.policy, agents, "--timeout", "2")
    v2 = report["policy_server"]["dataset_version"]
    assert v2 > v1
    a, b = cells_of(report)["a"], cells_of(report)["b"]
    assert (a["state"], a["containers"], a["current"]) == ("ok", 1, 1)
    assert (b["state"], b["reachable"]) == ("UNREACHABLE", False) and "no answer within 2 s" in b["error"]
    assert code == 3, "no lag seen, but a cell could not be read"

    relay.cut()
    os.kill(agents["b"].daemon.pid, signal.SIGCONT)
    wait_for(lambda: agents["b"].status()["policy_server"]["error"], timeout=60,
             what="agent b to notice it cannot reach the policy server")
    code, report = audit(plane.policy, agents, "--timeout", "30")
    b = cells_of(report)["b"]
    assert code == 1 and b["state"] == "LAGGING" and b["agent_error"]
    assert report["totals"]["current"] == 1 and report["totals"]["lagging_beyond_max_lag"] == 1
    (lag,) = b["lagging"]
    assert lag["handle"] == "b1" and lag["app_guid"] == "app-b1" and lag["dataset_version"] == v1
    # The lag runs from when the current version appeared, which was after the edit.
    assert 0 < lag["lag_seconds"] <= time.time() - edited_at

    code, report = audit(plane.policy, agents, "--timeout", "30", "--max-lag", "3600")
    assert code == 0 and cells_of(report)["b"]["state"] == "catching-up"

    relay.mend()
    code, report = wait_for(lambda: (r := audit(plane.policy, agents, "--timeout", "30"))[0] == 0 and r, timeout=60,
                            what="cell b to catch up once it reaches the policy server again")
    assert report["totals"]["current"] == 2 and report["policy_server"]["dataset_version"] == v2
