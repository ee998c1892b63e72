"""Our agent enforcing ASGs beside silk, as in cf-deployment (issue 12), legacy and nft.

The cell runs the stand-in of silk's cni-wrapper-plugin (silk.cni) with silk's agent
at ``enable_asg_syncing: false`` (silk.agent: it answers 405, so the plugin inserts
Garden's static rules itself, after writing the store entry and the bare ``netout--<h>``),
and our real agent daemon reading silk's store, behind the real control plane. Garden's
static rules here grant a destination (D_STATIC) that no ASG grants: a container that can
reach it, or whose parent chain holds anything but our jump and REJECT, is the window the
issue describes (a revoked ASG open until the next kernel read).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from silk.agent import SilkAgent
from silk.cni import SilkCni
from silk.netrules import SilkCniConfig

from dynamic_asgs.asg import chains
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.stack import Agent, ControlPlane, asg, control_plane, start_agent

D_ASG, D_OTHER, D_STATIC = "198.18.7.1", "198.18.7.2", "198.18.7.3"
REJECT = "-j REJECT --reject-with icmp-port-unreachable"
#: What Garden passes as runtimeConfig.netOutRules: the ASGs it knew at create time, plus a stale one.
STATIC_RULES: list[dict[str, Any]] = [
    {"protocol": 1, "networks": [{"start": D_ASG, "end": D_ASG}], "ports": [{"start": 80, "end": 80}]},
    {"protocol": 1, "networks": [{"start": D_STATIC, "end": D_STATIC}], "ports": [{"start": 80, "end": 80}]},
]


def _groups(*, other: bool = False) -> list[dict[str, Any]]:
    rules = [{"protocol": "tcp", "destination": D_ASG, "ports": "80"}]
    if other:
        rules.append({"protocol": "tcp", "destination": D_OTHER, "ports": "80"})
    return [asg("web", rules, running=["s1"])]


def _meta(handle: str) -> dict[str, str]:
    return {"policy_group_id": f"app-{handle}", "app_id": f"app-{handle}", "space_id": "s1", "org_id": "o1",
            "container_workload": "app"}


@dataclass
class Foundation:
    cell: Cell
    plane: ControlPlane
    silk: SilkAgent
    tmp: Path

    @property
    def store(self) -> Path:
        return self.tmp / "container-metadata" / "store.json"

    def cni(self, *, step_delay: float = 0.0) -> SilkCni:
        config = SilkCniConfig(datastore=str(self.store), iptables_lock_file=str(self.cell.lock_file),
                               policy_agent_force_poll_address=self.silk.address)
        return SilkCni(self.cell, config, step_delay=step_delay)

    def agent(self, **overrides: Any) -> Agent:
        settings = {"new_container_settle_seconds": 10, "new_container_watch_seconds": 60,
                    "enable_ipv6": False, **overrides}
        return start_agent(self.tmp, self.cell, self.plane.policy, self.store, **settings)

    def parent(self, handle: str) -> list[str]:
        return self.cell.rules(4, chains.netout_chain_name(handle))

    def exact(self, handle: str) -> bool:
        """The parent holds our jump and the REJECT, nothing else (no static rule above or below)."""
        parent = chains.netout_chain_name(handle)
        rules = [re.sub(r' -m comment --comment "?dasg:[0-9a-f]+"?', "", r) for r in self.parent(handle)]
        return rules == [f"-A {parent} -j {chains.asg_chain_name(handle)}", f"-A {parent} {REJECT}"]

    def reach(self, handle: str) -> tuple[str, str, str]:
        return tuple(self.cell.probe(handle, "tcp", d, 80) for d in (D_ASG, D_OTHER, D_STATIC))  # type: ignore[return-value]

    def leftovers(self, handle: str) -> list[str]:
        """Lines of the filter table that still name one of ``handle``'s chains."""
        names = chains.chain_names(handle)
        return [line for line in self.cell.save(4).splitlines() if any(n in line.split() for n in names)]


@pytest.fixture(params=IPTABLES_BACKENDS)
def foundation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Foundation]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c, control_plane(tmp_path, _groups()) as plane, SilkAgent() as silk:
        c.add_destination("d", [D_ASG, D_OTHER, D_STATIC], tcp=[80])
        yield Foundation(c, plane, silk, tmp_path)


def test_a_new_container_gets_exactly_its_asgs_never_garden_s_static_rules(foundation: Foundation) -> None:
    agent = foundation.agent()
    try:
        result = foundation.cni().add("app-1", metadata=_meta("app-1"), net_out_rules=STATIC_RULES)
        done = time.monotonic()
        assert result.asg_status == 405 and len(result.static_rules) > 2  # silk inserted Garden's rules
        wait_for(lambda: foundation.exact("app-1"), timeout=15, what="our chains in place of the static rules")
        record("coexistence-static-rules-window", injected=1, violations=0, recoveries=[time.monotonic() - done])
        assert foundation.reach("app-1") == ("ok", "refused", "refused")
        assert agent.status()["containers"]["app-1"]["rule_count"] == 1
        cycles = [e for e in agent.daemon.events("cycle-done") if e["data"]["kind"] == "full"]
        assert len(cycles) <= 30  # a poll a second and reads on store changes: the loop never spins
    finally:
        agent.daemon.stop()


def test_rules_silk_inserts_after_our_write_are_replaced_within_the_watch(foundation: Foundation) -> None:
    # A slow CNI: the parent is bare for longer than the settle time, so the agent writes first and
    # silk's static rules then land above our jump; the watch finds and replaces them.
    agent = foundation.agent(new_container_settle_seconds=1)
    try:
        before_static: list[bool] = []

        def on_step(step: str) -> None:
            if step == "force-asgs":  # the next step inserts the static rules
                before_static.append(foundation.exact("app-1"))

        result = foundation.cni(step_delay=3).add("app-1", metadata=_meta("app-1"), net_out_rules=STATIC_RULES,
                                                  on_step=on_step)
        assert before_static == [True] and result.static_rules  # we wrote first, then silk inserted above us
        wait_for(lambda: foundation.exact("app-1"), timeout=15, what="the static rules replaced")
        assert foundation.reach("app-1") == ("ok", "refused", "refused")
    finally:
        agent.daemon.stop()


def test_an_asg_edit_reaches_a_running_container_and_a_del_leaves_nothing(foundation: Foundation) -> None:
    agent = foundation.agent()
    try:
        cni = foundation.cni()
        cni.add("app-1", metadata=_meta("app-1"), net_out_rules=STATIC_RULES)
        wait_for(lambda: foundation.exact("app-1"), timeout=15, what="the container enforced")
        foundation.plane.stub.write_groups(_groups(other=True))
        wait_for(lambda: foundation.reach("app-1") == ("ok", "ok", "refused"), timeout=30,
                 what="the edited ASG enforced without a restart")
        foundation.plane.stub.write_groups(_groups())
        wait_for(lambda: foundation.reach("app-1") == ("ok", "refused", "refused"), timeout=30,
                 what="the revoked rule gone")
        deleted = cni.delete("app-1")
        assert not deleted.errors and foundation.silk.calls[-1].status == 405  # orphan cleanup: silk's agent
        # silk never deletes asg-<h>: our agent's next cycle (on the store change, or the 1 s poll) does.
        wait_for(lambda: not foundation.leftovers("app-1"), timeout=10, what="the ASG chain swept")
        assert "app-1" not in agent.status()["containers"]
    finally:
        agent.daemon.stop()


def test_fifty_creates_under_asg_churn_leave_no_static_rule(foundation: Foundation) -> None:
    agent = foundation.agent()
    handles = [f"app-{i:02d}" for i in range(50)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:  # ASG edits all along: the agent is busy with full cycles while creates arrive
        other = False
        while not stop.wait(0.7):
            other = not other
            foundation.plane.stub.write_groups(_groups(other=other))

    def create(batch: list[str]) -> None:
        cni = foundation.cni()
        for handle in batch:
            try:
                cni.add(handle, metadata=_meta(handle), net_out_rules=STATIC_RULES)
            except Exception as exc:  # reported below
                errors.append(exc)

    churner = threading.Thread(target=churn)
    workers = [threading.Thread(target=create, args=(handles[i::5],)) for i in range(5)]
    try:
        churner.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        stop.set()
        churner.join()
        foundation.plane.stub.write_groups(_groups())
        assert not errors, errors
        wait_for(lambda: all(foundation.exact(h) for h in handles), timeout=60,
                 what="every container's parent holding only our jump and the REJECT")
        wait_for(lambda: all(foundation.reach(h) == ("ok", "refused", "refused") for h in handles[::10]),
                 timeout=30, what="the final ASGs, sampled by traffic")
        assert not [line for line in foundation.cell.save(4).splitlines()
                    if f"{D_STATIC}-{D_STATIC}" in line]  # not one static rule left anywhere
        assert set(handles) <= set(agent.status()["containers"])
        assert agent.daemon.proc.poll() is None
    finally:
        stop.set()
        agent.daemon.stop()
