"""The chain ptp -> dynamic-asgs-cni against a stand-in agent: 405 fallback, agent failures, bad input.

The stand-in is the agent's own force server (real status codes and bodies) with
scripted sync behaviour; the cell is a namespace with legacy iptables, and real
traffic from the container checks that static rules are enforced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import StandInAgent
from dynamic_asgs.asg import chains
from support.cell import Cell
from support.cni import CniCell, invoke, plugin

GARDEN_RULES = [
    {"protocol": 1, "networks": [{"start": "198.18.1.1", "end": "198.18.1.1"}],
     "ports": [{"start": 8080, "end": 8080}]},
    {"protocol": 2, "networks": [{"start": "198.18.1.0", "end": "198.18.1.255"}], "ports": [{"start": 53, "end": 53}],
     "log": True},
]
META = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app"}
StandIn = Callable[..., tuple[StandInAgent, str]]


def left_behind(c: CniCell, handle: str) -> list[str]:
    """Every trace of ``handle`` in the cell's table and the store."""
    saved = c.cell.save(4)
    names = [chains.netout_chain_name(handle), chains.asg_chain_name(handle), chains.log_chain_name(handle)]
    found = [line for line in saved.splitlines() if any(n in line for n in names)]
    return found + ([f"store entry {handle}"] if handle in c.store_entries() else [])


def test_405_installs_the_static_rules_and_they_are_enforced(the_cell: Cell, tmp_path: Path,
                                                              stand_in: StandIn) -> None:
    agent, address = stand_in(enabled=False)
    c = CniCell(the_cell, tmp_path / "cni", address, {"iptables_asg_logging": True})
    the_cell.add_destination("web", ["198.18.1.1"], tcp=[8080, 9090], udp=[53])
    h = "static-1"
    result = c.add(h, metadata=META, runtime={"netOutRules": GARDEN_RULES})
    assert result.returncode == 0, result.output
    assert result.output == {**c.ptp_results[h], "cniVersion": "1.0.0"}
    assert c.store_entries()[h]["metadata"] == META
    asg, log = chains.asg_chain_name(h), chains.log_chain_name(h)
    assert the_cell.rules(4, chains.netout_chain_name(h))[0].endswith(f"-j {asg}")
    body = the_cell.rules(4, asg)
    # iptables_asg_logging: every accept goes through the log chain (as the agent writes it)
    assert any("--dst-range 198.18.1.1-198.18.1.1 -m tcp --dport 8080" in r and f"-g {log}" in r for r in body)
    assert any("-p udp" in r and "--dport 53" in r and f"-g {log}" in r for r in body)
    assert the_cell.exists(4, log)
    assert the_cell.probe(h, "tcp", "198.18.1.1", 8080, timeout=5) == "ok"
    assert the_cell.probe(h, "tcp", "198.18.1.1", 9090) == "refused"
    assert the_cell.probe(h, "udp", "198.18.1.1", 53, timeout=5) == "ok"
    assert c.run("CHECK", h).returncode == 0

    gone = c.delete(h)
    assert gone.returncode == 0 and gone.output is None, gone.output
    assert agent.cleaned == []  # syncing disabled: the force server answers 405 without calling
    assert left_behind(c, h) == []


def test_an_agent_failure_fails_add_with_its_message_and_leaves_nothing(the_cell: Cell, tmp_path: Path,
                                                                        stand_in: StandIn) -> None:
    agent, address = stand_in(fail_sync="policy server unavailable")
    c = CniCell(the_cell, tmp_path / "cni", address, {"iptables_asg_logging": True})
    h = "fails-1"
    result = c.add(h, metadata=META)
    assert result.returncode != 0 and result.output is not None
    assert result.output["code"] == 100
    assert "asg sync returned 500" in result.output["msg"]
    assert f"failed to update asgs for container {h}: policy server unavailable" in result.output["msg"]
    assert agent.synced == [h]
    assert left_behind(c, h) == []
    assert f"-j {chains.netout_chain_name(h)}" not in the_cell.save(4)


def test_an_unreachable_agent_fails_add_and_leaves_nothing(the_cell: Cell, tmp_path: Path) -> None:
    c = CniCell(the_cell, tmp_path / "cni", "127.0.0.1:9")  # discard port: nothing listens
    result = c.add("unreach-1", metadata=META)
    assert result.returncode != 0 and result.output is not None and result.output["code"] == 100
    assert "cannot reach the policy agent" in result.output["msg"]
    assert left_behind(c, "unreach-1") == []


def test_del_is_idempotent_and_check_reports_what_is_missing(the_cell: Cell, tmp_path: Path,
                                                             stand_in: StandIn) -> None:
    agent, address = stand_in()
    c = CniCell(the_cell, tmp_path / "cni", address)
    h = "idem-1"
    assert c.add(h, metadata=META).returncode == 0
    assert agent.synced == [h]
    assert c.run("CHECK", h).returncode == 0
    for _ in range(2):
        out = c.run("DEL", h)
        assert out.returncode == 0 and out.output is None, out.output
    assert left_behind(c, h) == []
    check = c.run("CHECK", h)
    assert check.returncode != 0 and check.output is not None and check.output["code"] == 103
    assert "not in the metadata store" in check.output["details"]
    unknown = c.run("DEL", "never-added")
    assert unknown.returncode == 0, unknown.output


def test_bad_input_is_answered_with_cni_error_json(the_cell: Cell, tmp_path: Path, stand_in: StandIn) -> None:
    _, address = stand_in()
    c = CniCell(the_cell, tmp_path / "cni", address)
    env: dict[str, Any] = {"netns": "/var/run/netns/none"}
    garbage = invoke(plugin(), "ADD", "x", b"\x00not json{", **env)
    assert garbage.returncode != 0 and garbage.output is not None and garbage.output["code"] == 6
    assert "Traceback" not in garbage.stderr
    no_prev = invoke(plugin(), "ADD", "x", c.config(), **env)
    assert no_prev.returncode != 0 and no_prev.output is not None
    assert no_prev.output == {"cniVersion": "1.0.0", "code": 7, "msg": "missing prevResult",
                              "details": no_prev.output["details"]}
    version = invoke(plugin(), "VERSION", "", {"cniVersion": "1.0.0"})
    assert version.returncode == 0 and version.output is not None
    assert "1.0.0" in version.output["supportedVersions"]
    assert left_behind(c, "x") == []
