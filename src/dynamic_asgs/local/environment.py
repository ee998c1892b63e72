"""The all-in-one local environment: the whole system on one Linux machine (root needed).

:meth:`LocalEnv.up` starts, each as a real process with its config and log under the
state directory: the Cloud Controller stand-in (ASGs from a file, edits picked up
live), the syncer and the policy server on SQLite, the agent and netmon for one cell
in network namespaces, and a destination namespace with listening services. App
containers are created through the CNI chain a runtime would run: ``ptp`` with
``host-local`` IPAM, then ``dynamic-asgs-cni``. Everything created is recorded in
``state.json`` as it is created, so :meth:`LocalEnv.down` removes it all, even after
a crash half-way through ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from dynamic_asgs.agent.status import AgentStatus, format_instant
from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.local import topology
from dynamic_asgs.local.pki import make_pki

__all__ = ["SPACES", "LocalEnv", "default_asgs", "free_port"]

STATE_FILE = "state.json"
CNI_DIR = Path("/usr/lib/cni")
NETWORK = "dasg-local"
#: (name, guid) of the spaces containers are placed in, round robin; guids as in examples/asgs.yml.
SPACES = (("payments", "8c5f0c7e-0000-4000-8000-00000000000a"), ("marketing", "8c5f0c7e-0000-4000-8000-00000000000c"))
_TOOLS = {"ip": "iproute2", "iptables-legacy-restore": "iptables", "iptables-nft-restore": "iptables"}


def default_asgs() -> Path:
    """``examples/asgs.yml`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[3] / "examples" / "asgs.yml"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dynamic_asgs.cli", *args]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    error = ""
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError, requests.RequestException) as exc:
            error, value = f" (last error: {exc})", None
        if value:
            return value
        time.sleep(0.1)
    raise DynamicASGsError(f"timed out after {timeout:.0f} s waiting for {what}{error}")


class LocalEnv:
    """One local environment, described by ``<state_dir>/state.json``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir).resolve()
        self.state: dict[str, Any] = {}

    # -- state -----------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def load(self) -> LocalEnv:
        """Read the state of an environment that is (or was) up; error when there is none."""
        try:
            self.state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            raise DynamicASGsError(f"no local environment in {self.dir} (start one with `dynamic-asgs local up`)")\
                from None
        except ValueError as exc:
            raise DynamicASGsError(f"{self._state_path}: unreadable state: {exc}") from None
        return self

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self._state_path)

    def _path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def container_ns(self, name: str) -> str:
        """The namespace of container ``name``; error naming the containers there are."""
        containers = self.state.get("containers", {})
        if name not in containers:
            raise DynamicASGsError(f"no container {name!r} (there are: {', '.join(containers) or 'none'})")
        return str(containers[name]["ns"])

    # -- up ----------------------------------------------------------------------------------

    @staticmethod
    def check_machine(backend: str) -> None:
        """Fail with what is missing when this machine cannot run the environment."""
        if os.geteuid() != 0:
            raise DynamicASGsError("local up needs root: it creates network namespaces and iptables rules "
                                   "inside them (try: sudo .venv/bin/dynamic-asgs local up)")
        missing = [f"{tool} (Debian package {pkg})" for tool, pkg in _TOOLS.items()
                   if (backend in tool or "-" not in tool) and shutil.which(tool) is None]
        missing += [f"{CNI_DIR / p} (Debian package containernetworking-plugins)" for p in ("ptp", "host-local")
                    if not (CNI_DIR / p).exists()]
        if shutil.which("dynamic-asgs-cni") is None and not Path(sys.executable).with_name("dynamic-asgs-cni").exists():
            missing.append("dynamic-asgs-cni (install the project: scripts/bootstrap)")
        if missing:
            raise DynamicASGsError("local up needs: " + "; ".join(missing))

    def up(self, *, asgs: Path | None, containers: int, backend: str = "legacy") -> None:
        """Create and start everything; on failure remove what was created and raise.

        Without ``asgs``, a copy of :func:`default_asgs` in the state dir is served (edit that)."""
        self.check_machine(backend)
        source = asgs or default_asgs()
        if not source.is_file():
            raise DynamicASGsError(f"--asgs {source}: no such file" if asgs else f"{source} not found: give --asgs")
        if self._state_path.exists():
            raise DynamicASGsError(f"{self.dir} holds a local environment already (stop it: dynamic-asgs local "
                                   f"down --state-dir {self.dir})")
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if asgs is None:
            asgs = self._path("asgs.yml")
            asgs.write_text(source.read_text())
        env_id = "dasg" + secrets.token_hex(3)
        self.state = {"id": env_id, "pid": os.getpid(), "created_dir": created, "backend": backend,
                      "asgs": str(asgs.resolve()), "asgs_copied": asgs == self._path("asgs.yml") and source != asgs,
                      "namespaces": [], "processes": {}, "containers": {}, "ports": {}, "ready": False}
        for sub in ("logs", "config", "bin", "ipam", "run"):
            self._path(sub).mkdir(exist_ok=True)
        self._save()
        try:
            self._start(containers)
        except BaseException:
            self.down()
            raise
        self.state["ready"] = True
        self._save()

    def _start(self, containers: int) -> None:
        env_id = self.state["id"]
        cell, dest = f"{env_id}-cell", f"{env_id}-dest"
        for ns in (cell, dest):
            topology.add_namespace(ns)
            self.state["namespaces"].append(ns)
            self._save()
        topology.wire_cell(cell, dest)
        topology.wire_destination(dest)
        self.state.update(cell=cell, dest=dest)
        self._spawn("services", [sys.executable, "-m", "dynamic_asgs.local.netprobe", "listen",
                                 "--tcp", ",".join(str(p) for s in topology.SERVICES for p in s.tcp),
                                 "--udp", ",".join(str(p) for s in topology.SERVICES for p in s.udp),
                                 "--addrs", ",".join(s.address for s in topology.SERVICES)], ns=dest)
        self._control_plane()
        self._cell(cell)
        for i in range(1, containers + 1):
            self._add_container(f"c{i}", SPACES[(i - 1) % len(SPACES)])

    def _spawn(self, name: str, argv: list[str], *, ns: str | None = None) -> None:
        with open(self._path("logs", f"{name}.log"), "ab") as log:
            proc = subprocess.Popen((["ip", "netns", "exec", ns] if ns else []) + argv, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.state["processes"][name] = proc.pid
        self._save()

    def _log_has(self, name: str, suffix: str) -> bool:
        text = self._path("logs", f"{name}.log").read_text(errors="replace")
        if not _alive(self.state["processes"][name]):
            raise DynamicASGsError(f"{name} exited; see {self._path('logs', name + '.log')}:\n{text[-2000:]}")
        return f'{suffix}"' in text

    def _config(self, name: str, doc: dict[str, Any]) -> str:
        path = self._path("config", f"{name}.json")
        path.write_text(json.dumps(doc, indent=2))
        path.chmod(0o600)
        return str(path)

    def _control_plane(self) -> None:
        ports = self.state["ports"]
        ports_file = self._path("run", "cc-ports.json")
        self._spawn("cc-stub", _cli("cc-stub", "--asgs", self.state["asgs"], "--pki-dir", str(self._path("pki", "cc")),
                                    "--port", "0", "--internal-port", "0", "--control-port", "0",
                                    "--ports-file", str(ports_file)))
        cc = _wait(lambda: ports_file.exists() and json.loads(ports_file.read_text()), "the CC stand-in's ports")
        ports.update({f"cc_{k}": v for k, v in cc.items()})
        cc_pki = self._path("pki", "cc")
        database = {"type": "sqlite", "database_name": str(self._path("policy.db"))}
        cc_url, ca = f"https://127.0.0.1:{cc['public']}", str(cc_pki / "cc-ca.crt")
        self._spawn("syncer", _cli("policy-server-asg-syncer", "--config-file", self._config("syncer", {
            "database": database, "uaa_client": "network-policy", "uaa_client_secret": "network-policy-secret",
            "uaa_url": cc_url, "uaa_ca": ca, "cc_url": cc_url, "cc_ca_cert": ca,
            "cc_internal_url": f"https://127.0.0.1:{cc['internal']}", "cc_internal_ca_cert": ca,
            "cc_internal_client_cert": str(cc_pki / "cc-client.crt"),
            "cc_internal_client_key": str(cc_pki / "cc-client.key"),
            "asg_poll_interval_seconds": 1, "metrics_port": 0, "uuid": "local-syncer"})))
        _wait(lambda: self._log_has("syncer", ".sync-complete"), "the syncer's first sync")
        pki = make_pki(self._path("pki", "policy-server"), name="policy-server")
        ports.update(policy_server=free_port(), policy_health=free_port(), policy_metrics=free_port())
        self._spawn("policy-server", _cli("policy-server", "--config-file", self._config("policy-server", {
            "database": database, "listen_host": "127.0.0.1", "internal_listen_port": ports["policy_server"],
            "health_check_port": ports["policy_health"], "metrics_port": ports["policy_metrics"], "workers": 1,
            "ca_cert_file": str(pki.server.ca), "server_cert_file": str(pki.server.cert),
            "server_key_file": str(pki.server.key), "dataset_check_interval_ms": 200})))
        _wait(lambda: requests.get(f"http://127.0.0.1:{ports['policy_health']}/health", timeout=2).ok,
              "the policy server's health check")
        self.state["policy_pki"] = {"ca": str(pki.client.ca), "cert": str(pki.client.cert),
                                    "key": str(pki.client.key)}
        self._save()

    def _tools(self, cell: str) -> dict[str, str]:
        """Wrappers running the backend's iptables tools in the cell namespace (daemons stay in the root ns)."""
        keys = {}
        for name in ("iptables", "ip6tables"):
            for kind in ("restore", "save"):
                path = self._path("bin", f"{name}-{kind}")
                path.write_text(f"#!/bin/sh\nexec ip netns exec {cell} {name}-{self.state['backend']}-{kind} \"$@\"\n")
                path.chmod(0o755)
                keys[f"{name}_{kind}_command"] = str(path)
        return keys

    def _cell(self, cell: str) -> None:
        ports, pki = self.state["ports"], self.state["policy_pki"]
        ports.update(agent_force=free_port(), agent_debug=free_port(), agent_metrics=free_port(),
                     netmon_metrics=free_port())
        self.state["store"] = str(self._path("container-metadata", "store.json"))
        self._path("container-metadata").mkdir(exist_ok=True)
        self.state["lock_file"] = str(self._path("iptables.lock"))
        self._spawn("vxlan-policy-agent", _cli("vxlan-policy-agent", "--config-file", self._config("agent", {
            "policy_server_url": f"https://127.0.0.1:{ports['policy_server']}", "ca_cert_file": pki["ca"],
            "client_cert_file": pki["cert"], "client_key_file": pki["key"],
            "cni_datastore_path": self.state["store"], "iptables_lock_file": self.state["lock_file"],
            "asg_poll_interval": 5, "force_policy_poll_cycle_port": ports["agent_force"],
            "debug_server_port": ports["agent_debug"], "metrics_port": ports["agent_metrics"],
            "underlay_ips": ["192.0.2.1"], **self._tools(cell)})))
        _wait(lambda: requests.get(f"http://127.0.0.1:{ports['agent_debug']}/log-level", timeout=2).ok,
              "the agent's debug endpoint")
        backend = self.state["backend"]
        self._spawn("netmon", _cli("netmon", "--config-file", self._config("netmon", {
            "poll_interval": 5, "interface_name": topology.UNDERLAY, "metrics_port": ports["netmon_metrics"],
            "iptables_lock_file": self.state["lock_file"], "iptables_save_command": f"iptables-{backend}-save",
            "ip6tables_save_command": f"ip6tables-{backend}-save"})), ns=cell)

    # -- containers --------------------------------------------------------------------------

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0", "name": NETWORK, "type": "dynamic-asgs-cni",
            "policy_agent_force_poll_address": f"127.0.0.1:{self.state['ports']['agent_force']}",
            "datastore": self.state["store"], "iptables_lock_file": self.state["lock_file"],
            "underlay_interface_names": [topology.UNDERLAY], **self._tools(self.state["cell"]),
        }

    def _ptp_config(self) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.255.0.0/24"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self._path("ipam"))}}

    def _cni(self, plugin: str, command: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Invoke a CNI plugin as a runtime does (environment + stdin); the main plugin runs in the cell."""
        c = self.state["containers"][name]
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": c["handle"], "CNI_NETNS": f"/var/run/netns/{c['ns']}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(CNI_DIR), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if plugin == "ptp":
            argv = ["ip", "netns", "exec", self.state["cell"], str(CNI_DIR / "ptp")]
        else:
            argv = [shutil.which("dynamic-asgs-cni") or str(Path(sys.executable).with_name("dynamic-asgs-cni"))]
        proc = subprocess.run(argv, input=json.dumps(config), env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            try:
                message = json.loads(proc.stdout)["msg"]
            except (ValueError, KeyError, TypeError):
                message = (proc.stdout + proc.stderr).strip()
            raise DynamicASGsError(f"CNI {command} of {name} ({plugin}): {message}")
        result: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
        return result

    def _add_container(self, name: str, space: tuple[str, str]) -> None:
        ns = f"{self.state['id']}-{name}"
        topology.add_namespace(ns)
        self.state["namespaces"].append(ns)
        handle = f"{self.state['id']}-{name}"
        app = f"app-{name}"
        self.state["containers"][name] = {"ns": ns, "handle": handle, "space": space[0], "space_guid": space[1],
                                          "app_guid": app, "ip": None, "cni": []}
        self._save()
        result = self._cni("ptp", "ADD", name, self._ptp_config())
        self.state["containers"][name]["cni"].append("ptp")
        self._save()
        metadata = {"app_id": app, "space_id": space[1], "org_id": "local-org", "policy_group_id": app,
                    "container_workload": "app"}
        self._cni("dynamic-asgs-cni", "ADD", name,
                  {**self._cni_config(), "prevResult": result, "metadata": metadata})
        self.state["containers"][name]["cni"].append("dynamic-asgs-cni")
        self.state["containers"][name]["ip"] = result["ips"][0]["address"].split("/")[0]
        self._save()

    # -- down --------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every container, process, namespace and file this environment created.

        Returns the problems met (each step is tried regardless of the others)."""
        problems: list[str] = []
        for name, c in reversed(list(self.state.get("containers", {}).items())):
            for plugin in reversed(c.get("cni", [])):
                config = self._ptp_config() if plugin == "ptp" else self._cni_config()
                try:
                    self._cni(plugin, "DEL", name, config)
                except DynamicASGsError as exc:
                    problems.append(str(exc))
        for name, pid in reversed(list(self.state.get("processes", {}).items())):
            _stop(pid)
            if _alive(pid):
                problems.append(f"{name} (pid {pid}) did not stop")
        for ns in reversed(self.state.get("namespaces", [])):
            try:
                topology.delete_namespace(ns)
            except DynamicASGsError as exc:
                problems.append(str(exc))
        if self.state.get("created_dir"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            entries = ["logs", "config", "bin", "ipam", "run", "pki", "container-metadata", "iptables.lock",
                       STATE_FILE, "state.tmp", *(p.name for p in self.dir.glob("policy.db*"))]
            if self.state.get("asgs_copied"):
                entries.append("asgs.yml")
            for entry in entries:
                path = self._path(entry)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return problems

    def stop(self, timeout: float = 90.0) -> list[str]:
        """``local down``: ask the ``up`` process to tear down, or do it here when it is gone."""
        up = int(self.state.get("pid", 0))
        if up and up != os.getpid() and _alive(up):
            os.kill(up, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(up):
                time.sleep(0.1)
            if not _alive(up):
                return [] if not self._state_path.exists() else self.load().down()
            with contextlib.suppress(ProcessLookupError):
                os.kill(up, signal.SIGKILL)
        return self.down()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per container: space, workload, rule count, ruleset, applied at; plus the dataset version."""
        ports = self.state["ports"]
        try:
            agent = AgentStatus.from_json(
                requests.get(f"http://127.0.0.1:{ports['agent_debug']}/asg-status", timeout=5).json())
        except (requests.RequestException, ValueError) as exc:
            raise DynamicASGsError(f"the agent's status endpoint does not answer: {exc}") from None
        rows = {}
        for name, c in self.state["containers"].items():
            e = agent.containers.get(c["handle"])
            rows[name] = {"handle": c["handle"], "ip": c["ip"], "space": c["space"],
                          "workload": e.workload if e else None, "rule_count": e.rule_count if e else None,
                          "ruleset": e.ruleset.get("ipv4") if e else None,
                          "dataset_version": e.dataset_version if e else None,
                          "applied_at": format_instant(e.applied_at) if e else None}
        return {"dataset_version": agent.dataset_version,
                "dataset_changed_at": format_instant(agent.dataset_changed_at),
                "containers": rows, "processes": {n: _alive(p) for n, p in self.state["processes"].items()}}


def _stop(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM ``pid``'s process group, then SIGKILL it if it is still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
