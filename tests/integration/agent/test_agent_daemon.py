"""The cell daemon as operators run it: cc-stub -> syncer -> policy server -> agent over a real cell.

Every daemon is a real process; the cell, its containers and a destination are network
namespaces with real iptables (legacy), and connectivity is what proves enforcement.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.metadata_store import MetadataStore
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import require_backend
from support.ingress import ingress_server
from support.stack import ControlPlane, asg, control_plane, start_agent, store_add

DEST = "198.18.0.10"


def tcp(port: str, dest: str = DEST) -> dict[str, str]:
    return {"protocol": "tcp", "destination": dest, "ports": port}


@pytest.fixture
def the_cell(tmp_path: Path) -> Iterator[Cell]:
    require_backend("legacy")
    with cell("legacy", tmp_path) as c:
        c.add_destination("d", [DEST], tcp=[80, 443])
        yield c


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with control_plane(tmp_path, [asg("web", [tcp("80")], running=["s1"])]) as p:
        yield p


def add(c: Cell, store: Path, handle: str, space: str) -> None:
    """What the CNI does on create, minus the force call: container, parent chain, store entry."""
    c.add_container(handle)
    c.hook(handle)
    store_add(store, c, handle, space=space)


def table(c: Cell, version: int) -> list[str]:
    """The filter table's rules and chains, without the save's timestamp and counters."""
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in c.save(version).splitlines() if not line.startswith("#")]


def reaches(c: Cell, handle: str, port: int) -> bool:
    return c.probe(handle, "tcp", DEST, port) == "ok"


def test_an_asg_edit_reaches_running_containers_without_restarting_them(
        the_cell: Cell, plane: ControlPlane, tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    add(the_cell, store, "a", "s1")
    add(the_cell, store, "b", "s2")
    logs = ExitStack()
    ingress = logs.enter_context(ingress_server(tmp_path / "loggregator"))
    loggregator = {"loggregator_use_v2_api": True, "loggregator_api_port": ingress.port,
                   "loggregator_ca_path": str(ingress.pki.client.ca),
                   "loggregator_cert_path": str(ingress.pki.client.cert),
                   "loggregator_key_path": str(ingress.pki.client.key)}
    agent = start_agent(tmp_path, the_cell, plane.policy, store, loggregator=loggregator)
    try:
        wait_for(lambda: reaches(the_cell, "a", 80), what="a to reach port 80 (web is bound to s1)")
        assert not reaches(the_cell, "b", 80) and not reaches(the_cell, "a", 443)
        assert the_cell.probe("a", "open", DEST, 80, conn="kept") == "ok"  # an established connection
        before = agent.status()["dataset_version"]

        plane.stub.write_groups([asg("web", [tcp("443")], running=["s1", "s2"])])
        wait_for(lambda: reaches(the_cell, "b", 443) and reaches(the_cell, "a", 443), timeout=30,
                 what="the edited group to be enforced in a and b")
        assert not reaches(the_cell, "a", 80) and not reaches(the_cell, "b", 80)
        assert the_cell.probe("a", "send", DEST, 80, conn="kept") == "ok", "established traffic must survive"

        status = agent.status()
        assert status["dataset_version"] > before
        assert {h: v["dataset_version"] for h, v in status["containers"].items()} == \
            {"a": status["dataset_version"], "b": status["dataset_version"]}
        updated = {e["data"]["handle"] for e in agent.daemon.events("container-rules-updated")}
        assert updated == {"a", "b"}
        # The apps are told through loggregator v2 (gRPC, mutual TLS) when their rules change; a new
        # container's first ruleset is not news to it.
        wait_for(lambda: sorted(src for src, *_ in ingress.logs()) == ["app-a", "app-b"],
                 what="the update messages in the apps' log streams")
        assert {msg for _, _, msg, _ in ingress.logs()} == {"Security group rules were updated"}
    finally:
        agent.daemon.stop()
        logs.close()


def test_force_endpoints_apply_at_once(the_cell: Cell, plane: ControlPlane, tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    # The container is in the store but its parent chain is not there yet: the first cycle skips it.
    the_cell.add_container("c")
    store_add(store, the_cell, "c", space="s1")
    # A poll interval and no blocking query so long that only a forced sync can explain the effect.
    agent = start_agent(tmp_path, the_cell, plane.policy, store, asg_poll_interval=3600, asg_blocking_wait=0,
                        store_check_interval_ms=3_600_000)
    try:
        wait_for(lambda: agent.status()["last_cycle"], what="the agent's first cycle")
        assert not the_cell.exists(4, chains.asg_chain_name("c"))
        the_cell.hook("c")  # what the CNI does next: the parent chain (a lone REJECT), then the force call
        assert not reaches(the_cell, "c", 80)
        r = agent.force_container("c")
        assert r.status_code == 200, r.text
        assert reaches(the_cell, "c", 80), "a forced sync enforces before it answers"
        assert the_cell.exists(4, chains.asg_chain_name("c"))

        MetadataStore(store).delete("c")
        the_cell.unhook("c")
        r = agent.force_cleanup("c")
        assert r.status_code == 200, r.text
        assert not the_cell.exists(4, chains.asg_chain_name("c")) and not the_cell.exists(6, chains.asg_chain_name("c"))

        unknown = agent.force_container("ghost")
        assert unknown.status_code == 500 and "ghost" in unknown.text
    finally:
        agent.daemon.stop()


def test_with_asg_syncing_disabled_the_agent_leaves_iptables_alone(
        the_cell: Cell, plane: ControlPlane, tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    add(the_cell, store, "d", "s1")
    before = [table(the_cell, 4), table(the_cell, 6)]
    agent = start_agent(tmp_path, the_cell, plane.policy, store, enable_asg_syncing=False)
    try:
        assert agent.force_container("d").status_code == 405
        assert agent.force_cleanup("d").status_code == 405
        plane.stub.write_groups([asg("web", [tcp("443")], running=["s1"])])
        wait_for(lambda: plane.syncer.events("sync-complete")[1:], what="the syncer to store the edit")
        time.sleep(2.5)  # two agent poll intervals: with syncing on, the edit would be enforced by now
        assert [table(the_cell, 4), table(the_cell, 6)] == before
        assert not reaches(the_cell, "d", 80) and not reaches(the_cell, "d", 443)
    finally:
        agent.daemon.stop()
