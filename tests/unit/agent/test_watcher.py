"""The blocking-query watcher: a changed answer or a newer dataset version wakes the agent."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.agent.converger import Converger
from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.agent.policy_client import Result
from dynamic_asgs.agent.watcher import PolicyWatcher
from dynamic_asgs.asg.parse import parse_groups_document
from dynamic_asgs.asg.translate import ChainSettings
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore, StoreView
from support.daemons import wait_for
from support.plans import log_events


class BlockingPolicy:
    """Answers like the policy server: the ETag names the cell's answer; ``wait`` holds a 304."""

    def __init__(self, *, etags: bool = True) -> None:
        self.rules: dict[str, list[dict[str, Any]]] = {"s1": []}
        self.version = 1
        self.etags = etags
        self._changed = threading.Condition()

    def edit(self, space: str, rules: list[dict[str, Any]]) -> None:
        with self._changed:
            self.rules[space] = rules
            self.version += 1
            self._changed.notify_all()

    def _tag(self, spaces: frozenset[str]) -> str:
        return json.dumps({s: self.rules.get(s) for s in sorted(spaces)})

    def fetch(self, space_guids: Iterable[str], *, etag: str | None = None, wait: float | None = None) -> Result:
        spaces = frozenset(space_guids)
        with self._changed:
            if etag is not None and wait:
                self._changed.wait_for(lambda: self._tag(spaces) != etag, timeout=wait)
            tag = self._tag(spaces)
            if etag == tag:
                return Result(etag=tag, dataset_version=self.version, not_modified=True)
            doc = {"security_groups": [{"guid": f"sg-{s}", "name": s, "rules": json.dumps(r),
                                        "running_space_guids": [s]} for s, r in self.rules.items() if s in spaces]}
            return Result(groups=parse_groups_document(doc), etag=tag if self.etags else None,
                          dataset_version=self.version)


class Agent:
    def __init__(self, tmp: Path, policy: BlockingPolicy, wait: float) -> None:
        store = MetadataStore(tmp / "store.json")
        runner = FakeRunner(4)
        runner.table.create_chain("netout--a", ["-j REJECT --reject-with icmp-port-unreachable"])
        store.add("a", "10.255.0.2", {"policy_group_id": "app-a", "space_id": "s1", "container_workload": "app"})
        self.log = io.StringIO()
        logger = Logger("agent", stream=self.log, level="debug")
        self.converger = Converger(view=StoreView(store, logger), policy=policy,
                                   dataplane=Dataplane(runners={4: runner}, logger=logger),
                                   settings=ChainSettings(), logger=logger, metrics=AgentMetrics())
        self.wakes = threading.Semaphore(0)
        self.converger.cycle()
        self.watcher = PolicyWatcher(policy=policy, converger=self.converger, wait=wait,
                                     on_change=self.wakes.release, logger=logger)

    def woken(self, timeout: float = 10.0) -> bool:
        return self.wakes.acquire(timeout=timeout)


@pytest.fixture
def policy() -> BlockingPolicy:
    return BlockingPolicy()


@pytest.fixture
def agent(tmp_path: Path, policy: BlockingPolicy) -> Iterator[Agent]:
    a = Agent(tmp_path, policy, wait=0.5)
    a.watcher.start()
    yield a
    a.watcher.stop()


def test_a_change_to_the_cells_answer_wakes_the_agent(agent: Agent, policy: BlockingPolicy) -> None:
    policy.edit("s1", [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"}])
    assert agent.woken()
    agent.converger.cycle()
    assert agent.converger.dataset_version == policy.version


def test_a_newer_version_with_the_same_answer_is_recorded_after_one_wait(agent: Agent,
                                                                          policy: BlockingPolicy) -> None:
    policy.edit("s-elsewhere", [{"protocol": "udp", "destination": "10.9.9.9", "ports": "53"}])
    assert agent.woken(), "a 304 carrying a newer version must start a cycle"
    agent.converger.cycle()
    assert agent.converger.status().totals.lagging == 0
    assert agent.converger.dataset_version == policy.version
    assert not agent.woken(timeout=1.5), "once the version is recorded, a 304 is no news"


def test_a_server_without_etags_stops_the_watcher(tmp_path: Path) -> None:
    plain = BlockingPolicy(etags=False)
    a = Agent(tmp_path, plain, wait=0.5)
    a.converger.cycle()
    a.watcher.start()
    wait_for(lambda: log_events(a.log, "blocking-queries-unsupported"), what="the watcher to give up")
    a.watcher.stop()
