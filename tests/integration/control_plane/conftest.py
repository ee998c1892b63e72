"""Fixtures for the control-plane integration tests (real processes, real databases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.policydb.db import DatabaseSettings
from support.daemons import DB_ENGINES, database


@pytest.fixture(params=DB_ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSettings]:
    with database(request.param, tmp_path) as settings:
        yield settings


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[DatabaseSettings]:
    with database("sqlite", tmp_path) as settings:
        yield settings
