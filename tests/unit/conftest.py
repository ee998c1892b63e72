"""Fixtures shared by the unit tests: a migrated policy DB on every backend (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from support.daemons import DB_ENGINES, InProcessStub, database, example_groups, inprocess_stub


@pytest.fixture(params=DB_ENGINES)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSettings]:
    with database(request.param, tmp_path) as settings:
        yield settings


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = create_engine(db_settings)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[InProcessStub]:
    """The CC stand-in, served from this process."""
    with inprocess_stub(tmp_path, example_groups(7)) as stub:
        yield stub
