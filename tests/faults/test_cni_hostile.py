"""The CNI against colliding chain names and planted symlinks (issue 13, classes 2 and 8), legacy and nft.

The real chain ``ptp`` -> ``dynamic-asgs-cni`` on a namespace cell, ASG syncing off (the
agent answers 405, so the CNI writes Garden's static rules itself and nothing else writes
the table); real traffic from the containers.

* Chain names keep a handle's first 20 characters: a second container sharing them is
  refused at ADD (naming both), and neither that ADD nor the DEL the runtime then runs,
  nor the DEL of a colliding container some other CNI recorded, touches the first
  container's chains, hook or store entry: it stays restricted (before the fix, the DEL
  removed the first container's FORWARD hook and left it unfiltered).
* A symbolic link planted at the store's lock, version or data file, or at the iptables
  lock file, fails the CNI cleanly (CNI error JSON, no traceback) and its target is
  neither created nor changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.metadata_store import MetadataStore
from support.cell import UNDERLAY
from support.cni import CniCell, static_rules_cell
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.netns import ns_run

D1, D2 = "198.18.6.1", "198.18.6.2"
META = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app"}
FIRST, SECOND, THIRD = (f"0a1b2c3d-4e5f-6a7b-8c9d-00000000000{i}" for i in (1, 2, 3))


def rules_to(destination: str) -> dict[str, list[dict[str, object]]]:
    return {"netOutRules": [{"protocol": 1, "networks": [{"start": destination, "end": destination}],
                             "ports": [{"start": 80, "end": 80}]}]}


@pytest.fixture(params=IPTABLES_BACKENDS)
def cni_cell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CniCell]:
    require_backend(request.param)
    with static_rules_cell(request.param, tmp_path, [D1, D2]) as c:
        yield c


def state(c: CniCell) -> tuple[list[str], list[str], bytes]:
    """Both filter tables (``iptables -S``) and the store's bytes."""
    tables = [ns_run(c.cell.ns, [c.cell.tool(v), "-w", "-S"]).stdout.splitlines() for v in (4, 6)]
    return tables[0], tables[1], c.store.read_bytes()


def reach(c: CniCell, handle: str) -> tuple[str, str]:
    return c.cell.probe(handle, "tcp", D1, 80, timeout=5), c.cell.probe(handle, "tcp", D2, 80)


def test_a_colliding_add_is_refused_and_no_del_touches_the_first_container(cni_cell: CniCell) -> None:
    c = cni_cell
    assert chains.collide(FIRST, SECOND) and chains.collide(FIRST, THIRD)
    assert c.add(FIRST, metadata=META, runtime=rules_to(D1)).returncode == 0
    assert reach(c, FIRST) == ("ok", "refused")
    before = state(c)
    violations = 0

    refused = c.add(SECOND, metadata=META, runtime=rules_to(D2))
    assert refused.returncode == 1 and refused.output is not None and refused.output["code"] == 104
    assert FIRST in refused.output["details"] and SECOND in refused.output["details"]
    violations += state(c) != before or reach(c, FIRST) != ("ok", "refused")
    assert c.delete(SECOND).returncode == 0  # the runtime cleans up the failed ADD
    violations += state(c) != before or reach(c, FIRST) != ("ok", "refused")
    assert reach(c, SECOND) != ("ok", "ok")

    # A colliding container recorded and hooked by a CNI that checks nothing (silk's): its DEL
    # removes its own hook only, never the first container's.
    assert c.add(THIRD, metadata=META).returncode == 1  # ptp gave it an address; ours refused it
    third_ip = c.cell.containers[THIRD].ip
    MetadataStore(c.store).add(THIRD, third_ip, META)
    c.cell.restore(4, [f"-I FORWARD 1 -s {third_ip}/32 -o {UNDERLAY} -j {chains.netout_chain_name(THIRD)}"])
    assert c.delete(THIRD).returncode == 0
    after = state(c)
    violations += after[:2] != before[:2] or reach(c, FIRST) != ("ok", "refused")
    assert after[:2] == before[:2], "the first container's chains and hook must stay as they were"
    assert list(json.loads(after[2])) == [FIRST]
    assert reach(c, FIRST) == ("ok", "refused"), "the first container must stay restricted"
    assert c.run("CHECK", FIRST).returncode == 0
    record("cni-chain-collision", injected=3, bad_inputs=2, violations=violations, backend=c.cell.backend)
    assert violations == 0


@pytest.mark.parametrize("dangling", [False, True], ids=["existing-target", "dangling"])
def test_a_symlink_planted_at_a_file_the_cni_opens_fails_it_cleanly_and_spares_the_target(
        cni_cell: CniCell, tmp_path: Path, dangling: bool) -> None:
    c = cni_cell
    assert c.add("first", metadata=META, runtime=rules_to(D1)).returncode == 0
    paths = {"store.json_lock": (c.store.with_name("store.json_lock"), 102),
             "store.json_version": (c.store.with_name("store.json_version"), 102),
             "store.json": (c.store, 102), "iptables.lock": (c.cell.lock_file, 5)}
    tried = 0
    for name, (path, code) in paths.items():
        target = tmp_path / "outside" / name
        target.parent.mkdir(exist_ok=True)
        if not dangling:
            target.write_text("root:x:0:0:root:/root:/bin/bash\n")
            os.chmod(target, 0o644)
        seen = target.stat() if not dangling else None
        before = state(c)
        saved = path.read_bytes()
        path.unlink()
        path.symlink_to(target)
        try:
            # DEL removes the store entry before it reads the table (silk's order): with the iptables
            # lock refused, it fails after that and the runtime's retry finishes it; ADD undoes itself.
            for command in ("ADD", "DEL") if code == 102 else ("ADD",):
                tried += 1
                result = c.add(f"new-{tried}", metadata=META) if command == "ADD" else c.run("DEL", "first")
                assert result.returncode == 1 and result.output is not None, (name, command, result.output)
                assert result.output["code"] == code and "symbolic link: refused" in result.output["details"], \
                    (name, command, result.output)
                assert "Traceback" not in result.stderr
        finally:
            path.unlink()
            path.write_bytes(saved)
            os.chmod(path, 0o600)
        if dangling:
            assert not target.exists(), f"{name}: the link was followed to create its target"
        else:
            now = target.stat()
            assert target.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
            assert seen is not None and (now.st_mtime_ns, now.st_mode, now.st_size) == (
                seen.st_mtime_ns, seen.st_mode, seen.st_size), f"{name}: the target changed"
        assert state(c) == before, f"{name}: the table or the store changed"
        assert reach(c, "first") == ("ok", "refused")
    assert c.run("CHECK", "first").returncode == 0
    record("cni-symlinked-files", injected=tried, bad_inputs=len(paths), violations=0, backend=c.cell.backend)
