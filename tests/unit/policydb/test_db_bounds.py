"""A session lost without a reset cannot hang the syncer: lock waits are bounded, idle transactions end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from dynamic_asgs.policydb import db
from support.daemons import database


@pytest.fixture(params=["postgres", "mariadb"])
def server_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with database(request.param, tmp_path) as settings:
        engine = db.create_engine(settings)
        try:
            yield engine
        finally:
            engine.dispose()


def test_every_session_carries_the_bounds(server_engine: Engine) -> None:
    with server_engine.connect() as conn:
        if server_engine.dialect.name == "postgresql":
            shown = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in
                     ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")}
            assert shown == {"lock_timeout": "30s", "statement_timeout": "2min",
                             "idle_in_transaction_session_timeout": "1min"}
        else:
            row = conn.exec_driver_sql("SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.wait_timeout").one()
            assert tuple(row) == (db.LOCK_WAIT_SECONDS, db.MYSQL_IDLE_SECONDS)
