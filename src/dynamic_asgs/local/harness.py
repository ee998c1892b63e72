"""Start the system's daemons as real processes: one harness for ``local up`` and the tests.

Goals and the mechanism serving each:

* One way to start each daemon: ``start_cc_stub``, ``start_syncer``, ``start_policy_server``,
  ``start_agent`` and ``start_netmon`` take a typed configuration (:mod:`.configs`) and the
  paths of its config file and log, so each caller keeps its own layout; their ``spawn``
  makes the process (the local environment records each pid before any wait, the tests
  read the log).
* Readiness is asked over HTTP, never read from logs: the stand-in's control port, the
  syncer's ``security_groups_last_sync_timestamp_seconds`` metric, the policy server's
  ``/health``, the agent's debug endpoint. A process that exits while it is waited for
  fails the wait at once, with the end of its log (:class:`ProcessExited`).
* Every process runs in its own process group (``start_new_session``), so stopping it
  also stops what it started (the policy server's workers); :func:`stop_pid` works from
  a pid alone, for the local environment's ``down`` in another process.
* Daemons stay in the root namespace (where the loopback ports are) and manage a cell's
  tables through :func:`iptables_wrappers`, scripts that run the backend's tools inside
  the cell namespace; the root namespace's table is never touched.
* :func:`invoke_cni` runs a CNI plugin as a runtime does (environment + config on stdin).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.local.configs import (
    AgentConfig,
    CCEndpoints,
    NetmonConfig,
    PolicyServerConfig,
    SyncerConfig,
    write_config,
)
from dynamic_asgs.local.pki import Pki

__all__ = [
    "CNI_DIR",
    "AgentProcess",
    "CCStubProcess",
    "Invocation",
    "NotReady",
    "PolicyServerProcess",
    "Process",
    "ProcessExited",
    "Spawn",
    "SyncerProcess",
    "alive",
    "cli_argv",
    "cni_plugin_path",
    "free_port",
    "invoke_cni",
    "iptables_wrappers",
    "metric_value",
    "start_agent",
    "start_cc_stub",
    "start_netmon",
    "start_policy_server",
    "start_syncer",
    "stop_pid",
    "wait_until",
]

CNI_DIR = Path("/usr/lib/cni")
T = TypeVar("T")


class NotReady(DynamicASGsError):
    """A wait for a process or a condition timed out."""


class ProcessExited(DynamicASGsError):
    """A process exited while it was waited for; ``log_tail`` is the end of its log."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_argv(*args: str) -> list[str]:
    """The command line of ``dynamic-asgs <args>`` with this interpreter."""
    return [sys.executable, "-m", "dynamic_asgs.cli", *args]


def wait_until(check: Callable[[], T | None], *, what: str, timeout: float = 60.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; :class:`NotReady` after ``timeout``.

    Connection errors and unparsable answers count as "not yet"; :class:`ProcessExited` ends
    the wait at once."""
    deadline = time.monotonic() + timeout
    error = ""
    while True:
        try:
            value = check()
        except (OSError, ValueError, requests.RequestException) as exc:
            error, value = f" (last error: {exc})", None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise NotReady(f"timed out after {timeout:.0f} s waiting for {what}{error}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """``GET url`` answers 2xx."""
    return requests.get(url, timeout=2).ok


def metric_value(url: str, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` at the metrics endpoint ``url``; None when absent."""
    for family in text_string_to_metric_families(requests.get(url, timeout=2).text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM process ``pid``, wait up to ``timeout``, then SIGKILL its whole process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class Process:
    """A child process in its own process group, stdout and stderr appended to ``log_path``.

    ``argv`` defaults to ``dynamic-asgs <args>``; with ``ns`` it runs inside that namespace."""

    def __init__(self, args: Sequence[str], log_path: Path, *, argv: Sequence[str] | None = None,
                 ns: str | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = list(argv) if argv is not None else cli_argv(*args)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen((["ip", "netns", "exec", ns] if ns else []) + command, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        """The process id (and process group id)."""
        return self.proc.pid

    def running(self) -> bool:
        """The process has not exited."""
        return self.proc.poll() is None

    def log_tail(self, size: int = 2000) -> str:
        """The end of the log."""
        return self.log_path.read_text(errors="replace")[-size:]

    def wait_ready(self, check: Callable[[], T | None], *, what: str, timeout: float = 60.0) -> T:
        """:func:`wait_until` ``check``, failing at once (:class:`ProcessExited`) when the process exits."""

        def ready() -> T | None:
            if not self.running():
                raise ProcessExited(f"{what}: the process exited (status {self.proc.returncode}); see "
                                    f"{self.log_path}:\n{self.log_tail()}", self.log_tail())
            return check()

        return wait_until(ready, what=what, timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the whole process group; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill_group()
        return self.proc.returncode

    def kill_group(self) -> None:
        """SIGKILL the process and everything left in its group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


#: Makes the process of ``dynamic-asgs <args>`` logging to a path: :class:`Process` or one that also records
#: it (the local environment saves the pid before any wait) or reads its log (the tests).
Spawn = Callable[[list[str], Path], Process]


def _stopped_on_error(process: Process, start: Callable[[], T]) -> T:
    try:
        return start()
    except BaseException:
        process.stop()
        raise


# -- the control plane -------------------------------------------------------------------------


@dataclass
class CCStubProcess:
    """A running ``dynamic-asgs cc-stub`` and where it listens."""

    process: Process
    ports: dict[str, int]
    pki_dir: Path
    asgs: Path

    @property
    def url(self) -> str:
        """The public (CC and UAA) API."""
        return f"https://127.0.0.1:{self.ports['public']}"

    @property
    def internal_url(self) -> str:
        """The internal API (mutual TLS)."""
        return f"https://127.0.0.1:{self.ports['internal']}"

    @property
    def control_url(self) -> str:
        """The plain-HTTP control endpoint (faults, stats, reset)."""
        return f"http://127.0.0.1:{self.ports['control']}"

    def endpoints(self) -> CCEndpoints:
        """What a syncer needs to reach this stand-in."""
        return CCEndpoints(url=self.url, internal_url=self.internal_url, ca_cert=str(self.pki_dir / "cc-ca.crt"),
                           client_cert=str(self.pki_dir / "cc-client.crt"),
                           client_key=str(self.pki_dir / "cc-client.key"))


def start_cc_stub(asgs: Path, *, pki_dir: Path, ports_file: Path, log: Path, timeout: float = 60.0,
                  spawn: Spawn = Process) -> CCStubProcess:
    """Start the stand-in serving ``asgs`` on free ports; ready when its control port answers."""
    process = spawn(["cc-stub", "--asgs", str(asgs), "--pki-dir", str(pki_dir), "--port", "0", "--internal-port", "0",
                     "--control-port", "0", "--ports-file", str(ports_file)], log)

    def read_ports() -> dict[str, int] | None:
        return json.loads(ports_file.read_text()) if ports_file.exists() else None

    def start() -> CCStubProcess:
        ports = process.wait_ready(read_ports, what="the CC stand-in's ports", timeout=timeout)
        stub = CCStubProcess(process, ports, pki_dir, asgs)
        process.wait_ready(lambda: http_ok(f"{stub.control_url}/stats"), what="the CC stand-in's control port",
                           timeout=timeout)
        return stub

    return _stopped_on_error(process, start)


@dataclass
class SyncerProcess:
    """A running ``policy-server-asg-syncer``."""

    process: Process
    config: SyncerConfig

    def synced(self) -> bool:
        """A poll has succeeded (its metrics say so); needs a metrics port."""
        if not self.config.metrics_port:
            raise DynamicASGsError("the syncer's readiness is read from its metrics: give it a metrics port")
        last = metric_value(f"http://127.0.0.1:{self.config.metrics_port}/metrics",
                            "security_groups_last_sync_timestamp_seconds")
        return bool(last)

    def wait_synced(self, timeout: float = 60.0) -> None:
        """Wait for the first successful poll."""
        self.process.wait_ready(self.synced, what="the syncer's first sync", timeout=timeout)


def start_syncer(config: SyncerConfig, *, config_file: Path, log: Path, spawn: Spawn = Process) -> SyncerProcess:
    """Start the syncer (not waiting: see :meth:`SyncerProcess.wait_synced`)."""
    write_config(config_file, config.to_json())
    return SyncerProcess(spawn(["policy-server-asg-syncer", "--config-file", str(config_file)], log), config)


@dataclass
class PolicyServerProcess:
    """A running ``policy-server`` and the certificates to talk to it."""

    process: Process
    config: PolicyServerConfig
    pki: Pki

    @property
    def url(self) -> str:
        """The internal API (mutual TLS)."""
        return f"https://127.0.0.1:{self.config.port}"

    @property
    def health_url(self) -> str:
        """The health endpoint (plain HTTP)."""
        return f"http://127.0.0.1:{self.config.health_port}/health"


def start_policy_server(config: PolicyServerConfig, pki: Pki, *, config_file: Path, log: Path,
                        timeout: float = 60.0, spawn: Spawn = Process) -> PolicyServerProcess:
    """Start the policy server; ready when ``/health`` answers 200 (the DB answers, the schema is migrated)."""
    write_config(config_file, config.to_json())
    process = spawn(["policy-server", "--config-file", str(config_file)], log)
    server = PolicyServerProcess(process, config, pki)
    _stopped_on_error(process, lambda: process.wait_ready(lambda: http_ok(server.health_url),
                                                          what="the policy server's health check", timeout=timeout))
    return server


# -- the cell ----------------------------------------------------------------------------------


def iptables_wrappers(directory: Path, ns: str, backend: str) -> dict[str, str]:
    """Scripts running ``backend``'s iptables tools inside namespace ``ns``: config key -> path.

    ``iptables``/``ip6tables`` themselves are written too (the agent lists single chains with them);
    the keys are the ``*_restore_command`` and ``*_save_command`` of the agent's and the CNI's configs."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for prefix in ("iptables", "ip6tables"):
        for kind in ("restore", "save", ""):
            tool = f"{prefix}-{backend}-{kind}" if kind else f"{prefix}-{backend}"
            path = directory / (f"{prefix}-{kind}" if kind else prefix)
            _write_script(path, f'#!/bin/sh\nexec ip netns exec {ns} {tool} "$@"\n')
            if kind:
                keys[f"{prefix}_{kind}_command"] = str(path)
    return keys


def _write_script(path: Path, text: str) -> None:
    """Install an executable script, never opening one a process may be running.

    Writing into a script while the agent executes it fails with ``ETXTBSY``: an unchanged
    script is left alone and a changed one replaces the old by rename."""
    if path.exists() and path.read_text() == text:
        return
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(text)
    staged.chmod(0o755)
    staged.replace(path)


@dataclass
class AgentProcess:
    """A running ``vxlan-policy-agent`` and its loopback endpoints."""

    process: Process
    config: AgentConfig

    @property
    def debug_url(self) -> str:
        """The debug server (``/asg-status``, ``/log-level``)."""
        return f"http://127.0.0.1:{self.config.debug_port}"

    @property
    def force_url(self) -> str:
        """The force endpoints the CNI calls."""
        return f"http://127.0.0.1:{self.config.force_port}"

    @property
    def metrics_url(self) -> str:
        """The metrics endpoint."""
        return f"http://127.0.0.1:{self.config.metrics_port}/metrics"


def start_agent(config: AgentConfig, *, config_file: Path, log: Path, timeout: float = 60.0,
                spawn: Spawn = Process) -> AgentProcess:
    """Start the agent; ready when its debug endpoint answers (:class:`ProcessExited` when it exits first)."""
    write_config(config_file, config.to_json())
    process = spawn(["vxlan-policy-agent", "--config-file", str(config_file)], log)
    agent = AgentProcess(process, config)
    _stopped_on_error(process, lambda: process.wait_ready(lambda: http_ok(f"{agent.debug_url}/log-level"),
                                                          what="the agent's debug endpoint", timeout=timeout))
    return agent


def start_netmon(config: NetmonConfig, *, config_file: Path, log: Path, ns: str) -> Process:
    """Start netmon inside namespace ``ns`` (its metrics port is on that namespace's loopback)."""
    write_config(config_file, config.to_json())
    return Process(["netmon", "--config-file", str(config_file)], log, ns=ns)


# -- CNI ---------------------------------------------------------------------------------------


def cni_plugin_path() -> str | None:
    """The ``dynamic-asgs-cni`` executable (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).with_name("dynamic-asgs-cni")
    return str(beside) if beside.exists() else shutil.which("dynamic-asgs-cni")


@dataclass
class Invocation:
    """One plugin run: exit status, parsed stdout (None when empty), stderr."""

    returncode: int
    output: dict[str, Any] | None
    stderr: str

    def error(self) -> str:
        """The CNI error message of a failed run (``msg``), else what the plugin printed."""
        if isinstance(self.output, dict) and "msg" in self.output:
            return str(self.output["msg"])
        return ((json.dumps(self.output) if self.output else "") + self.stderr).strip()


def invoke_cni(plugin: str, command: str, handle: str, config: dict[str, Any] | bytes, *, netns: str = "",
               ns: str | None = None, ifname: str = "eth0") -> Invocation:
    """Run ``plugin`` with the CNI environment and ``config`` on stdin (inside namespace ``ns`` when given)."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": handle, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": str(CNI_DIR), "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    cmd = [plugin]
    if ns is not None:  # a runtime in that namespace: the plugin inherits it, with the CNI variables
        cmd = ["ip", "netns", "exec", ns, "env", *(f"{k}={v}" for k, v in env.items()), plugin]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120, check=False)
    text = proc.stdout.decode().strip()
    return Invocation(proc.returncode, json.loads(text) if text else None, proc.stderr.decode())
