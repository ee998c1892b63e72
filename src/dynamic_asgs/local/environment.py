"""The all-in-one local environment: the whole system on one Linux machine (root needed).

:meth:`LocalEnv.up` starts, each as a real process with its config and log under the
state directory and through the package's harness (:mod:`.harness`, the one the tests
use too): the Cloud Controller stand-in (ASGs from a file, edits picked up live), the
syncer and the policy server on SQLite, the agent and netmon for one cell in network
namespaces, and a destination namespace with listening services. App containers are
created through the CNI chain a runtime would run: ``ptp`` with ``host-local`` IPAM,
then ``dynamic-asgs-cni``. What is created (namespaces, processes, containers, entries
of the state directory) is recorded in ``state.json`` (:class:`EnvState`) as it is
created, so :meth:`LocalEnv.down` removes exactly that, even after a crash half-way
through ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import requests

from dynamic_asgs.agent.status import AgentStatus, format_instant
from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.local import examples, harness, topology
from dynamic_asgs.local.configs import (
    AgentConfig,
    CniConfig,
    NetmonConfig,
    PolicyServerConfig,
    PtpConfig,
    SyncerConfig,
)
from dynamic_asgs.local.harness import CNI_DIR, alive, free_port, stop_pid
from dynamic_asgs.local.pki import Issued, make_pki

__all__ = ["SPACES", "ContainerState", "EnvState", "LocalEnv", "Ports", "default_asgs"]

STATE_FILE = "state.json"
NETWORK = "dasg-local"
#: (name, guid) of the spaces containers are placed in, round robin; guids as in examples/asgs.yml.
SPACES = (("payments", "8c5f0c7e-0000-4000-8000-00000000000a"), ("marketing", "8c5f0c7e-0000-4000-8000-00000000000c"))
_TOOLS = {"ip": "iproute2", "iptables-legacy-restore": "iptables", "iptables-nft-restore": "iptables"}


def default_asgs() -> Path:
    """The example security groups shipped in the package (``local/examples/asgs.yml``)."""
    return examples.ASGS


@dataclass
class ContainerState:
    """One app container: its namespace, handle, space, address and the CNI plugins that added it."""

    ns: str
    handle: str
    space: str
    space_guid: str
    app_guid: str
    ip: str | None = None
    cni: list[str] = field(default_factory=list)


@dataclass
class Ports:
    """The loopback ports of the processes (0: not picked yet)."""

    cc_public: int = 0
    cc_internal: int = 0
    cc_control: int = 0
    syncer_metrics: int = 0
    policy_server: int = 0
    policy_health: int = 0
    policy_metrics: int = 0
    agent_force: int = 0
    agent_debug: int = 0
    agent_metrics: int = 0
    netmon_metrics: int = 0


@dataclass
class EnvState:
    """``state.json``: what one environment created, recorded as it is created."""

    id: str
    pid: int
    backend: str
    asgs: str
    created_dir: bool
    #: Entries of the state directory this environment created (``down`` removes these, nothing else).
    entries: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)
    containers: dict[str, ContainerState] = field(default_factory=dict)
    ports: Ports = field(default_factory=Ports)
    cell: str = ""
    dest: str = ""
    ready: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> EnvState:
        """Read a document written by :meth:`to_json`; ValueError when it is not one."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        try:
            values = {f.name: doc[f.name] for f in fields(cls) if f.name in doc}
            values["containers"] = {n: ContainerState(**c) for n, c in doc.get("containers", {}).items()}
            values["ports"] = Ports(**doc.get("ports", {}))
            return cls(**values)
        except (TypeError, AttributeError) as exc:
            raise ValueError(str(exc)) from None


class LocalEnv:
    """One local environment, described by ``<state_dir>/state.json``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir).resolve()
        self._state: EnvState | None = None

    @property
    def state(self) -> EnvState:
        """The environment's state (after :meth:`up` or :meth:`load`)."""
        if self._state is None:
            raise DynamicASGsError(f"no local environment loaded from {self.dir}")
        return self._state

    # -- state -----------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def load(self) -> LocalEnv:
        """Read the state of an environment that is (or was) up; error when there is none."""
        try:
            self._state = EnvState.from_json(json.loads(self._state_path.read_text()))
        except FileNotFoundError:
            raise DynamicASGsError(f"no local environment in {self.dir} (start one with `dynamic-asgs local up`)")\
                from None
        except ValueError as exc:
            raise DynamicASGsError(f"{self._state_path}: unreadable state: {exc}") from None
        return self

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state.to_json(), indent=2))
        os.replace(tmp, self._state_path)

    def _path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def _entry(self, name: str, *, directory: bool = True) -> Path:
        """Create entry ``name`` of the state dir (a directory, or a file's place) and record it."""
        path = self._path(name)
        if name not in self.state.entries:
            self.state.entries.append(name)
            self._save()
        if directory:
            path.mkdir(exist_ok=True)
        return path

    @property
    def store(self) -> Path:
        """The cell's container metadata store."""
        return self._path("container-metadata", "store.json")

    @property
    def lock_file(self) -> Path:
        """The cell's iptables lock file."""
        return self._path("iptables.lock")

    def container_ns(self, name: str) -> str:
        """The namespace of container ``name``; error naming the containers there are."""
        containers = self.state.containers
        if name not in containers:
            raise DynamicASGsError(f"no container {name!r} (there are: {', '.join(containers) or 'none'})")
        return containers[name].ns

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
        if harness.cni_plugin_path() is None:
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
        copy = self._path("asgs.yml")
        self._state = EnvState(id="dasg" + secrets.token_hex(3), pid=os.getpid(), backend=backend,
                               asgs=str((asgs or copy).resolve()), created_dir=created)
        self._save()
        try:
            if asgs is None:
                self._entry("asgs.yml", directory=False).write_text(source.read_text())
            self._start(containers)
        except BaseException:
            self.down()
            raise
        self.state.ready = True
        self._save()

    def _start(self, containers: int) -> None:
        s = self.state
        cell, dest = f"{s.id}-cell", f"{s.id}-dest"
        for ns in (cell, dest):
            topology.add_namespace(ns)
            s.namespaces.append(ns)
            self._save()
        topology.wire_cell(cell, dest)
        topology.wire_destination(dest)
        s.cell, s.dest = cell, dest
        self._spawn("services", harness.Process([], self._log("services"), ns=dest, argv=[
            sys.executable, "-m", "dynamic_asgs.local.netprobe", "listen",
            "--tcp", ",".join(str(p) for svc in topology.SERVICES for p in svc.tcp),
            "--udp", ",".join(str(p) for svc in topology.SERVICES for p in svc.udp),
            "--addrs", ",".join(svc.address for svc in topology.SERVICES)]))
        client = self._control_plane()
        self._cell(client)
        for i in range(1, containers + 1):
            self._add_container(f"c{i}", SPACES[(i - 1) % len(SPACES)])

    def _log(self, name: str) -> Path:
        return self._entry("logs") / f"{name}.log"

    def _config(self, name: str) -> Path:
        return self._entry("config") / f"{name}.json"

    def _spawn(self, name: str, process: harness.Process) -> harness.Process:
        self.state.processes[name] = process.pid
        self._save()
        return process

    def _recorder(self, name: str) -> harness.Spawn:
        """Spawn a process and record it under ``name`` at once (before the harness waits for it)."""
        return lambda args, log: self._spawn(name, harness.Process(args, log))

    def _control_plane(self) -> Issued:
        """Start the stand-in, the syncer and the policy server; the agent's client certificate."""
        ports = self.state.ports
        pki_dir = self._entry("pki")
        stub = harness.start_cc_stub(Path(self.state.asgs), pki_dir=pki_dir / "cc",
                                     ports_file=self._entry("run") / "cc-ports.json", log=self._log("cc-stub"),
                                     spawn=self._recorder("cc-stub"))
        ports.cc_public, ports.cc_internal, ports.cc_control = (stub.ports["public"], stub.ports["internal"],
                                                                stub.ports["control"])
        database = {"type": "sqlite", "database_name": str(self._entry("db") / "policy.db")}
        ports.syncer_metrics = free_port()
        syncer = harness.start_syncer(SyncerConfig(database=database, cc=stub.endpoints(), uuid="local-syncer",
                                                   poll_interval_seconds=1, metrics_port=ports.syncer_metrics),
                                      config_file=self._config("syncer"), log=self._log("syncer"),
                                      spawn=self._recorder("syncer"))
        syncer.wait_synced()
        pki = make_pki(pki_dir / "policy-server", name="policy-server")
        ports.policy_server, ports.policy_health, ports.policy_metrics = free_port(), free_port(), free_port()
        self._save()
        harness.start_policy_server(
            PolicyServerConfig(database=database, server=pki.server, port=ports.policy_server,
                               health_port=ports.policy_health, metrics_port=ports.policy_metrics, workers=1,
                               extra={"dataset_check_interval_ms": 200}),
            pki, config_file=self._config("policy-server"), log=self._log("policy-server"),
            spawn=self._recorder("policy-server"))
        return pki.client

    def _tools(self) -> dict[str, str]:
        """Wrappers running the backend's iptables tools in the cell namespace (daemons stay in the root ns)."""
        return harness.iptables_wrappers(self._entry("bin"), self.state.cell, self.state.backend)

    def _cell(self, client: Issued) -> None:
        s, ports = self.state, self.state.ports
        ports.agent_force, ports.agent_debug, ports.agent_metrics = free_port(), free_port(), free_port()
        ports.netmon_metrics = free_port()
        self._entry("container-metadata")
        self._entry("iptables.lock", directory=False)
        harness.start_agent(
            AgentConfig(policy_server_url=f"https://127.0.0.1:{ports.policy_server}", client=client,
                        store=self.store, lock_file=self.lock_file, force_port=ports.agent_force,
                        debug_port=ports.agent_debug, metrics_port=ports.agent_metrics, underlay_ips=("192.0.2.1",),
                        poll_interval=5, tools=self._tools()),
            config_file=self._config("agent"), log=self._log("vxlan-policy-agent"),
            spawn=self._recorder("vxlan-policy-agent"))
        self._spawn("netmon", harness.start_netmon(
            NetmonConfig(interface=topology.UNDERLAY, metrics_port=ports.netmon_metrics, lock_file=self.lock_file,
                         backend=s.backend), config_file=self._config("netmon"), log=self._log("netmon"), ns=s.cell))

    # -- containers --------------------------------------------------------------------------

    def _cni_config(self) -> dict[str, Any]:
        return CniConfig(network=NETWORK, store=self.store, lock_file=self.lock_file,
                         agent_address=f"127.0.0.1:{self.state.ports.agent_force}",
                         underlay_interfaces=(topology.UNDERLAY,), tools=self._tools()).to_json()

    def _ptp_config(self) -> dict[str, Any]:
        return PtpConfig(network=NETWORK, subnet="10.255.0.0/24", ipam_dir=self._entry("ipam")).to_json()

    def _cni(self, plugin: str, command: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Invoke a CNI plugin as a runtime does; the main plugin runs in the cell."""
        c = self.state.containers[name]
        netns = f"/var/run/netns/{c.ns}"
        try:
            if plugin == "ptp":
                run = harness.invoke_cni(str(CNI_DIR / "ptp"), command, c.handle, config, netns=netns,
                                         ns=self.state.cell)
            else:
                path = harness.cni_plugin_path()
                if path is None:
                    raise DynamicASGsError("dynamic-asgs-cni is not installed")
                run = harness.invoke_cni(path, command, c.handle, config, netns=netns)
        except ValueError as exc:
            raise DynamicASGsError(f"CNI {command} of {name} ({plugin}): unreadable answer: {exc}") from None
        if run.returncode != 0:
            raise DynamicASGsError(f"CNI {command} of {name} ({plugin}): {run.error()}")
        return run.output or {}

    def _add_container(self, name: str, space: tuple[str, str]) -> None:
        s = self.state
        ns = f"{s.id}-{name}"
        topology.add_namespace(ns)
        s.namespaces.append(ns)
        c = ContainerState(ns=ns, handle=f"{s.id}-{name}", space=space[0], space_guid=space[1], app_guid=f"app-{name}")
        s.containers[name] = c
        self._save()
        result = self._cni("ptp", "ADD", name, self._ptp_config())
        c.cni.append("ptp")
        self._save()
        metadata = {"app_id": c.app_guid, "space_id": c.space_guid, "org_id": "local-org",
                    "policy_group_id": c.app_guid, "container_workload": "app"}
        self._cni("dynamic-asgs-cni", "ADD", name, {**self._cni_config(), "prevResult": result, "metadata": metadata})
        c.cni.append("dynamic-asgs-cni")
        c.ip = result["ips"][0]["address"].split("/")[0]
        self._save()

    # -- down --------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every container, process, namespace and state-dir entry this environment created.

        Returns the problems met (each step is tried regardless of the others)."""
        problems: list[str] = []
        s = self.state
        for name, c in reversed(list(s.containers.items())):
            for plugin in reversed(c.cni):
                try:
                    config = self._ptp_config() if plugin == "ptp" else self._cni_config()
                    self._cni(plugin, "DEL", name, config)
                except DynamicASGsError as exc:
                    problems.append(str(exc))
        for name, pid in reversed(list(s.processes.items())):
            stop_pid(pid)
            if alive(pid):
                problems.append(f"{name} (pid {pid}) did not stop")
        for ns in reversed(s.namespaces):
            try:
                topology.delete_namespace(ns)
            except DynamicASGsError as exc:
                problems.append(str(exc))
        if s.created_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for entry in [*s.entries, STATE_FILE, "state.tmp"]:
                path = self._path(entry)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return problems

    def stop(self, timeout: float = 90.0) -> list[str]:
        """``local down``: ask the ``up`` process to tear down, or do it here when it is gone."""
        up = self.state.pid
        if up and up != os.getpid() and alive(up):
            os.kill(up, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and alive(up):
                time.sleep(0.1)
            if not alive(up):
                return [] if not self._state_path.exists() else self.load().down()
            with contextlib.suppress(ProcessLookupError):
                os.kill(up, signal.SIGKILL)
        return self.down()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per container: space, workload, rule count, ruleset, applied at; plus the dataset version."""
        try:
            agent = AgentStatus.from_json(
                requests.get(f"http://127.0.0.1:{self.state.ports.agent_debug}/asg-status", timeout=5).json())
        except (requests.RequestException, ValueError) as exc:
            raise DynamicASGsError(f"the agent's status endpoint does not answer: {exc}") from None
        status = _status_from_agent(agent, self.state.containers)
        status["processes"] = {n: alive(p) for n, p in self.state.processes.items()}
        return status


def _status_from_agent(agent: AgentStatus, containers: dict[str, ContainerState]) -> dict[str, Any]:
    """The status rows from the agent's ``/asg-status`` document."""
    rows = {}
    for name, c in containers.items():
        e = agent.containers.get(c.handle)
        rows[name] = {"handle": c.handle, "ip": c.ip, "space": c.space,
                      "workload": e.workload if e else None, "rule_count": e.rule_count if e else None,
                      "ruleset": e.ruleset.get("ipv4") if e else None,
                      "dataset_version": e.dataset_version if e else None,
                      "applied_at": format_instant(e.applied_at) if e else None}
    return {"dataset_version": agent.dataset_version, "dataset_changed_at": format_instant(agent.dataset_changed_at),
            "containers": rows}
