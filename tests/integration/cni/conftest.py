"""Fixtures for the CNI chain tests: a cell (legacy iptables) and a stand-in agent on 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dynamic_asgs.agent.endpoints import LocalServer, force_server
from dynamic_asgs.lager import Logger
from support.cell import Cell, cell
from support.cni import require_cni


@dataclass
class StandInAgent:
    """The agent's real force server (exact status codes and bodies) with scripted behaviour."""

    enabled: bool = True
    fail_sync: str | None = None
    synced: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)

    def sync(self, handle: str) -> None:
        self.synced.append(handle)
        if self.fail_sync is not None:
            raise RuntimeError(self.fail_sync)

    def cleanup(self, handle: str) -> None:
        self.cleaned.append(handle)


@pytest.fixture
def the_cell(tmp_path: Path) -> Iterator[Cell]:
    require_cni()
    with cell("legacy", tmp_path) as c:
        yield c


@pytest.fixture
def stand_in() -> Callable[..., tuple[StandInAgent, str]]:
    servers: list[LocalServer] = []

    def start(*, enabled: bool = True, fail_sync: str | None = None) -> tuple[StandInAgent, str]:
        agent = StandInAgent(enabled, fail_sync)
        server = force_server(host="127.0.0.1", port=0, enabled=enabled, sync_container=agent.sync,
                              cleanup_container=agent.cleanup, logger=Logger("stand-in", stream=io.StringIO()))
        servers.append(server.start())
        return agent, f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()

