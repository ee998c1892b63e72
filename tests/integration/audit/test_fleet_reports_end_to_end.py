"""The fleet audit from the policy server alone: cc-stub, syncer, policy server, real agents on namespace cells.

Two cells report to the policy server over mutual TLS. An ASG edit cuts the egress of one
app: ``dynamic-asgs audit --wait-for current`` returns when the last container enforces the
edit; the cut app's refused connections make its agent tell it, through the real loggregator
v2 ingress, that its security groups changed; the audit lists it; an app whose rules the
edit did not touch hears nothing, however much of its egress is refused. A killed agent
turns its cell silent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.agent.denials import ROSE_MESSAGE
from support.cell import Cell, cell
from support.daemons import PolicyServer, wait_for
from support.env import require_backend
from support.ingress import Ingress, ingress_server
from support.stack import Agent, ControlPlane, asg, control_plane, start_agent, store_add

DEST = "198.18.0.10"
TCP80 = {"protocol": "tcp", "destination": DEST, "ports": "80"}
TCP443 = {"protocol": "tcp", "destination": DEST, "ports": "443"}
ROSE_PREFIX = ROSE_MESSAGE.split("{", 1)[0]


@dataclass
class Fleet:
    plane: ControlPlane
    cells: dict[str, Cell]
    agents: dict[str, Agent]
    ingress: Ingress


def audit(policy: PolicyServer, *extra: str) -> tuple[int, dict[str, Any]]:
    """``dynamic-asgs audit --json`` from the policy server alone, as a process: exit status and view."""
    pki = policy.pki.client
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "audit", "--policy-server-url", policy.url,
                           "--ca-cert", str(pki.ca), "--client-cert", str(pki.cert), "--client-key", str(pki.key),
                           "--json", *extra], capture_output=True, text=True, timeout=180)
    assert "Traceback" not in proc.stderr and proc.stdout, (proc.returncode, proc.stderr)
    return proc.returncode, json.loads(proc.stdout)


def states(view: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["state"] for c in view["cells"]}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require_backend("legacy")
    with ExitStack() as stack:
        groups = [asg("web", [TCP80], running=["s1"]), asg("calm", [TCP80], running=["s2"])]
        plane = stack.enter_context(control_plane(tmp_path, groups, policy={
            "silent_after_intervals": 2, "report_flush_interval_ms": 100}))
        ingress = stack.enter_context(ingress_server(tmp_path / "loggregator"))
        loggregator = {"loggregator_use_v2_api": True, "loggregator_api_port": ingress.port,
                       "loggregator_ca_path": str(ingress.pki.client.ca),
                       "loggregator_cert_path": str(ingress.pki.client.cert),
                       "loggregator_key_path": str(ingress.pki.client.key)}
        cells: dict[str, Cell] = {}
        agents: dict[str, Agent] = {}
        placement = {"a": [("cut", "s1"), ("calm", "s2")], "b": [("b1", "s1")]}
        for index, (name, containers) in enumerate(placement.items()):
            (tmp_path / name).mkdir()
            c = cells[name] = stack.enter_context(cell("legacy", tmp_path / name))
            c.add_destination("d", [DEST], tcp=[80, 443])
            store = tmp_path / name / "store.json"
            for handle, space in containers:
                c.add_container(handle)
                c.hook(handle)
                store_add(store, c, handle, space=space)
            agent = agents[name] = start_agent(
                tmp_path / name, c, plane.policy, store, name=f"agent-{name}", loggregator=loggregator,
                cell_id=f"0c4e7a1b-000{index}", cell_name=f"diego-cell/{index}", report_interval_seconds=5,
                denied_egress_check_interval_seconds=1, denied_egress_window_seconds=300)
            stack.callback(agent.daemon.stop)
        yield Fleet(plane, cells, agents, ingress)


def test_an_edit_is_audited_from_the_policy_server_and_its_breakage_told_to_the_app(fleet: Fleet) -> None:
    a, policy = fleet.cells["a"], fleet.plane.policy
    code, view = audit(policy, "--wait-for", "current", "--timeout", "60")
    assert code == 0, view
    assert states(view) == {"diego-cell/0": "current", "diego-cell/1": "current"}
    assert view["totals"]["containers"]["current"] == 3
    v1 = view["dataset"]["version"]
    assert a.probe("cut", "tcp", DEST, 80) == "ok"

    edited_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    time.sleep(1)  # --since has whole seconds
    fleet.plane.stub.write_groups([asg("web", [TCP443], running=["s1"]), asg("calm", [TCP80], running=["s2"])])
    code, view = audit(policy, "--wait-for", "current", "--since", edited_at, "--timeout", "60")
    assert code == 0, view
    v2 = view["dataset"]["version"]
    assert v2 > v1 and states(view) == {"diego-cell/0": "current", "diego-cell/1": "current"}
    for agent in fleet.agents.values():  # when the audit returns, the last container enforces the edit
        status = agent.status()
        assert {h: c["dataset_version"] for h, c in status["containers"].items()} == \
            dict.fromkeys(status["containers"], v2)

    # The edit took port 80 from "cut"; "calm" keeps its rules, and is refused on 443 as it always was.
    for _ in range(8):
        assert a.probe("cut", "tcp", DEST, 80, timeout=0.5) == "refused"
        assert a.probe("calm", "tcp", DEST, 443, timeout=0.5) == "refused"
    wait_for(lambda: any(msg.startswith(ROSE_PREFIX) for _, _, msg, _ in fleet.ingress.logs()), timeout=30,
             what="the cut app to be told why its connections fail")
    rose = [(source, msg) for source, _, msg, _ in fleet.ingress.logs() if msg.startswith(ROSE_PREFIX)]
    assert len(rose) == 1 and rose[0][0] == "app-cut" and f"(dataset version {v2})" in rose[0][1]

    def cut_listed() -> dict[str, Any] | None:
        _, view = audit(policy, "--app", "app-cut")
        return view if view["denials_rose"] else None

    view = wait_for(cut_listed, timeout=30, what="the audit to list the app whose denials rose")
    assert [(d["app"], d["cell_name"], d["version"]) for d in view["denials_rose"]] == [("app-cut", "diego-cell/0",
                                                                                         v2)]
    assert view["denials_rose"][0]["denied_packets"] >= 8
    assert [(e["app"], e["cell_name"], e["version"], e["containers"]) for e in view["enforcement"]] == \
        [("app-cut", "diego-cell/0", v2, 1)]
    status = fleet.agents["a"].status()["containers"]
    assert status["calm"]["denied_packets"] >= 8 and status["calm"]["denials_rose_at"] is None
    assert "asg_denied_egress_packets_total" in fleet.agents["a"].metrics()

    fleet.agents["b"].daemon.stop()
    code, view = wait_for(lambda: (r := audit(policy))[1]["totals"]["cells"]["silent"] == 1 and r, timeout=60,
                          what="the killed agent's cell to turn silent")
    assert states(view) == {"diego-cell/0": "current", "diego-cell/1": "silent"}
    assert code == 3, "every reporting cell is current, but one is silent"
    assert not any(source == "app-calm" for source, _, msg, _ in fleet.ingress.logs() if msg.startswith(ROSE_PREFIX))
