"""The converger against the fake iptables: cycles, force calls, faults, bookkeeping."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from dynamic_asgs.agent.converger import APP_MESSAGE, Converger
from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.denials import DenialTracker, DenialWatcher
from dynamic_asgs.agent.endpoints import debug_server
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.agent.policy_client import Result
from dynamic_asgs.agent.results import CycleKind
from dynamic_asgs.agent.status import AgentStatus, Totals
from dynamic_asgs.asg.model import Container
from dynamic_asgs.asg.parse import parse_groups_document
from dynamic_asgs.asg.translate import ChainSettings
from dynamic_asgs.errors import EnforcementFailed, RefusedRequest, UnknownContainer, UpstreamError
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.iptables.runner import RestoreStats
from dynamic_asgs.iptables.saved import SavedTable
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore, StoreView
from support.plans import log_events

SCHEMA = json.loads((Path(__file__).parents[3] / "docs" / "asg-status.schema.json").read_text())


class Gate:
    """Holds whoever passes the armed point ("policy" or "restore") until released."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def passing(self, point: str) -> None:
        if point == self.armed:
            self.entered.set()
            assert self.release.wait(30), "the gate was never released"


class Policy:
    """A policy server answering from a dict of space -> rules (what the real client returns)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.rules: dict[str, list[dict[str, Any]]] = {}
        self.version = 1
        self.down = False
        self.refuses: set[str] = set()  # spaces the server answers 400 for
        self.calls: list[tuple[frozenset[str], str | None]] = []

    def set(self, space: str, *rules: dict[str, Any]) -> None:
        self.rules[space] = list(rules)
        self.version += 1

    def fetch(self, space_guids: Iterable[str], *, etag: str | None = None, wait: float | None = None) -> Result:
        spaces = frozenset(space_guids)
        self.calls.append((spaces, etag))
        self.gate.passing("policy")
        if self.down:
            raise UpstreamError("policy server: connection refused")
        if spaces & self.refuses:
            raise RefusedRequest("policy server: GET /networking/v1/internal/security_groups: HTTP 400: "
                                 "invalid space_guids", status=400)
        tag = f'"{self.version}-{sorted(spaces)}"'
        if etag == tag:
            return Result(etag=tag, dataset_version=self.version, not_modified=True)
        doc = {"security_groups": [
            {"guid": f"sg-{s}", "name": f"sg-{s}", "rules": json.dumps(r), "running_space_guids": [s]}
            for s, r in sorted(self.rules.items()) if s in spaces]}
        return Result(groups=parse_groups_document(doc), etag=tag, dataset_version=self.version)


class GatedRunner:
    """The fake iptables behind a gate: a restore can be held (with the dataplane's lock taken)."""

    def __init__(self, runner: FakeRunner, gate: Gate) -> None:
        self.runner, self.gate = runner, gate

    @property
    def version(self) -> int:
        return self.runner.version

    def save(self) -> SavedTable:
        return self.runner.save()

    def restore(self, payload: Iterable[str]) -> RestoreStats:
        lines = list(payload)
        self.gate.passing("restore")
        return self.runner.restore(lines)

    def read_chains(self, names: Collection[str]) -> SavedTable:
        return self.runner.read_chains(names)


class Emitter:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def emit(self, container: Container, message: str) -> None:
        self.sent.append((container.handle, message))


def tcp(dst: str, port: str) -> dict[str, Any]:
    return {"protocol": "tcp", "destination": dst, "ports": port}


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Cell:
    def __init__(self, tmp: Path, *, denials: bool = False) -> None:
        self.clock = Clock()
        self.store = MetadataStore(tmp / "store.json")
        self.runner = FakeRunner(4, record=True)
        self.gate = Gate()
        self.policy = Policy(self.gate)
        self.emitter = Emitter()
        self.log = io.StringIO()
        logger = Logger("agent", stream=self.log, level="debug")
        self.metrics = AgentMetrics()
        self.denials = DenialWatcher(readers={4: self.runner}, containers=lambda: self.converger.containers(),
                                     logger=logger, metrics=self.metrics, interval=30, app_log=self.emitter,
                                     tracker=DenialTracker(window=600, min_packets=5), clock=self.clock)
        self.converger = Converger(view=StoreView(self.store, logger), policy=self.policy,
                                   dataplane=Dataplane(runners={4: GatedRunner(self.runner, self.gate)}, logger=logger,
                                                       clock=self.clock),
                                   settings=ChainSettings(), logger=logger, metrics=self.metrics,
                                   emitter=self.emitter, denials=self.denials if denials else None)

    def add(self, handle: str, space: str, *, parent: bool = True) -> None:
        if parent:  # as the CNI does before it records the container
            self.runner.table.create_chain(f"netout--{handle}", ["-j REJECT --reject-with icmp-port-unreachable"])
        self.store.add(handle, "10.255.0.2", {"policy_group_id": f"app-{handle}", "space_id": space,
                                              "container_workload": "app"})

    def remove(self, handle: str) -> None:
        self.store.delete(handle)
        self.runner.table.delete_chain(f"netout--{handle}")

    def accepts(self, handle: str) -> list[str]:
        return [r for r in self.runner.table.rules(f"asg-{handle}") if "--dst-range" in r]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or None)


@pytest.fixture
def cell(tmp_path: Path) -> Cell:
    return Cell(tmp_path)


def test_a_cycle_enforces_every_container_and_a_repeat_writes_nothing(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.policy.set("s2", tcp("10.0.0.2", "443"), tcp("10.0.0.3", "443"))
    cell.add("a", "s1")
    cell.add("b", "s2")
    report = cell.converger.cycle().report
    assert report is not None and report.changed == ("a", "b")
    assert len(cell.accepts("a")) == 1 and len(cell.accepts("b")) == 2
    assert cell.runner.table.rules("netout--a")[0].endswith("-j asg-a")
    assert cell.emitter.sent == []  # new containers: their first ruleset is not an "update" to tell the app
    updated = log_events(cell.log, "container-rules-updated")
    assert {(e["handle"], e["new_rules"], e["space_guid"]) for e in updated} == {("a", 1, "s1"), ("b", 2, "s2")}

    commits = cell.runner.commits
    report = cell.converger.cycle().report
    assert report is not None and report.changed == () and cell.runner.commits == commits
    assert cell.policy.calls[-1][1] is not None  # asked with If-None-Match
    status = cell.converger.status()
    assert status.dataset_version == cell.policy.version
    assert status.totals == Totals(containers=2, rules=3, lagging=0, store_entries=2, invalid_store_entries=0)
    assert status.containers["b"].rule_count == 2 and status.containers["b"].app_guid == "app-b"


def test_an_asg_change_rewrites_only_the_affected_container(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.policy.set("s2", tcp("10.0.0.2", "443"))
    cell.add("a", "s1")
    cell.add("b", "s2")
    cell.converger.cycle()
    cell.emitter.sent.clear()
    cell.policy.set("s1", tcp("10.0.0.9", "8080"))
    report = cell.converger.cycle().report
    assert report is not None and report.changed == ("a",)
    assert "10.0.0.9-10.0.0.9" in cell.accepts("a")[0]
    assert cell.emitter.sent == [("a", APP_MESSAGE)]
    (event,) = [e for e in log_events(cell.log, "container-rules-updated") if e["dataset_version"] == 4]
    assert (event["old_rules"], event["new_rules"]) == (1, 1)
    assert cell.metric("asg_container_updates_total") == 3


def test_policy_server_down_keeps_the_current_rules(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    before = cell.runner.table.rules("asg-a")
    cell.policy.down = True
    assert cell.converger.cycle().report is not None  # planned from the cached groups
    cell.add("b", "s9")  # a new space the cache does not cover
    cell.converger.cycle()
    assert cell.runner.table.rules("asg-a") == before
    assert not cell.runner.table.exists("asg-b")  # unknown ASGs: not planned, nothing swept either
    assert len(log_events(cell.log, "policy-server-unavailable-keeping-rules")) == 1
    assert cell.converger.status().policy_server.error == "policy server: connection refused"
    assert cell.metric("asg_policy_server_errors_total") == 2
    cell.policy.down = False
    cell.policy.set("s9", tcp("10.9.9.9", "9"))
    cell.converger.cycle()
    assert cell.accepts("b") and log_events(cell.log, "policy-server-recovered")


def test_policy_server_down_from_the_start_touches_nothing(cell: Cell) -> None:
    cell.policy.down = True
    cell.add("a", "s1")
    result = cell.converger.cycle()
    assert result.report is None and not result.ok
    assert cell.runner.restores == 0
    last = cell.converger.status().last_cycle
    assert last is not None and last.error == "policy server: connection refused"
    assert cell.metric("asg_cycles_total", kind="full", result="error") == 1


def test_forced_sync_writes_only_that_container(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    cell.policy.set("s2", tcp("10.0.0.2", "443"))
    cell.add("b", "s2")
    cell.runner.payloads.clear()
    cell.converger.sync_container("b")
    assert cell.accepts("b")
    (payload,) = cell.runner.payloads
    assert all("asg-a" not in line and "netout--a" not in line for line in payload)
    assert (frozenset({"s1", "s2"}), None) in cell.policy.calls  # fetched for the new space


def test_forced_sync_failures_carry_the_reason(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    with pytest.raises(UnknownContainer, match="container ghost is not in the container metadata store"):
        cell.converger.sync_container("ghost")
    cell.add("a", "s1", parent=False)
    with pytest.raises(EnforcementFailed, match=r"IPv4: .*netout--a"):
        cell.converger.sync_container("a")
    cell.policy.down = True
    cell.add("c", "s3")
    with pytest.raises(UpstreamError):
        cell.converger.sync_container("c")


def test_cleanup_removes_chains_of_deleted_containers(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.add("b", "s1")
    cell.converger.cycle()
    cell.store.delete("b")  # the CNI's DEL: store entry first, then the agent's cleanup
    cell.converger.cleanup_container("b")
    assert not cell.runner.table.exists("asg-b") and cell.runner.table.exists("asg-a")
    assert cell.runner.table.rules("netout--b") == ["-A netout--b -j REJECT --reject-with icmp-port-unreachable"]
    assert set(cell.converger.status().containers) == {"a"}


def test_removed_container_chains_go_in_the_next_cycle(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.add("b", "s1")
    cell.converger.cycle()
    cell.remove("b")
    cell.converger.cycle()
    assert not cell.runner.table.exists("asg-b")


def test_corrupt_store_keeps_enforcing(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    cell.store.path.write_text("{torn")
    assert cell.converger.store_changed()
    report = cell.converger.cycle().report
    assert report is not None and report.changed == () and cell.runner.table.exists("asg-a")
    assert cell.metric("asg_store_errors_total") == 1


def test_invalid_rules_are_dropped_logged_once_and_counted(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"), tcp("10.0.0.999", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    cell.policy.version += 1  # same content, new version: logged errors are not repeated
    cell.converger.cycle()
    assert len(cell.accepts("a")) == 1
    (dropped,) = log_events(cell.log, "rule-dropped-invalid")
    assert "rules[1]: destination: '10.0.0.999' is not an IP address" in dropped["error"]
    assert cell.metric("asg_invalid_rules") == 1


def test_dataset_version_per_container_and_latency(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    first = cell.converger.status().containers["a"]
    assert first.dataset_version == cell.policy.version
    cell.policy.set("s2", tcp("10.0.0.2", "80"))  # unrelated change: a's rules stay, its version moves on
    cell.converger.cycle()
    second = cell.converger.status().containers["a"]
    assert second.dataset_version == cell.policy.version and second.ruleset == first.ruleset
    assert cell.metric("asg_containers_lagging") == 0
    assert cell.metric("asg_sync_latency_seconds_count") == 1  # the start version is not a change we saw


def test_a_cleanup_call_for_a_container_still_in_the_store_leaves_its_chains(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    before = cell.runner.table.rules("asg-a")
    cell.converger.cleanup_container("a")  # a confused (or hostile) caller: "a" is alive
    assert cell.runner.table.rules("asg-a") == before and cell.runner.table.rules("netout--a")[0].endswith("asg-a")
    assert log_events(cell.log, "cleanup-kept-live-container")[0]["handle"] == "a"


def test_a_settle_pass_writes_a_container_whose_parent_came_after_its_store_entry_without_asking_again(
        cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.converger.cycle()
    cell.add("late", "s1", parent=False)  # the store entry first, as cni-wrapper-plugin writes it
    report = cell.converger.cycle(CycleKind.STORE_CHANGE).report
    assert report is not None and "late" in report.skipped and cell.converger.next_look() is not None
    calls = len(cell.policy.calls)
    cell.runner.table.create_chain("netout--late", ["-j REJECT --reject-with icmp-port-unreachable"])
    cell.clock.now += 0.5
    settled = cell.converger.settle()
    assert settled is not None and settled.changed == ("late",) and len(cell.policy.calls) == calls
    assert cell.accepts("late") and "late" in cell.converger.status().containers


def test_a_space_the_server_refuses_is_set_aside_and_every_other_container_is_still_updated(cell: Cell) -> None:
    for i in range(8):
        cell.policy.set(f"s{i}", tcp(f"10.0.0.{i}", "80"))
        cell.add(f"c{i}", f"s{i}")
    assert cell.converger.cycle().report is not None
    held = cell.runner.table.rules("asg-c5")
    cell.policy.refuses.add("s5")  # say, a store entry the server does not accept
    for i in range(8):
        cell.policy.set(f"s{i}", tcp(f"10.1.0.{i}", "443"))
    report = cell.converger.cycle().report
    assert report is not None and sorted(report.changed) == [f"c{i}" for i in range(8) if i != 5]
    assert "s5 refused by the policy server" in report.refused["c5"] and cell.runner.table.rules("asg-c5") == held
    assert len(cell.policy.calls) < 2 + 3 * 8  # bisected: about log2(n) probes, not one per space
    status = cell.converger.status()
    assert list(status.policy_server.refused_spaces) == ["s5"] and cell.metric("asg_refused_spaces") == 1
    assert [e["space_guid"] for e in log_events(cell.log, "space-refused-by-policy-server")] == ["s5"]
    calls = len(cell.policy.calls)
    again = cell.converger.cycle().report
    assert again is not None and not again.changes and len(cell.policy.calls) == calls + 1  # not probed again
    cell.remove("c5")
    cell.converger.cycle()
    assert cell.converger.status().policy_server.refused_spaces == {}


def test_the_status_is_the_agents_real_document_valid_against_the_published_schema(cell: Cell) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    documents = [cell.converger.status().to_json()]  # before any cycle: last_cycle is {}
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.policy.set("s2", tcp("10.0.0.2", "443"), tcp("10.0.0.3", "443"))
    cell.add("a", "s1")
    cell.add("b", "s2")
    cell.add("late", "s1", parent=False)  # waits for its CNI: settling, skipped
    cell.converger.cycle()
    cell.converger.invalidate_kernel()
    cell.converger.cycle()  # a whole-table read: learns the fingerprints of what the first cycle wrote
    table = cell.runner.table
    table.chains["asg-a"] = [r.replace("10.0.0.1-10.0.0.1", "0.0.0.0-255.255.255.255")
                             for r in table.rules("asg-a")]
    cell.converger.invalidate_kernel()
    cell.clock.now += 1.2345
    cell.converger.cycle()  # finds the edit: drift, repaired
    cell.policy.refuses.add("s2")
    cell.policy.set("s2", tcp("10.0.0.4", "22"))
    cell.converger.cycle()
    documents.append(cell.converger.status().to_json())
    cell.policy.down = True
    cell.store.path.write_text("{torn")
    cell.converger.cycle()
    documents.append(cell.converger.status().to_json())
    last = documents[1]
    assert last["drift"]["repaired"] == 1 and last["settling"] == ["late"] and last["policy_server"]["refused_spaces"]
    assert last["last_cycle"]["refused"] and last["containers"]["b"]["verified_at"] is not None
    assert documents[2]["store"]["error"] and documents[2]["policy_server"]["error"]
    for doc in documents:
        validator.validate(doc)
        text = json.dumps(doc, indent=1)
        parsed = AgentStatus.from_json(json.loads(text))
        assert json.dumps(parsed.to_json(), indent=1) == text  # the same bytes after a round trip
    validator.validate({"enable_asg_syncing": False})


@pytest.mark.parametrize("held_in", ["policy", "restore"])
def test_the_status_answers_while_a_cycle_is_held(cell: Cell, held_in: str) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    before = cell.converger.status()
    cell.policy.set("s1", tcp("10.0.0.9", "80"))
    cell.gate.armed = held_in
    cycle = threading.Thread(target=cell.converger.cycle, daemon=True)
    cycle.start()
    server = debug_server(host="127.0.0.1", port=0, logger=Logger("t", stream=io.StringIO()),
                          status=cell.converger.status).start()
    try:
        assert cell.gate.entered.wait(10), "the cycle did not reach the gate"
        answer = requests.get(f"http://127.0.0.1:{server.port}/asg-status", timeout=5)
        assert answer.status_code == 200 and AgentStatus.from_json(answer.json()) == before
        assert cycle.is_alive()  # still held, with the lock
    finally:
        cell.gate.release.set()
        cycle.join(10)
        server.stop()
    after = cell.converger.status()
    assert after.dataset_version == cell.policy.version != before.dataset_version
    assert after.containers["a"].ruleset != before.containers["a"].ruleset
