"""Cell reports in the policy DB on every backend: batched upserts, reads, forgetting, the convergence claim."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.engine import Engine

from dynamic_asgs.fleet.report import AppEnforcement, CellReport, ContainerCounts
from dynamic_asgs.policydb import migrate
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.reports import ReportStore
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from dynamic_asgs.policydb.tables import cell_reports, dataset_versions, info

ROSE = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def report(cell: str, version: int = 1, *, lagging: int = 0, apps: tuple[AppEnforcement, ...] = ()) -> CellReport:
    return CellReport(cell, f"diego-cell/{cell}", 60.0, version, ContainerCounts(3, lagging, 0, 1),
                      ROSE if lagging else None, apps)


def test_every_version_bump_records_since_when_it_is_current(engine: Engine) -> None:
    store = PolicyStore(engine)
    with engine.connect() as conn:  # the migration records the version current then
        assert [tuple(r) for r in conn.execute(sa.select(dataset_versions.c.version, dataset_versions.c.converged_at))
                ] == [(0, None)]
    store.replace([GroupRow("a", "a", "[]", True, True, (), ())], cc_last_update=None)
    store.replace([GroupRow("a", "a", "[]", True, True, (), ())], cc_last_update=None)  # unchanged: no bump
    store.replace([GroupRow("b", "b", "[]", True, True, (), ())], cc_last_update=None)
    state = store.state()
    with engine.connect() as conn:
        rows = {int(r.version): float(r.changed_at) for r in conn.execute(sa.select(dataset_versions))}
    assert sorted(rows) == [0, 1, 2] and rows[2] == state.changed_at and rows[1] <= rows[2]


def test_upgrading_a_database_in_use_records_its_current_version(db_settings: DatabaseSettings) -> None:
    engine = create_engine(db_settings)
    script = migrate._script()
    try:
        with engine.connect() as conn:
            with EnvironmentContext(Config(), script, fn=lambda rev, _ctx: script._upgrade_revs("0001", rev),
                                    destination_rev="0001") as env:
                env.configure(connection=conn, target_metadata=None)
                with env.begin_transaction():
                    env.run_migrations()
            conn.commit()
        with engine.begin() as conn:  # a foundation that has synced for a while before the upgrade
            conn.execute(sa.update(info).values(version=41, changed_at=1234.5))
        assert migrate.upgrade(engine) == ("0001", migrate.head_revision())
        with engine.connect() as conn:
            assert [tuple(r) for r in conn.execute(sa.select(dataset_versions))] == [(41, 1234.5, None)]
    finally:
        engine.dispose()


def test_many_reports_are_written_in_one_upsert_and_the_newest_of_a_cell_wins(engine: Engine) -> None:
    store = ReportStore(engine)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    apps = (AppEnforcement("app-1", "space-1", 1, 2, 5, ROSE), AppEnforcement("app-2", "", 0, 1))
    assert store.write([report(f"cell-{i:04d}") for i in range(1200)] + [report("cell-0001", 0, apps=apps)]) == 1200
    commits = [s for s in statements if "cell_reports" in s]
    assert len(commits) == 3  # 1200 rows in chunks of 500, one transaction
    assert store.write([report("cell-0002", 2, lagging=4)]) == 1  # an update in place
    rows = store.read()
    assert len(rows.reports) == 1200 and all(r.apps is None for r in rows.reports)
    one, two = rows.reports[1], rows.reports[2]
    assert (one.cell_id, one.dataset_version, one.current, one.drifted) == ("cell-0001", 0, 3, 1)
    assert (two.dataset_version, two.lagging, two.lagging_since) == (2, 4, ROSE.timestamp())
    assert abs(two.received_at - rows.now) < 60 and rows.version == 0
    with_apps = store.read(apps_containing=())
    assert json.loads(with_apps.reports[1].apps or "") == report("cell-0001", 0, apps=apps).to_json()["apps"]
    rising = store.read(rising_apps=True)
    assert [(r.cell_id, r.denials_rose_at) for r in rising.reports if r.apps is not None] == [
        ("cell-0001", ROSE.timestamp())]
    assert [r.cell_id for r in rising.reports if r.denials_rose_at is not None] == ["cell-0001"]
    assert [r.cell_id for r in store.read(apps_containing=('"guid":"app_2"',)).reports if r.apps] == []
    assert [r.cell_id for r in store.read(apps_containing=('"guid":"app-2"', '"space":""')).reports
            if r.apps] == ["cell-0001"]


def test_the_versions_cells_lack_are_read_with_the_reports(engine: Engine) -> None:
    policy, store = PolicyStore(engine), ReportStore(engine)
    for name in "abc":
        policy.replace([GroupRow(name, name, "[]", True, True, (), ())], cc_last_update=None)
    store.write([report("behind", 1), report("current", 3)])
    rows = store.read()
    assert rows.version == 3 and sorted(rows.versions) == [2, 3]  # behind lacks 2; 3 is current
    assert rows.versions[3].changed_at == rows.changed_at


def test_cells_silent_longer_than_the_bound_are_forgotten(engine: Engine) -> None:
    store = ReportStore(engine)
    store.write([report("gone"), report("here")])
    with engine.begin() as conn:
        conn.execute(sa.update(cell_reports).where(cell_reports.c.cell_id == "gone")
                     .values(received_at=cell_reports.c.received_at - 7200))
    assert store.forget_silent(3600) == 1
    assert [r.cell_id for r in store.read().reports] == ["here"]
    assert store.forget_silent(3600) == 0


def test_a_convergence_is_claimed_once_by_concurrent_claimants(engine: Engine, db_settings: DatabaseSettings
                                                              ) -> None:
    PolicyStore(engine).replace([GroupRow("a", "a", "[]", True, True, (), ())], cc_last_update=None)
    engines = [create_engine(db_settings) for _ in range(4)]
    won: list[float | None] = []
    start = threading.Barrier(len(engines))

    def claim(e: Engine) -> None:
        start.wait()
        won.append(ReportStore(e).claim_convergence(1))

    threads = [threading.Thread(target=claim, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert len(won) == 4 and len([w for w in won if w is not None]) == 1
    assert ReportStore(engine).claim_convergence(1) is None
    assert ReportStore(engine).read().versions[1].converged_at is not None
