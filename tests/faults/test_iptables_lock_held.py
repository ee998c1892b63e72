"""The iptables lock (the configured lock file, flock) held by another process for longer than a cycle.

The real agent daemon, ``iptables_lock_timeout_seconds: 3``, 1 s polls, over a legacy cell:

* held for longer than the bound: the cycles give up at the bound and log the lock
  (``iptables-failed``), the table keeps the old complete ruleset, and the change is
  applied once the lock is free;
* held for longer than a cycle but within the bound: the cycle waits and applies right
  after the release, with no failure logged.

A concurrent sampler checks that no container is ever seen with an incomplete ruleset.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dynamic_asgs.asg.translate import GroupIndex
from dynamic_asgs.iptables.render import content_hash
from support.cell import cell
from support.daemons import wait_for
from support.env import require_backend
from support.faults import TableSampler, convergence_problems, expected_rulesets, record, ruleset_check
from support.plans import AGENT_LAYOUT, container, groups_for, layout, plan
from support.stack import asg, control_plane, start_agent, store_add

BOUND = 3
RULESETS: list[list[dict[str, Any]]] = [
    [{"protocol": "tcp", "destination": "10.1.0.0/16", "ports": "80"}],
    [{"protocol": "tcp", "destination": "10.2.0.0/16", "ports": "443,8443"}, {"protocol": "icmp",
                                                                              "destination": "10.2.0.1",
                                                                              "type": 0, "code": -1}],
    [{"protocol": "udp", "destination": "10.3.0.0-10.3.0.9", "ports": "53"},
     {"protocol": "tcp", "destination": "fd00:3::/64", "ports": "22"}],
]


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process (as silk's CNI or netmon would be) holding flock on ``path``; returns once it holds it."""
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            f"time.sleep({seconds})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def wait_released(holder: subprocess.Popen[str]) -> None:
    holder.wait(30)
    assert holder.stdout is not None
    holder.stdout.close()


def test_a_lock_held_past_a_cycle_delays_the_change_and_corrupts_nothing(tmp_path: Path) -> None:
    require_backend("legacy")
    with cell("legacy", tmp_path) as c, control_plane(tmp_path, [asg("g", RULESETS[0], running=["s1"])]) as plane:
        store = tmp_path / "store.json"
        c.add_container("a")
        c.hook("a")
        store_add(store, c, "a", space="s1")
        idx = c.containers["a"].index
        with layout(AGENT_LAYOUT):
            plans = [plan(container("a", "s1", index=idx), GroupIndex(groups_for({"s1": rules}))) for rules in RULESETS]
        expected = expected_rulesets(plans)

        def enforces(k: int) -> bool:
            p = plans[k]
            return all(not convergence_problems(c.save(v), v, {"a": content_hash(f) if (f := p.v4 if v == 4 else p.v6)
                                                                else None}) for v in (4, 6))

        recoveries: list[float] = []
        with TableSampler(c, ruleset_check(["a"], expected)) as sampler:
            agent = start_agent(tmp_path, c, plane.policy, store, iptables_lock_timeout_seconds=BOUND)
            try:
                wait_for(lambda: enforces(0), timeout=60, what="the first ruleset")

                # 1. Held for longer than the bound: failures at the bound, logged; old rules stay whole.
                holder = hold_lock(c.lock_file, 2 * BOUND + 1)
                plane.stub.write_groups([asg("g", RULESETS[1], running=["s1"])])
                failed = wait_for(lambda: [e for e in agent.daemon.events("iptables-failed")
                                           if "lock held by another process" in str(e)],
                                  timeout=4 * BOUND, what="the agent to give up on the lock at its bound")
                assert str(c.lock_file) in str(failed[0])
                assert holder.poll() is None and enforces(0), "while the lock is held, nothing may change"
                wait_released(holder)
                released = time.monotonic()
                wait_for(lambda: enforces(1), timeout=30, what="the change once the lock is free")
                recoveries.append(time.monotonic() - released)

                # 2. Held past a cycle but within the bound: the cycle waits and applies right after.
                failures = len(agent.daemon.events("iptables-failed"))
                holder = hold_lock(c.lock_file, BOUND - 1)
                plane.stub.write_groups([asg("g", RULESETS[2], running=["s1"])])
                time.sleep(1.2)  # more than a poll interval with the lock held
                assert holder.poll() is None and enforces(1)
                wait_released(holder)
                released = time.monotonic()
                wait_for(lambda: enforces(2), timeout=30, what="the change right after the release")
                recoveries.append(time.monotonic() - released)
                assert len(agent.daemon.events("iptables-failed")) == failures, "a wait within the bound is no failure"
                assert agent.daemon.running()
            finally:
                agent.daemon.stop()
    record("iptables-lock-held", injected=2, violations=len(sampler.problems), recoveries=recoveries,
           samples=sampler.samples)
    assert not sampler.problems, sampler.problems[:5]
    assert sampler.samples >= 10
