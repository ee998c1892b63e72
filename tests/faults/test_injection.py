"""Injection into restore text through container values (issue 13, class 1), legacy and nft.

The attack: a handle with a line break after its 20th character. Chain names keep only the
first 20 characters, so they stay clean, but with outbound connection limiting on the whole
handle is the ``--hashlimit-name``; before the fix a double-quoted argument carried the line
break into ``iptables-restore``, and the rest of the handle became a rule of its own::

    aaaaaaaaaaaaaaaaaaaa
    -I FORWARD 1 -s <neighbour> -j ACCEPT -m comment --comment x

(the renderer's closing quote then opens a quote that swallows the end of the line), which
let the neighbour reach a destination no ASG allows. It is tried here with variations (CR,
NUL, tab, quotes, backslashes, over-long values, other fields) through both ways in:

* the real CNI (``dynamic-asgs-cni``) with ASG syncing off (405: the CNI writes Garden's
  static rules itself, connection limiting on), as a runtime would invoke it;
* a store entry written by hand (as a CNI that checks nothing would write it), read by the
  real agent with connection limiting on.

What the user cares about: FORWARD and every other chain stay exactly as they were, the
restricted neighbour still reaches its allowed destination and is still refused the other,
the daemon stays up and reports what it refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cell import Cell, cell
from support.cni import CniCell, invoke, plugin, static_rules_cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.netns import ns_run
from support.stack import Agent, asg, control_plane, start_agent, store_add

ALLOWED, FORBIDDEN = "198.18.5.1", "198.18.5.2"
LIMIT = {"limit": True, "rate_per_sec": 100, "burst": 1000}
META = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app"}
GARDEN_RULES = [{"protocol": 1, "networks": [{"start": ALLOWED, "end": ALLOWED}], "ports": [{"start": 80, "end": 80}]}]
PREFIX = "a" * 20  # chain names keep these 20 characters


def handles(neighbour_ip: str) -> dict[str, str]:
    """Hostile handles, each named; the first is the attack that worked before the fix."""
    grant = f"-I FORWARD 1 -s {neighbour_ip} -j ACCEPT"
    return {
        "newline": f"{PREFIX}\n{grant} -m comment --comment x",
        "crlf": f"{PREFIX}\r\n{grant} -m comment --comment x",
        "cr": f"{PREFIX}\r{grant}",
        "tab": f"{PREFIX}\t{grant}",
        "space": f"{PREFIX} -j ACCEPT",
        "quote": f'{PREFIX}" -j ACCEPT "',
        "backslash-quote": f'{PREFIX}\\" -j ACCEPT \\"',
        "hash": f"{PREFIX}#",
        "leading-dash": f"-{PREFIX}",
        "non-ascii": f"{PREFIX}\u2028{grant}",
        "over-long": PREFIX * 10,
    }


def table_rules(c: Cell, version: int) -> list[str]:
    """Every chain and rule of the filter table (``iptables -S``: no counters, no dates)."""
    return ns_run(c.ns, [c.tool(version), "-w", "-S"]).stdout.splitlines()


def restricted(c: Cell, handle: str) -> bool:
    return c.probe(handle, "tcp", ALLOWED, 80, timeout=5) == "ok" and c.probe(handle, "tcp", FORBIDDEN, 80) == "refused"


# -- through the CNI --------------------------------------------------------------------------------


@pytest.fixture(params=IPTABLES_BACKENDS)
def cni_cell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CniCell]:
    """A cell whose CNI writes Garden's static rules itself (the agent answers 405), connection limiting on."""
    require_backend(request.param)
    with static_rules_cell(request.param, tmp_path, [ALLOWED, FORBIDDEN], outbound_connections=LIMIT) as c:
        yield c


def test_a_hostile_container_id_through_the_cni_touches_nothing(cni_cell: CniCell) -> None:
    c = cni_cell
    for handle in ("neighbour", "attacker"):
        added = c.add(handle, metadata=META, runtime={"netOutRules": GARDEN_RULES})
        assert added.returncode == 0, added.output
    assert restricted(c.cell, "neighbour")
    neighbour_ip = c.cell.containers["neighbour"].ip
    before = (table_rules(c.cell, 4), table_rules(c.cell, 6), c.store.read_bytes())
    conf = {**c.config(), "prevResult": c.ptp_results["attacker"], "metadata": META,
            "runtimeConfig": {"netOutRules": GARDEN_RULES}}
    tried = violations = 0
    for name, handle in handles(f"{neighbour_ip}/32").items():
        for command in ("ADD", "CHECK", "DEL"):
            tried += 1
            result = invoke(plugin(), command, handle, conf, netns=f"/var/run/netns/{c.netns_of['attacker']}")
            after = (table_rules(c.cell, 4), table_rules(c.cell, 6), c.store.read_bytes())
            ok = after == before and restricted(c.cell, "neighbour")
            violations += not ok
            assert ok, f"{name} {command}: the table or the store changed, or the neighbour reaches what no rule allows"
            assert result.returncode == 1 and result.output is not None, (name, command, result.output)
            assert (result.output["code"], result.output["msg"]) == (4, "invalid CNI_CONTAINERID"), result.output
    record("injection-cni-container-id", injected=tried, bad_inputs=len(handles("x")), violations=violations,
           backend=c.cell.backend)


@pytest.mark.parametrize("field", ["space_id", "policy_group_id", "container_workload", "ports", "log_config"])
def test_hostile_metadata_through_the_cni_touches_nothing(cni_cell: CniCell, field: str) -> None:
    c = cni_cell
    assert c.add("neighbour", metadata=META, runtime={"netOutRules": GARDEN_RULES}).returncode == 0
    before = (table_rules(c.cell, 4), c.store.read_bytes())
    values = ["x\n-A FORWARD -j ACCEPT", "x\r\n*nat", "x\x00", "x\ty", 'x" -j ACCEPT "', "x" * 5000]
    if field == "log_config":
        values = [json.dumps({"guid": v}) for v in values] + ["[" * 50_000 + "]" * 50_000]
    for i, value in enumerate(values):
        conf = {**c.config(), "prevResult": c.ptp_results["neighbour"], "metadata": {**META, field: value},
                "runtimeConfig": {"netOutRules": GARDEN_RULES}}
        result = invoke(plugin(), "ADD", f"meta-{i}", conf, netns=f"/var/run/netns/{c.netns_of['neighbour']}")
        assert result.returncode == 1 and result.output is not None and result.output["code"] == 7, result.output
        assert f"metadata.{field}" in result.output["details"]
        assert (table_rules(c.cell, 4), c.store.read_bytes()) == before
    assert restricted(c.cell, "neighbour")
    record(f"injection-cni-metadata-{field}", injected=len(values), bad_inputs=len(values), violations=0,
           backend=c.cell.backend)


# -- through the store, read by the real agent -------------------------------------------------------


def hand_write(store: Path, key: str, entry: Any) -> None:
    """Add ``entry`` under ``key`` as a CNI that checks nothing would, and bump the version."""
    pool = json.loads(store.read_text())
    pool[key] = entry
    store.write_text(json.dumps(pool))
    version = Path(f"{store}_version")
    version.write_text(str(int(version.read_text()) + 1))


def store_entries(neighbour_ip: str, attacker_ip: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Named (key, entry) pairs: hostile handles, and hostile values under a clean handle."""
    meta = {"policy_group_id": "app-x", "space_id": "s1", "container_workload": "app"}
    out: dict[str, tuple[str, dict[str, Any]]] = {
        f"handle-{name}": (h, {"handle": h, "ip": attacker_ip, "metadata": meta})
        for name, h in handles(neighbour_ip).items()}
    out["handle-nul"] = (f"{PREFIX}\x00", {"handle": f"{PREFIX}\x00", "ip": attacker_ip, "metadata": meta})
    out["handle-megabyte"] = ("b" * 1_000_000, {"handle": "b" * 1_000_000, "ip": attacker_ip, "metadata": meta})
    out["key-differs"] = (PREFIX, {"handle": handles(neighbour_ip)["newline"], "ip": attacker_ip, "metadata": meta})
    for field, value in (("space_id", "s1\n-A FORWARD -j ACCEPT"), ("space_id", "s1,s2"),
                         ("container_workload", "app\nCOMMIT"), ("policy_group_id", 'x" -j ACCEPT "'),
                         ("ports", "8080\n-A FORWARD -j ACCEPT"), ("log_config", '{"guid": "g\\n-A FORWARD"}')):
        out[f"{field}-{len(out)}"] = (PREFIX, {"handle": PREFIX, "ip": attacker_ip, "metadata": {**meta, field: value}})
    out["ipv6-zone"] = (PREFIX, {"handle": PREFIX, "ip": attacker_ip, "ipv6": "fe80::1%\n-A FORWARD -j ACCEPT",
                                 "metadata": meta})
    return out


def invalid(agent: Agent) -> int:
    return int(agent.status()["totals"]["invalid_store_entries"])


def read_in(agent: Agent) -> bool:
    """Whether the agent has read the hostile entry (refused it or, without the fix, taken it)."""
    totals = agent.status()["totals"]
    return bool(totals["invalid_store_entries"] == 1 or totals["store_entries"] > 1)


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS)
def test_a_hostile_store_entry_read_by_the_agent_touches_nothing(backend: str, tmp_path: Path) -> None:
    require_backend(backend)
    groups = [asg("to-allowed", [{"protocol": "tcp", "destination": ALLOWED, "ports": "80"}], running=["s1"])]
    with cell(backend, tmp_path) as c, control_plane(tmp_path, groups) as plane:
        c.add_destination("d", [ALLOWED, FORBIDDEN], tcp=[80])
        store = tmp_path / "store.json"
        # The attacker's container: its parent chain (netout--aaaa...) exists, as the CNI made it.
        for handle in ("neighbour", PREFIX):
            c.add_container(handle)
            c.hook(handle)
        store_add(store, c, "neighbour", space="s1")
        agent = start_agent(tmp_path, c, plane.policy, store, outbound_connections=LIMIT)
        violations = 0
        try:
            wait_for(lambda: restricted(c, "neighbour"), timeout=30, what="the neighbour enforced")
            neighbour_ip, attacker_ip = c.containers["neighbour"].ip, c.containers[PREFIX].ip
            entries = store_entries(f"{neighbour_ip}/32", attacker_ip)
            clean = store.read_text()
            before = (table_rules(c, 4), table_rules(c, 6))
            for name, (key, entry) in entries.items():
                hand_write(store, key, entry)
                wait_for(lambda: read_in(agent), timeout=30, what=f"{name}: the entry read")
                cycles = len(agent.daemon.events("cycle-done"))
                wait_for(lambda: len(agent.daemon.events("cycle-done")) >= cycles + 2, timeout=30,  # noqa: B023
                         what=f"{name}: two more cycles")
                ok = (table_rules(c, 4), table_rules(c, 6)) == before and restricted(c, "neighbour")
                violations += not ok
                assert ok, f"{name}: the table changed or the neighbour reaches what no rule allows"
                assert agent.daemon.running(), f"{name}: the agent died"
                assert invalid(agent) == 1 and set(agent.status()["containers"]) == {"neighbour"}, name
                store.write_text(clean)
                Path(f"{store}_version").write_text(str(int(Path(f"{store}_version").read_text()) + 1))
                wait_for(lambda: invalid(agent) == 0, timeout=30, what=f"{name}: the clean store read")
            assert agent.daemon.events("store-entry-invalid")
        finally:
            agent.daemon.stop()
    record("injection-store-entry", injected=len(entries), bad_inputs=len(entries), violations=violations,
           backend=backend)
