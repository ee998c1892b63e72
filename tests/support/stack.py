"""The whole system as real processes: cc-stub -> syncer -> policy server -> agent on a namespace cell.

* :func:`control_plane` starts the CC stand-in, the syncer and the policy server (SQLite)
  with short intervals and stops them afterwards.
* :func:`cell_tools` writes wrapper scripts that run a backend's iptables tools (restore,
  save and the plain tool the agent lists single chains with) inside the cell
  namespace, so daemons in the root namespace (where the policy server's
  loopback port is) manage the cell's tables and never the root namespace's.
* :func:`start_agent` runs ``vxlan-policy-agent`` for a cell; :class:`Agent` drives its
  local endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from dynamic_asgs.metadata_store import MetadataStore
from support.cell import Cell
from support.daemons import (
    CCStub,
    Daemon,
    PolicyServer,
    free_port,
    start_cc_stub,
    start_policy_server,
    start_syncer,
    wait_for,
)

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
def control_plane(tmp_path: Path, groups: list[dict[str, Any]], *, poll: int = 1) -> Iterator[ControlPlane]:
    """cc-stub serving ``groups``, a syncer polling every ``poll`` s and a policy server, on SQLite."""
    database = {"type": "sqlite", "database_name": str(tmp_path / "policy.db")}
    with ExitStack() as stack:
        stub = start_cc_stub(tmp_path, groups)
        stack.callback(stub.daemon.stop)
        syncer = start_syncer(tmp_path, stub, database, asg_poll_interval_seconds=poll)
        stack.callback(syncer.stop)
        wait_for(lambda: syncer.events("sync-complete") or syncer.events("sync-unchanged"), timeout=60,
                 what="the syncer's first sync")
        policy = start_policy_server(tmp_path, database, workers=1, dataset_check_interval_ms=200)
        stack.callback(policy.daemon.stop)
        yield ControlPlane(stub, syncer, policy)


def cell_tools(cell: Cell, directory: Path) -> dict[str, str]:
    """Wrapper scripts for the cell's iptables tools: config key -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for version, prefix in ((4, "iptables"), (6, "ip6tables")):
        for kind in ("restore", "save", ""):
            path = directory / (f"{prefix}-{kind}" if kind else prefix)
            path.write_text(f"#!/bin/sh\nexec ip netns exec {cell.ns} {cell.tool(version, kind)} \"$@\"\n")
            path.chmod(0o755)
            if kind:
                keys[f"{prefix}_{kind}_command"] = str(path)
    return keys


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
        config: dict[str, Any] = {
            "policy_server_url": policy.url, "ca_cert_file": str(policy.pki.client.ca),
            "client_cert_file": str(policy.pki.client.cert), "client_key_file": str(policy.pki.client.key),
            "cni_datastore_path": str(store), "iptables_lock_file": str(cell.lock_file),
            "asg_poll_interval": 1, "force_policy_poll_cycle_port": free_port(), "debug_server_port": free_port(),
            "metrics_port": free_port(), "enable_ipv6": True, "underlay_ips": ["198.18.0.1"],
            # Cell.hook plays a CNI that is done once the parent exists (ours forces a sync; a test that plays
            # silk's cni-wrapper-plugin sets the settle time it needs).
            "new_container_settle_seconds": 0,
            **cell_tools(cell, directory / "bin"), **overrides,
        }
        agent = _launch(directory, config, name, last=attempt == attempts)
        if agent is not None:
            return agent
    raise AssertionError(f"{name}: no free ports after {attempts} attempts")


def _launch(directory: Path, config: dict[str, Any], name: str, *, last: bool) -> Agent | None:
    """The started agent; None when it exited because a port was taken (and this is not the ``last`` try)."""
    config_file = directory / "vxlan-policy-agent.json"
    config_file.write_text(json.dumps(config))
    log = directory / "agent.log"
    agent = Agent(Daemon(["vxlan-policy-agent", "--config-file", str(config_file)], log), config)
    try:
        wait_for(lambda: not agent.daemon.running() or requests.get(agent._url("debug", "/log-level"), timeout=2).ok,
                 timeout=30, what=f"{name}'s debug endpoint")
    except AssertionError:
        agent.daemon.stop()
        raise
    if agent.daemon.running():
        return agent
    agent.daemon.stop()
    text = log.read_text(errors="replace")
    if "Address already in use" in text and not last:
        return None
    raise AssertionError(f"{name} exited at start: {text[-2000:]}")
