"""Every dataplane test runs in both chain layouts: what holds for one must hold for the other."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dynamic_asgs.asg.translate import ChainLayout
from support import plans


@pytest.fixture(autouse=True, params=list(ChainLayout), ids=str)
def layout(request: pytest.FixtureRequest) -> Iterator[ChainLayout]:
    """The layout every container of the test is planned in."""
    chosen = ChainLayout(request.param)
    with plans.layout(chosen):
        yield chosen
