"""Fixtures: the CC stand-in in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemons import InProcessStub, example_groups, inprocess_stub


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[InProcessStub]:
    with inprocess_stub(tmp_path, example_groups(7)) as stub:
        yield stub
