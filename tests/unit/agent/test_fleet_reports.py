"""The cell's report and its denied egress, against the converger on the fake iptables."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from test_converger import Cell, tcp

from dynamic_asgs.agent.denials import ROSE_MESSAGE, DenialTracker, DenialWatcher
from dynamic_asgs.agent.reporter import FleetReporter, cell_report
from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.fleet.report import AppEnforcement, CellReport, ContainerCounts
from dynamic_asgs.lager import Logger
from support.plans import log_events


class Sink:
    def __init__(self) -> None:
        self.reports: list[CellReport] = []
        self.down = False

    def report(self, report: CellReport) -> None:
        if self.down:
            raise UpstreamError("policy server: connection refused")
        self.reports.append(CellReport.from_bytes(report.to_bytes()))  # what the server would read


@pytest.fixture
def cell(tmp_path: Path) -> Cell:
    return Cell(tmp_path)


def test_the_report_counts_containers_by_state_and_apps_by_the_version_they_enforce(cell: Cell) -> None:
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.add("b", "s1")
    cell.add("c", "s2")
    cell.policy.refuses.add("s2")  # c's space is refused: c cannot be written
    cell.converger.cycle()
    report = cell_report(cell.converger.status(), cell_id="cell-1", cell_name="diego-cell/0", interval=60)
    v = cell.policy.version
    assert (report.dataset_version, report.containers) == (v, ContainerCounts(current=2, lagging=0, failed=1))
    assert report.apps == (AppEnforcement("app-a", "s1", v, 1), AppEnforcement("app-b", "s1", v, 1))
    cell.policy.set("s1", tcp("10.0.0.2", "80"))  # the server moves on: until a cycle, a and b lag
    cell.converger.cycle()
    assert cell_report(cell.converger.status(), cell_id="c", cell_name="c", interval=60).containers.current == 2


def test_a_report_follows_each_status_change_and_a_down_server_is_retried(cell: Cell) -> None:
    sink = Sink()
    reporter = FleetReporter(sink=sink, status=cell.converger.status, cell_id="cell-1", cell_name="diego-cell/0",
                             interval=60, logger=Logger("agent", stream=cell.log), metrics=cell.metrics)
    assert reporter.report_once() and not reporter.report_once()  # unchanged: nothing sent
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.add("a", "s1")
    cell.converger.cycle()
    sink.down = True
    assert not reporter.report_once()
    assert not reporter.report_once()
    assert len(log_events(cell.log, "report-failed")) == 1  # once per distinct error
    sink.down = False
    assert reporter.report_once()
    assert [r.containers.current for r in sink.reports] == [0, 1]
    assert cell.metric("asg_fleet_reports_total", result="sent") == 2
    assert cell.metric("asg_fleet_reports_total", result="failed") == 2


def test_denials_that_rise_after_an_edit_reach_status_report_and_app_once(tmp_path: Path) -> None:
    cell = Cell(tmp_path, denials=True)
    cell.policy.set("s1", tcp("10.0.0.1", "80"))
    cell.policy.set("s2", tcp("10.0.0.2", "80"))
    for handle, space in (("a", "s1"), ("b", "s1"), ("c", "s2")):
        cell.add(handle, space)
    cell.converger.cycle()
    denials = cell.denials
    denials.read_once()
    cell.policy.set("s1", tcp("10.0.0.9", "80"))  # the edit cuts a's and b's egress; c's space is untouched
    cell.converger.cycle()
    cell.emitter.sent.clear()
    cell.clock.now += 30
    for chain, packets in (("asg-a", 7), ("asg-b", 9), ("asg-c", 50)):
        cell.runner.table.reach_final_rule(chain, packets)
    seen = denials.read_once()
    assert seen is not None and {r.handle for r in seen.rose} == {"a", "b"} and seen.added == 66
    message = ROSE_MESSAGE.format(at=log_events(cell.log, "egress-denials-rose-after-rules-changed")[0][
        "rules_changed_at"], version=cell.policy.version)
    assert sorted(cell.emitter.sent) == [("a", message), ("b", message)]  # a and b are two apps: each told once
    assert "Egress connections are being refused since its security groups changed at" in message
    status = cell.converger.status()
    assert (status.containers["a"].denied_packets, status.containers["c"].denied_packets) == (7, 50)
    assert status.containers["a"].denials_rose_at is not None and status.containers["c"].denials_rose_at is None
    report = cell_report(status, cell_id="x", cell_name="x", interval=60)
    apps = {a.guid: a for a in report.apps}
    assert apps["app-c"].denied_packets == 50 and apps["app-c"].denials_rose_at is None
    assert apps["app-a"].denials_rose_at is not None
    cell.clock.now += 30
    cell.runner.table.reach_final_rule("asg-a", 100)
    assert denials.read_once() is not None and len(cell.emitter.sent) == 2  # once per change
    assert cell.metric("asg_denied_egress_packets_total") == 166
    assert cell.metric("asg_denials_rose_total") == 2


def test_a_failed_counter_read_is_logged_once_and_counted(cell: Cell) -> None:
    class Broken:
        def final_reject_packets(self, prefix: str) -> dict[str, int]:
            from dynamic_asgs.errors import IptablesError
            raise IptablesError("iptables-save failed (exit 4): Another app is currently holding the xtables lock")

    log = io.StringIO()
    denials = DenialWatcher(readers={4: Broken()}, containers=cell.converger.containers,
                            logger=Logger("agent", stream=log), metrics=cell.metrics, interval=30,
                            tracker=DenialTracker())
    assert denials.read_once() is None and denials.read_once() is None
    assert len(log_events(log, "denied-egress-read-failed")) == 1
    assert cell.metric("asg_denied_egress_read_failures_total") == 2
