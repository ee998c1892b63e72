"""Invoke CNI plugins the way a container runtime does, against a test cell (support.cell).

Plugins run through the package's harness (:func:`dynamic_asgs.local.harness.invoke_cni`).

* The main plugin (``ptp`` with ``host-local`` IPAM from /usr/lib/cni) runs inside the
  cell namespace, so the host side of the container's veth lives in the cell.
* ``dynamic-asgs-cni`` runs in this namespace (where the agent's force endpoint and the
  policy server listen on 127.0.0.1); its iptables commands are wrapper scripts that run
  the real tools inside the cell namespace, so the root namespace's table is never touched.
* :meth:`CniCell.add` creates the container namespace (deleted with the cell) and chains
  ``ptp`` -> ``dynamic-asgs-cni`` with ``prevResult``; the container is registered with
  the cell so that :meth:`~support.cell.Cell.probe` works from it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_asgs.agent.endpoints import force_server
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.configs import CniConfig, PtpConfig
from dynamic_asgs.local.harness import CNI_DIR, Invocation, cni_plugin_path, invoke_cni, iptables_wrappers
from support.cell import UNDERLAY, Cell, CellContainer, _namespace, cell
from support.env import require, require_root_netns, require_tools

SUBNET = "10.254.0.0/24"
NETWORK = "dasg-test"
plugin_path = cni_plugin_path
invoke = invoke_cni


def require_cni() -> None:
    """Root, namespaces, legacy iptables, the reference CNI plugins and our executable."""
    require_root_netns()
    require_tools("iptables-legacy-restore", "iptables-legacy-save")
    require((CNI_DIR / "ptp").exists() and (CNI_DIR / "host-local").exists(),
            "the CNI reference plugins in /usr/lib/cni (Debian containernetworking-plugins)")
    require(plugin_path() is not None, "the dynamic-asgs-cni executable (pip install -e .)")


def write_wrappers(directory: Path, ns: str) -> dict[str, str]:
    """The harness's wrappers running the legacy iptables tools inside namespace ``ns``; config keys -> paths."""
    return iptables_wrappers(directory, ns, "legacy")


@dataclass
class CniCell:
    """A cell whose containers are made by the CNI chain ``ptp`` -> ``dynamic-asgs-cni``."""

    cell: Cell
    tmp: Path
    agent_address: str
    extra: dict[str, Any] = field(default_factory=dict)
    netns_of: dict[str, str] = field(default_factory=dict)
    ptp_results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.tmp / "container-metadata" / "store.json"

    def main_config(self) -> dict[str, Any]:
        return PtpConfig(network=NETWORK, subnet=SUBNET, ipam_dir=self.tmp / "ipam").to_json()

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Our plugin's configuration (as the runtime builds it from the conflist)."""
        return CniConfig(network=NETWORK, store=self.store, lock_file=self.cell.lock_file,
                         agent_address=self.agent_address, underlay_interfaces=(UNDERLAY,),
                         tools=write_wrappers(self.tmp / "bin", self.cell.ns),
                         extra={"policy_agent_timeout_seconds": 20, **self.extra, **overrides}).to_json()

    def add(self, handle: str, *, metadata: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
            **overrides: Any) -> Invocation:
        """Create the container namespace, run ptp ADD, then dynamic-asgs-cni ADD with prevResult."""
        if handle not in self.netns_of:
            self.netns_of[handle] = _namespace(self.cell._stack, "k")
        path = f"/var/run/netns/{self.netns_of[handle]}"
        main = invoke(str(CNI_DIR / "ptp"), "ADD", handle, self.main_config(), netns=path, ns=self.cell.ns)
        assert main.returncode == 0 and main.output is not None, f"ptp ADD failed: {main.output} {main.stderr}"
        self.ptp_results[handle] = main.output
        ip = main.output["ips"][0]["address"].split("/")[0]
        self.cell.containers[handle] = CellContainer(handle, len(self.cell.containers) + 1,
                                                     self.netns_of[handle], ip, "")
        conf = {**self.config(**overrides), "prevResult": main.output}
        if metadata is not None:
            conf["metadata"] = metadata
        if runtime is not None:
            conf["runtimeConfig"] = runtime
        return invoke(plugin(), "ADD", handle, conf, netns=path)

    def run(self, command: str, handle: str, **overrides: Any) -> Invocation:
        """DEL or CHECK of our plugin, with the cached prevResult as a runtime passes it."""
        conf = self.config(**overrides)
        if handle in self.ptp_results:
            conf["prevResult"] = self.ptp_results[handle]
        path = f"/var/run/netns/{self.netns_of[handle]}" if handle in self.netns_of else ""
        return invoke(plugin(), command, handle, conf, netns=path)

    def delete(self, handle: str) -> Invocation:
        """dynamic-asgs-cni DEL, then ptp DEL (as a runtime runs a chain's DEL: reversed)."""
        ours = self.run("DEL", handle)
        path = f"/var/run/netns/{self.netns_of[handle]}"
        conf = {**self.main_config(), "prevResult": self.ptp_results.get(handle)}
        main = invoke(str(CNI_DIR / "ptp"), "DEL", handle, conf, netns=path, ns=self.cell.ns)
        assert main.returncode == 0, f"ptp DEL failed: {main.output} {main.stderr}"
        return ours

    def store_entries(self) -> dict[str, Any]:
        return json.loads(self.store.read_text()) if self.store.exists() and self.store.read_text() else {}


def plugin() -> str:
    path = plugin_path()
    assert path is not None
    return path


@contextmanager
def static_rules_cell(backend: str, tmp_path: Path, destinations: Sequence[str],
                      **settings: Any) -> Iterator[CniCell]:
    """A cell whose CNI writes Garden's static rules itself: its agent answers 405 (ASG syncing off).

    ``destinations`` listen on TCP 80 on the underlay; ``settings`` are added to the CNI's config.
    """
    from support.stack import cell_tools  # support.stack starts daemons; imported only when used

    require_cni()
    server = force_server(host="127.0.0.1", port=0, enabled=False, sync_container=lambda h: None,
                          cleanup_container=lambda h: None, logger=Logger("stand-in", stream=io.StringIO())).start()
    try:
        with cell(backend, tmp_path) as c:
            c.add_destination("d", list(destinations), tcp=[80])
            yield CniCell(c, tmp_path / "cni", f"127.0.0.1:{server.port}",
                          {**cell_tools(c, tmp_path / "tools"), **settings})
    finally:
        server.stop()
