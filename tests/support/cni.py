"""Invoke CNI plugins the way a container runtime does, against a test cell (support.cell).

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
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_asgs.agent.endpoints import force_server
from dynamic_asgs.lager import Logger
from support.cell import UNDERLAY, Cell, CellContainer, _namespace, cell
from support.env import require, require_root_netns, require_tools

CNI_DIR = Path("/usr/lib/cni")
SUBNET = "10.254.0.0/24"
NETWORK = "dasg-test"


def require_cni() -> None:
    """Root, namespaces, legacy iptables, the reference CNI plugins and our executable."""
    require_root_netns()
    require_tools("iptables-legacy-restore", "iptables-legacy-save")
    require((CNI_DIR / "ptp").exists() and (CNI_DIR / "host-local").exists(),
            "the CNI reference plugins in /usr/lib/cni (Debian containernetworking-plugins)")
    require(plugin_path() is not None, "the dynamic-asgs-cni executable (pip install -e .)")


def plugin_path() -> str | None:
    """The ``dynamic-asgs-cni`` executable (beside this interpreter, else on PATH)."""
    import sys

    beside = Path(sys.executable).with_name("dynamic-asgs-cni")
    return str(beside) if beside.exists() else shutil.which("dynamic-asgs-cni")


def write_wrappers(directory: Path, ns: str) -> dict[str, str]:
    """Shell wrappers running the legacy iptables tools inside namespace ``ns``; config keys -> paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, tool in (("iptables_restore_command", "iptables-legacy-restore"),
                      ("iptables_save_command", "iptables-legacy-save"),
                      ("ip6tables_restore_command", "ip6tables-legacy-restore"),
                      ("ip6tables_save_command", "ip6tables-legacy-save")):
        path = directory / tool
        path.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {tool} "$@"\n')
        path.chmod(0o755)
        out[key] = str(path)
    return out


@dataclass
class Invocation:
    """One plugin run: exit status, parsed stdout (None when empty), stderr."""

    returncode: int
    output: dict[str, Any] | None
    stderr: str


def invoke(plugin: str, command: str, handle: str, config: dict[str, Any] | bytes, *, netns: str = "",
           ns: str | None = None, ifname: str = "eth0") -> Invocation:
    """Run ``plugin`` with the CNI environment and ``config`` on stdin (inside ``ns`` when given)."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": handle, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": str(CNI_DIR), "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    cmd = [plugin]
    if ns is not None:  # a runtime in that namespace: the plugin inherits it, with the CNI variables
        cmd = ["ip", "netns", "exec", ns, "env", *(f"{k}={v}" for k, v in env.items()), plugin]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120)
    text = proc.stdout.decode().strip()
    return Invocation(proc.returncode, json.loads(text) if text else None, proc.stderr.decode())


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
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(self.tmp / "ipam"),
                         "routes": [{"dst": "0.0.0.0/0"}]}}

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Our plugin's configuration (as the runtime builds it from the conflist)."""
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "dynamic-asgs-cni",
                "datastore": str(self.store), "iptables_lock_file": str(self.cell.lock_file),
                "policy_agent_force_poll_address": self.agent_address, "policy_agent_timeout_seconds": 20,
                "underlay_interface_names": [UNDERLAY], **write_wrappers(self.tmp / "bin", self.cell.ns),
                **self.extra, **overrides}

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
