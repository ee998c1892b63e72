"""The agent SIGKILLed at random points of its cycles under changing ASGs, restarted each time.

Invariants, checked by a concurrent ``iptables-save`` sampler (no lock, like any outside
reader) and after every restart:

* no container is ever seen with an incomplete ruleset (its parent is the CNI's lone
  REJECT, or it jumps with hash H to an ASG chain holding exactly ruleset H);
* after a restart the table converges to the wanted rulesets with no leftover chain and
  no duplicate rule.

100 kills use a forked, pre-imported process running the agent's Dataplane
(``_agent_zygote.py``; 50 per backend): a real interpreter start costs ~0.4 s of CPU on
this shared machine. 8 more kill the real ``vxlan-policy-agent`` daemon (control plane,
store, blocking queries and all). Half of the kills hit only the agent's pid (its
``iptables-restore`` child, if any, is orphaned and sees the payload end early), half its
whole process group (the child dies mid-read).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.asg.translate import ChainLayout, GroupIndex
from dynamic_asgs.iptables.render import content_hash
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import TableSampler, convergence_problems, expected_rulesets, record, ruleset_check
from support.plans import AGENT_LAYOUT, container, current_layout, groups_for, layout, plan, random_rules
from support.stack import asg, control_plane, start_agent, store_add

TESTS = Path(__file__).resolve().parents[1]
ZYGOTE = Path(__file__).with_name("_agent_zygote.py")
HANDLES = [f"k{i}" for i in range(8)]
KILLS_PER_BACKEND = 50


SPACES = {f"s{i}": random_rules(i, most=30) for i in range(12)}


def _digests(handle: str, index: int, space: str, idx: GroupIndex) -> dict[int, str | None]:
    p = plan(container(handle, space, index=index), idx)
    return {4: content_hash(p.v4), 6: content_hash(p.v6) if p.v6 is not None else None}


def _expected(handles: dict[str, int], spaces: dict[str, list[dict[str, Any]]]) -> dict[int, dict[str, int]]:
    idx = GroupIndex(groups_for(spaces))
    return expected_rulesets(plan(container(handle, space, index=index), idx)
                             for handle, index in handles.items() for space in spaces)


# The agent's default layout on both backends, silk's on one: containers of a space share its chain.
@pytest.fixture(params=[(backend, ChainLayout.SHARED) for backend in IPTABLES_BACKENDS]
                + [("legacy", ChainLayout.PER_CONTAINER)], ids=lambda p: "-".join(p))
def parents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cell]:
    """A cell whose containers exist only as CNI parents (no traffic needed: the table is what is checked);
    plans in the parameter's chain layout."""
    backend, chosen = request.param
    require_backend(backend)
    with cell(backend, tmp_path) as c, layout(chosen):
        for handle in HANDLES:
            for version, reject in ((4, "icmp-port-unreachable"), (6, "icmp6-port-unreachable")):
                parent = f"netout--{handle}"
                c.restore(version, [f":{parent} - [0:0]", f"-A {parent} -j REJECT --reject-with {reject}"])
        yield c


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_dataplane_sigkilled_100_times_never_exposes_a_partial_ruleset(parents: Cell) -> None:
    handles = {h: i + 1 for i, h in enumerate(HANDLES)}
    expected = _expected(handles, SPACES)
    idx = GroupIndex(groups_for(SPACES))
    spec = {"backend": parents.backend, "ns": parents.ns, "lock_file": str(parents.lock_file),
            "spaces": SPACES, "handles": handles, "layout": current_layout()}
    zygote = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.write(json.dumps(spec) + "\n")
    rnd = random.Random(f"sigkill-{parents.backend}")
    mid_tool = restarts_converged = 0
    recoveries: list[float] = []
    problems: list[str] = []
    try:
        with TableSampler(parents, ruleset_check(HANDLES, expected)) as sampler:
            for kill in range(KILLS_PER_BACKEND):
                target = {h: rnd.choice(sorted(SPACES)) for h in HANDLES}
                started = time.monotonic()
                zygote.stdin.write(json.dumps({"seed": kill, "target": target}) + "\n")
                zygote.stdin.flush()
                pid = converged = None
                while pid is None or converged is None:
                    message = json.loads(zygote.stdout.readline())
                    assert "error" not in message, f"the forked agent failed: {message}"
                    pid = message.get("pid", pid)
                    if "converged" in message:
                        converged = message
                assert converged["converged"] == pid and converged["ok"], converged
                recoveries.append(time.monotonic() - started)
                # Converged: the table is exactly the target, nothing left over, nothing twice.
                want = {h: _digests(h, handles[h], s, idx) for h, s in target.items()}
                for version in (4, 6):
                    found = convergence_problems(parents.save(version), version,
                                                 {h: d[version] for h, d in want.items()})
                    problems.extend(f"restart {kill}: {p}" for p in found)
                restarts_converged += 1
                os.kill(pid, signal.SIGUSR1)
                time.sleep(rnd.uniform(0.0, 0.25))  # a random point of the random cycles that follow
                tools = _children(pid)
                mid_tool += bool(tools)
                if kill % 2:
                    os.kill(pid, signal.SIGKILL)  # the agent alone: an orphaned restore sees EOF early
                    # A real restart takes >1 s; an orphan still streaming must not race the next agent.
                    wait_for(partial(_gone, tools), timeout=30, what="the orphaned iptables tool to exit")
                else:
                    os.killpg(pid, signal.SIGKILL)  # the agent and its iptables tool
                wait_for(partial(_gone, [pid]), timeout=30, what="the killed agent to die")
    finally:
        zygote.stdin.close()
        zygote.wait(30)
        zygote.stdout.close()
    problems.extend(sampler.problems)
    record("agent-sigkill-dataplane", injected=KILLS_PER_BACKEND, violations=len(problems), recoveries=recoveries,
           backend=parents.backend, samples=sampler.samples, kills_during_iptables_tool=mid_tool)
    assert not problems, problems[:5]
    assert restarts_converged == KILLS_PER_BACKEND
    assert sampler.samples >= 20, "the sampler must really run alongside the kills"
    assert mid_tool > 0, "some kills must land while an iptables tool runs, or the test proves little"


DAEMON_KILLS = 8
DEST = "198.18.0.10"
CELL_SPACES = ["s0", "s1", "s2"]


def _groups(choice: dict[str, int]) -> list[dict[str, Any]]:
    return [asg(f"for-{space}", SPACES[f"s{k}"], running=[space]) for space, k in choice.items()]


def test_the_real_agent_daemon_sigkilled_under_changing_asgs_converges_each_time(tmp_path: Path) -> None:
    require_backend("legacy")
    rnd = random.Random("daemon-kills")
    choice = {space: rnd.randrange(len(SPACES)) for space in CELL_SPACES}
    handles = {"a": "s0", "b": "s1", "c": "s2", "d": "s0"}
    problems: list[str] = []
    recoveries: list[float] = []
    with cell("legacy", tmp_path) as c, control_plane(tmp_path, _groups(choice)) as plane, layout(AGENT_LAYOUT):
        store = tmp_path / "store.json"
        for handle, space in handles.items():
            c.add_container(handle)
            c.hook(handle)
            store_add(store, c, handle, space=space)
        index = {h: c.containers[h].index for h in handles}
        expected = expected_rulesets(plan(container(handle, space, index=index[handle]),
                                          GroupIndex(groups_for({space: SPACES[f"s{k}"]})))
                                     for handle, space in handles.items() for k in range(len(SPACES)))

        def want(version: int) -> dict[str, str | None]:
            out = {}
            for handle, space in handles.items():
                p = plan(container(handle, space, index=index[handle]),
                         GroupIndex(groups_for({space: SPACES[f"s{choice[space]}"]})))
                fam = p.v4 if version == 4 else p.v6
                out[handle] = content_hash(fam) if fam is not None else None
            return out

        def converged() -> bool:
            return all(not convergence_problems(c.save(v), v, want(v)) for v in (4, 6))

        with TableSampler(c, ruleset_check(list(handles), expected)) as sampler:
            agent = start_agent(tmp_path, c, plane.policy, store, name="agent-0")
            try:
                wait_for(converged, timeout=60, what="the first agent to converge")
                for kill in range(1, DAEMON_KILLS + 1):
                    space = rnd.choice(CELL_SPACES)
                    choice[space] = (choice[space] + rnd.randrange(1, len(SPACES))) % len(SPACES)
                    plane.stub.write_groups(_groups(choice))  # an ASG change the agent is busy applying
                    time.sleep(rnd.uniform(0.2, 2.0))
                    if kill % 2:
                        os.kill(agent.daemon.pid, signal.SIGKILL)
                        agent.daemon.proc.wait(10)
                        time.sleep(0.5)  # what monit leaves between the death and the restart, at least
                    agent.daemon.kill_group()
                    agent.daemon.stop()
                    started = time.monotonic()
                    agent = start_agent(tmp_path, c, plane.policy, store, name=f"agent-{kill}")
                    wait_for(converged, timeout=60, what=f"agent {kill} to converge after the restart")
                    recoveries.append(time.monotonic() - started)
            finally:
                agent.daemon.stop()
        for version in (4, 6):
            problems.extend(convergence_problems(c.save(version), version, want(version)))
    problems.extend(sampler.problems)
    record("agent-sigkill-daemon", injected=DAEMON_KILLS, violations=len(problems), recoveries=recoveries,
           samples=sampler.samples)
    assert not problems, problems[:5]
    assert sampler.samples >= 10
