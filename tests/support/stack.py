"""The whole system as real processes: cc-stub -> syncer -> policy server -> agent on a namespace cell.

All processes start through the package's harness (:mod:`dynamic_asgs.local.harness`, the
one ``local up`` uses); readiness is asked over HTTP.

* :func:`control_plane` starts the CC stand-in, the syncer and the policy server (SQLite)
  with short intervals and stops them afterwards.
* :func:`cell_tools` writes the harness's wrapper scripts that run the cell's backend's
  iptables tools inside the cell namespace, so daemons in the root namespace (where the
  policy server's loopback port is) manage the cell's tables and never the root namespace's.
* :func:`start_agent` runs ``vxlan-policy-agent`` for a cell; :class:`Agent` drives its
  local endpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from dynamic_asgs.local import harness
from dynamic_asgs.local.configs import AgentConfig
from dynamic_asgs.local.harness import ProcessExited, free_port
from dynamic_asgs.metadata_store import MetadataStore
from support.cell import Cell
from support.daemons import CCStub, Daemon, PolicyServer, start_cc_stub, start_policy_server, syncer_settings

__all__ = ["Agent", "ControlPlane", "asg", "cell_tools", "control_plane", "start_agent", "store_add"]


def asg(name: str, rules: list[dict[str, Any]], *, running: list[str] = (), staging: list[str] = (),  # type: ignore[assignment]
        globally_enabled: bool = False, guid: str | None = None) -> dict[str, Any]:
    """A CC v3 security group resource as the stand-in serves it."""
    return {
        "guid": guid or f"guid-{name}", "name": name, "rules": rules,
        "globally_enabled": {"running": globally_enabled, "staging": False},
        "relationships": {"running_spaces": {"data": [{"guid": s} for s in running]},
                          "staging_spaces": {"data": [{"guid": s} for s in staging]}},
    }


@dataclass
class ControlPlane:
    """The running control plane (see :func:`control_plane`)."""

    stub: CCStub
    syncer: Daemon
    policy: PolicyServer


@contextmanager
def control_plane(tmp_path: Path, groups: list[dict[str, Any]], *, poll: int = 1,
                  policy: dict[str, Any] | None = None) -> Iterator[ControlPlane]:
    """cc-stub serving ``groups``, a syncer polling every ``poll`` s and a policy server (``policy``: more of its
    configuration), on SQLite."""
    database = {"type": "sqlite", "database_name": str(tmp_path / "policy.db")}
    with ExitStack() as stack:
        stub = start_cc_stub(tmp_path, groups)
        stack.callback(stub.daemon.stop)
        syncer = harness.start_syncer(syncer_settings(stub, database, name="syncer", asg_poll_interval_seconds=poll,
                                                      metrics_port=free_port()),
                                      config_file=tmp_path / "syncer.json", log=tmp_path / "syncer.log", spawn=Daemon)
        assert isinstance(syncer.process, Daemon)
        stack.callback(syncer.process.stop)
        syncer.wait_synced()
        server = start_policy_server(tmp_path, database, workers=1, dataset_check_interval_ms=200, **(policy or {}))
        stack.callback(server.daemon.stop)
        yield ControlPlane(stub, syncer.process, server)


def cell_tools(cell: Cell, directory: Path) -> dict[str, str]:
    """Wrapper scripts for the cell's iptables tools: config key -> path."""
    return harness.iptables_wrappers(directory, cell.ns, cell.backend)


def store_add(store: Path, cell: Cell, handle: str, *, space: str, app: str | None = None,
              workload: str = "app") -> None:
    """Write ``handle`` (already a container of ``cell``) into the metadata store, as the CNI does."""
    c = cell.containers[handle]
    MetadataStore(store).add(handle, c.ip, {"app_id": app or f"app-{handle}", "space_id": space,
                                            "org_id": "org-1", "container_workload": workload,
                                            "policy_group_id": app or f"app-{handle}"}, ipv6=c.ip6)


@dataclass
class Agent:
    """A running ``vxlan-policy-agent`` and its loopback endpoints."""

    daemon: Daemon
    config: dict[str, Any]

    def _url(self, kind: str, path: str) -> str:
        port = self.config["force_policy_poll_cycle_port" if kind == "force" else "debug_server_port"]
        return f"http://127.0.0.1:{port}{path}"

    def force_container(self, handle: str) -> requests.Response:
        return requests.post(self._url("force", f"/force-asgs-for-container?container={handle}"), timeout=30)

    def force_cleanup(self, handle: str) -> requests.Response:
        return requests.post(self._url("force", f"/force-orphaned-asgs-cleanup?container={handle}"), timeout=30)

    def status(self) -> dict[str, Any]:
        r = requests.get(self._url("debug", "/asg-status"), timeout=10)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    @property
    def status_url(self) -> str:
        return self._url("debug", "/asg-status")

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.config['metrics_port']}/metrics", timeout=10).text


def start_agent(tmp_path: Path, cell: Cell, policy: PolicyServer, store: Path, *, name: str = "agent",
                **overrides: Any) -> Agent:
    """Start ``vxlan-policy-agent`` for ``cell`` (1 s poll) and wait until its endpoints answer.

    Ports are picked free just before the start; if another process takes one meanwhile (the
    agent exits with "Address already in use"), the start is tried again with new ports.
    """
    directory = tmp_path / name
    attempts = 3
    for attempt in range(1, attempts + 1):
        config = AgentConfig(
            policy_server_url=policy.url, client=policy.pki.client, store=store, lock_file=cell.lock_file,
            force_port=free_port(), debug_port=free_port(), metrics_port=free_port(), underlay_ips=("198.18.0.1",),
            poll_interval=1, tools=cell_tools(cell, directory / "bin"),
            # Cell.hook plays a CNI that is done once the parent exists (ours forces a sync; a test that plays
            # silk's cni-wrapper-plugin sets the settle time it needs).
            extra={"enable_ipv6": True, "new_container_settle_seconds": 0, **overrides},
        )
        try:
            started = harness.start_agent(config, config_file=directory / "vxlan-policy-agent.json",
                                          log=directory / "agent.log", timeout=30, spawn=Daemon)
        except ProcessExited as exc:
            if "Address already in use" in exc.log_tail and attempt < attempts:
                continue
            raise AssertionError(f"{name} exited at start: {exc.log_tail}") from None
        assert isinstance(started.process, Daemon)
        return Agent(started.process, config.to_json())
    raise AssertionError(f"{name}: no free ports after {attempts} attempts")
