"""The fleet audit on the policy server: cell states, the view, metrics, the once-only convergence, the routes."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine
from test_api import GLOBAL, Client, api_metrics, serving

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.fleet.report import MAX_REPORT_BYTES, AppEnforcement, CellReport, ContainerCounts
from dynamic_asgs.fleet.view import CellState, FleetView
from dynamic_asgs.lager import Logger
from dynamic_asgs.policy_server.api import FLEET_ROUTE, REPORTS_ROUTE, FleetService, build_app
from dynamic_asgs.policy_server.fleet import (
    FleetCollector,
    FleetEvaluator,
    ReportBuffer,
    build_view,
    classify,
    converged,
)
from dynamic_asgs.policy_server.holder import DatasetHolder
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.reports import FleetRows, ReportRow, ReportStore, VersionRow
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.policydb.tables import cell_reports

NOW = 1_800_000_000.0
ROSE = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


def row(cell: str, version: int, *, age: float = 1.0, lagging: int = 0, failed: int = 0,
        lagging_since: float | None = None, apps: str | None = None, interval: float = 60.0) -> ReportRow:
    return ReportRow(cell, f"diego-cell/{cell}", NOW - age, interval, version, 4, lagging, failed, 1, lagging_since,
                     None, apps)


def rows(*reports: ReportRow) -> FleetRows:
    versions = {v: VersionRow(v, NOW - 100 * (10 - v), None) for v in (8, 9, 10)}
    return FleetRows(10, NOW - 0.0, NOW, list(reports), versions)


def apps(*entries: AppEnforcement) -> str:
    return json.dumps(CellReport("x", "x", 1, 1, apps=entries).to_json()["apps"], separators=(",", ":"))


def test_each_cell_is_in_one_state_judged_silent_then_failed_then_catching_up() -> None:
    fleet = rows(row("current", 10), row("silent", 7, age=181), row("failed", 10, failed=1),
                 row("behind", 7), row("lagging", 10, lagging=2, lagging_since=NOW - 42),
                 row("behind-unknown", 5, lagging_since=NOW - 900))
    states = {r.cell_id: classify(r, fleet, 3) for r in fleet.reports}
    assert states == {
        "current": (CellState.CURRENT, None), "silent": (CellState.SILENT, None),
        "failed": (CellState.FAILED, None),
        "behind": (CellState.CATCHING_UP, NOW - 200),  # since version 8, the first it lacks, became current
        "lagging": (CellState.CATCHING_UP, NOW - 42),
        "behind-unknown": (CellState.CATCHING_UP, NOW - 900),  # version 6 predates the record: its own lag
    }
    assert classify(row("quick", 10, age=2.1, interval=0.5), fleet, 4)[0] is CellState.SILENT  # its own interval


def test_the_view_totals_cells_and_containers_and_the_oldest_lag() -> None:
    view = build_view(rows(row("current", 10), row("silent", 7, age=181), row("failed", 10, failed=1),
                           row("behind", 7, lagging=1)), silent_after_intervals=3)
    assert view.totals.cells == {CellState.CURRENT: 1, CellState.CATCHING_UP: 1, CellState.SILENT: 1,
                                 CellState.FAILED: 1}
    c = view.totals.containers
    assert (c.current, c.lagging, c.failed, c.drifted, c.silent) == (12, 1, 1, 3, 4)
    assert view.totals.oldest_lag_seconds == 200.0 and view.dataset_version == 10
    assert view.current_since == datetime.fromtimestamp(NOW - 0, UTC)
    assert [c.id for c in view.cells] == ["current", "silent", "failed", "behind"]
    assert view.enforcement == () and not view.converged
    assert FleetView.from_json(view.to_json()) == view


def test_an_app_query_shows_which_cells_enforce_which_version_and_whose_denials_rose() -> None:
    a1_old = AppEnforcement("app-1", "space-1", 9, 2)
    a1_new = AppEnforcement("app-1", "space-1", 10, 3, denied_packets=40, denials_rose_at=ROSE)
    other = AppEnforcement("app-2", "space-2", 10, 1, denied_packets=7, denials_rose_at=ROSE)
    fleet = rows(row("a", 10, apps=apps(a1_new, other)), row("b", 9, apps=apps(a1_old)),
                 row("gone", 10, age=1000, apps=apps(a1_new)))
    view = build_view(fleet, silent_after_intervals=3, app="app-1")
    assert [(e.cell_id, e.cell_state, e.version, e.containers) for e in view.enforcement] == [
        ("a", CellState.CURRENT, 10, 3), ("b", CellState.CATCHING_UP, 9, 2), ("gone", CellState.SILENT, 10, 3)]
    assert [(d.app, d.cell_id, d.denied_packets, d.denials_rose_at) for d in view.denials_rose] == [
        ("app-1", "a", 40, ROSE)]  # not app-2 (filtered), not the silent cell
    assert [e.cell_id for e in build_view(fleet, silent_after_intervals=3, space="space-2").enforcement] == ["a"]
    everyone = build_view(fleet, silent_after_intervals=3)
    assert everyone.enforcement == () and {d.app for d in everyone.denials_rose} == {"app-1", "app-2"}
    assert FleetView.from_json(json.loads(json.dumps(view.to_json()))) == view


def test_convergence_needs_every_reporting_cell_on_the_version_with_nothing_lagging() -> None:
    assert converged(rows(row("a", 10), row("b", 11), row("silent", 3, age=500)), 3)
    assert not converged(rows(row("a", 10), row("b", 10, lagging=1)), 3)
    assert not converged(rows(row("a", 10), row("b", 9)), 3)
    assert not converged(rows(row("silent", 10, age=500)), 3)  # nobody reports: nothing to observe


def metrics_text(collector: FleetCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def report(cell: str, version: int, *, lagging: int = 0, interval: float = 60.0) -> CellReport:
    return CellReport(cell, f"diego-cell/{cell}", interval, version, ContainerCounts(2, lagging, 0, 0))


def evaluator(engine: Engine) -> tuple[FleetEvaluator, FleetCollector]:
    collector = FleetCollector()
    return FleetEvaluator(ReportStore(engine), collector, silent_after_intervals=3, forget_after=3600,
                          logger=Logger("t", stream=io.StringIO())), collector


def test_two_evaluators_observe_a_convergence_once(engine: Engine, db_settings: DatabaseSettings) -> None:
    PolicyStore(engine).replace([GLOBAL], cc_last_update=None)
    other_engine = create_engine(db_settings)
    first, first_metrics = evaluator(engine)
    second, second_metrics = evaluator(other_engine)
    try:
        ReportStore(engine).write([report("a", 1), report("b", 0)])
        assert first.evaluate() is None and second.evaluate() is None  # b still enforces version 0
        text = metrics_text(first_metrics)
        assert 'fleet_cells{state="catching-up"} 1.0' in text and 'fleet_containers{state="current"} 4.0' in text
        assert "fleet_oldest_lag_seconds" in text and "fleet_convergence_seconds_count 0.0" in text
        ReportStore(engine).write([report("b", 1)])
        results = [first.evaluate(), second.evaluate(), first.evaluate()]
        assert results[0] is not None and results[1:] == [None, None]
        assert "fleet_convergence_seconds_count 1.0" in metrics_text(first_metrics)
        assert "fleet_convergence_seconds_count 0.0" in metrics_text(second_metrics)
        assert 'fleet_cells{state="current"} 2.0' in metrics_text(second_metrics)
    finally:
        other_engine.dispose()


class _Recording(ReportStore):
    def __init__(self, engine: Engine, *, fail: bool = False) -> None:
        super().__init__(engine)
        self.batches: list[list[str]] = []
        self.fail = fail

    def write(self, reports: Iterable[CellReport]) -> int:
        batch = list(reports)
        if self.fail:
            raise DatabaseError("policy DB: down")
        self.batches.append([r.cell_id for r in batch])
        return super().write(batch)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    yield engine
    engine.dispose()


def test_the_buffer_writes_the_newest_report_of_each_cell_in_one_batch(sqlite_engine: Engine) -> None:
    store = _Recording(sqlite_engine, fail=True)
    flushed: list[int] = []
    buffer = ReportBuffer(store, interval=1.0, logger=Logger("t", stream=io.StringIO()),
                          on_flush=lambda n, _s: flushed.append(n))

    async def scenario() -> None:
        for version in (1, 2):
            for cell in ("a", "b", "c"):
                await buffer.accept(report(cell, version))
        assert await buffer.flush() == 0 and len(buffer.pending) == 3  # kept for the next flush
        store.fail = False
        await buffer.accept(report("a", 3))
        assert await buffer.flush() == 3 and not buffer.pending

    asyncio.run(scenario())
    assert store.batches == [["a", "b", "c"]] and flushed == [3]
    assert {r.cell_id: r.dataset_version for r in store.read().reports} == {"a": 3, "b": 2, "c": 2}


@pytest.fixture
def fleet_client(sqlite_engine: Engine, request: pytest.FixtureRequest) -> Iterator[tuple[Client, io.StringIO]]:
    PolicyStore(sqlite_engine).replace([GLOBAL], cc_last_update=None)
    log = io.StringIO()
    logger = Logger("t", stream=log)
    holder = DatasetHolder(version=PolicyStore(sqlite_engine).version, snapshot=PolicyStore(sqlite_engine).snapshot,
                           interval=0.05, logger=logger)
    store = ReportStore(sqlite_engine)
    buffer = ReportBuffer(store, interval=getattr(request, "param", 0.1), logger=logger)
    app = build_app(holder, metrics=api_metrics(), logger=logger, fleet=FleetService(store, buffer, 3))
    with serving(app) as client:
        yield client, log


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("internal_requests_refused_total", {"reason": reason}) or 0.0


def test_reports_are_accepted_buffered_and_shown_in_the_fleet_view(fleet_client: tuple[Client, io.StringIO]
                                                                   ) -> None:
    client, _ = fleet_client
    app = AppEnforcement("app-1", "space-1", 1, 2, denied_packets=9, denials_rose_at=ROSE)
    r = client.request("PUT", REPORTS_ROUTE, data=CellReport("c-1", "diego-cell/0", 20, 1, ContainerCounts(2),
                                                             apps=(app,)).to_bytes())
    assert r.status_code == 202 and r.json() == {"silent_after_seconds": 60.0}
    assert client.post(REPORTS_ROUTE, data=report("c-2", 0).to_bytes()).status_code == 202
    view = FleetView.from_json(client.get(FLEET_ROUTE).json())
    assert view.cells == ()  # not written yet: the next flush writes both in one transaction
    time.sleep(0.4)
    view = FleetView.from_json(client.get(FLEET_ROUTE).json())
    assert [(c.id, c.state) for c in view.cells] == [("c-1", CellState.CURRENT), ("c-2", CellState.CATCHING_UP)]
    assert view.dataset_version == 1 and view.enforcement == ()
    assert [(d.app, d.cell_id, d.denied_packets, d.denials_rose_at) for d in view.denials_rose] == [
        ("app-1", "c-1", 9, ROSE)]
    by_app = FleetView.from_json(client.get(FLEET_ROUTE, params={"app": "app-1"}).json())
    assert [(e.cell_id, e.version, e.containers) for e in by_app.enforcement] == [("c-1", 1, 2)]


@pytest.mark.parametrize("fleet_client", [0.0], indirect=True)
def test_without_batching_a_report_is_written_before_the_answer(fleet_client: tuple[Client, io.StringIO]) -> None:
    client, _ = fleet_client
    assert client.request("PUT", REPORTS_ROUTE, data=report("c-1", 1).to_bytes()).status_code == 202
    assert [c.id for c in FleetView.from_json(client.get(FLEET_ROUTE).json()).cells] == ["c-1"]


@pytest.mark.parametrize(("body", "status", "named"), [
    (b"{", 400, "cell report: not JSON"),
    (json.dumps({**report("c", 1).to_json(), "dataset_version": "7"}).encode(), 400, "cell report.dataset_version"),
    (json.dumps({**report("c", 1).to_json(), "cell": {"id": "'; DROP TABLE x", "name": "n"}}).encode(), 400,
     "cell report.cell.id"),
    (b" " * (MAX_REPORT_BYTES + 1), 413, "larger than 4 MiB"),
])
def test_a_bad_report_is_refused_naming_what_is_wrong_counted_and_logged(
        fleet_client: tuple[Client, io.StringIO], sqlite_engine: Engine, body: bytes, status: int, named: str) -> None:
    client, log = fleet_client
    before = refused("invalid-report")
    r = client.request("PUT", REPORTS_ROUTE, data=body)
    assert r.status_code == status and named in r.json()["error"]
    assert refused("invalid-report") == before + 1
    assert any('"reason":"invalid-report"' in line for line in log.getvalue().splitlines())
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cell_reports)).scalar_one() == 0


@pytest.mark.parametrize(("params", "named"), [
    ({"app": "a b"}, "app: not a guid"), ({"space": "x" * 129}, "space: not a guid"), ({"app": "a\n"}, "app: not"),
    ({"cell": "c"}, "cell: unknown parameter"), ([("app", "a"), ("app", "b")], "app: given more than once"),
])
def test_fleet_parameters_are_grammar_checked(fleet_client: tuple[Client, io.StringIO], params: object,
                                              named: str) -> None:
    client, _ = fleet_client
    r = client.get(FLEET_ROUTE, params=params)
    assert r.status_code == 400 and r.json()["error"].startswith(named)
