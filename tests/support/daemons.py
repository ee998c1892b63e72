"""Test harness for the control plane: databases, certificates and real daemon processes.

* :func:`database` makes a uniquely named database on SQLite, PostgreSQL or MariaDB (the
  services of ENVIRONMENT.md) and drops it afterwards; a missing service skips the test on
  a developer's machine and fails it in CI (support.env.require).
* :class:`Daemon`, :func:`start_cc_stub`, :func:`start_syncer` and :func:`start_policy_server`
  start real processes through the package's harness (:mod:`dynamic_asgs.local.harness`, the
  one ``local up`` uses), with the layout and defaults the tests expect, and read their logs.
* :class:`CCStub` drives a running ``dynamic-asgs cc-stub`` through its control port.

Unit tests import this module as ``support.daemons``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from dynamic_asgs.cc.client import CloudController
from dynamic_asgs.cc.uaa import TokenSource
from dynamic_asgs.http.client import JsonHttp, RetryPolicy, Timeouts
from dynamic_asgs.lager import Logger
from dynamic_asgs.local import harness
from dynamic_asgs.local.cc_stub.catalog import Catalog, load_catalog
from dynamic_asgs.local.cc_stub.server import StubServer
from dynamic_asgs.local.cc_stub.state import StubState
from dynamic_asgs.local.configs import PolicyServerConfig, SyncerConfig
from dynamic_asgs.local.harness import CCStubProcess, Process, free_port
from dynamic_asgs.local.pki import Pki, make_pki
from dynamic_asgs.policydb.db import DatabaseSettings
from dynamic_asgs.tls import client_context, server_context, session_for
from support.env import require

__all__ = [
    "DB_ENGINES",
    "FAST",
    "CCStub",
    "Daemon",
    "InProcessStub",
    "PolicyServer",
    "cc_client",
    "database",
    "database_config",
    "example_groups",
    "free_port",
    "inprocess_stub",
    "make_certs",
    "start_cc_stub",
    "start_policy_server",
    "start_syncer",
    "stub_http",
    "syncer_settings",
    "wait_for",
]

DB_ENGINES = ("sqlite", "postgres", "mariadb")
_ADMIN = {
    "postgres": ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "PostgreSQL on 127.0.0.1:5432"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test", "MariaDB on 127.0.0.1:3306"),
}


def wait_for(check: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
             ) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # the thing polled for may not be up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" +
                         (f" (last error: {last_error})" if last_error else ""))


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[DatabaseSettings]:
    """A fresh, uniquely named database of ``kind``; dropped afterwards."""
    if kind == "sqlite":
        tmp_path.mkdir(parents=True, exist_ok=True)
        yield DatabaseSettings(type="sqlite", database_name=str(tmp_path / "policy.db"))
        return
    url, what = _ADMIN[kind]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError:
        admin.dispose()
        require(False, f"{what} (see ENVIRONMENT.md)")
    name = f"dasg_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        if kind == "postgres":
            yield DatabaseSettings(type="postgres", database_name=name, user="postgres", host="127.0.0.1", port=5432,
                                   timeout=10)
        else:
            yield DatabaseSettings(type="mysql", database_name=name, user="root", host="127.0.0.1", port=3306,
                                   timeout=10)
    finally:
        with admin.connect() as conn:
            if kind == "postgres":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def database_config(settings: DatabaseSettings) -> dict[str, Any]:
    """The ``database`` object of a daemon's JSON configuration for ``settings``."""
    keys = ("type", "database_name", "user", "password", "host", "port", "timeout")
    return {k: getattr(settings, k) for k in keys if getattr(settings, k) not in ("", 0)}



def make_certs(directory: Path, name: str) -> Pki:
    """A CA with a server (127.0.0.1, localhost) and a client certificate, generated now."""
    return make_pki(directory, name=name)


class Daemon(Process):
    """``dynamic-asgs <args>`` (or ``argv``) as a child process in its own process group, log in ``log_path``;
    the harness's process with the tests' reading of its log."""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines of the log (other lines are skipped)."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def events(self, suffix: str) -> list[dict[str, Any]]:
        """Log lines whose message ends with ``.suffix``."""
        return [line for line in self.log_lines() if str(line.get("message", "")).endswith(f".{suffix}")]


@dataclass
class CCStub(CCStubProcess):
    """A running ``dynamic-asgs cc-stub`` (see :func:`start_cc_stub`), driven through its control port."""

    @property
    def daemon(self) -> Daemon:
        assert isinstance(self.process, Daemon)
        return self.process

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        r = requests.request(method, f"{self.control_url}{path}", json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def faults(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._control("PUT", "/faults", changes)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "/stats")
        return result

    def reset(self) -> None:
        self._control("POST", "/reset")

    def touch(self) -> str:
        return str(self._control("POST", "/touch")["last_update"])

    def write_groups(self, groups: list[dict[str, Any]]) -> None:
        """Replace the ASG file atomically (the stand-in reloads it and bumps last_update)."""
        tmp = self.asgs.with_suffix(".tmp")
        tmp.write_text(json.dumps({"security_groups": groups}))
        os.replace(tmp, self.asgs)

    def syncer_config(self, database: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A syncer configuration pointing at this stand-in."""
        return SyncerConfig(database=database, cc=self.endpoints(), extra=extra).to_json()


def start_cc_stub(tmp_path: Path, groups: list[dict[str, Any]], *, name: str = "cc") -> CCStub:
    """Start a stand-in serving ``groups``; the caller stops ``stub.daemon``."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    asgs = directory / "asgs.json"
    asgs.write_text(json.dumps({"security_groups": groups}))
    stub = harness.start_cc_stub(asgs, pki_dir=directory / "pki", ports_file=directory / "ports.json",
                                 log=directory / "cc-stub.log", spawn=Daemon)
    return CCStub(stub.process, stub.ports, stub.pki_dir, stub.asgs)


def syncer_settings(stub: CCStub, database: dict[str, Any], *, name: str, **extra: Any) -> SyncerConfig:
    """The typed configuration of a syncer named ``name`` polling ``stub`` (``extra``: more keys)."""
    return SyncerConfig(database=database, cc=stub.endpoints(), uuid=name,
                        poll_interval_seconds=extra.pop("asg_poll_interval_seconds", None),
                        metrics_port=extra.pop("metrics_port", 0), extra=extra)


def start_syncer(tmp_path: Path, stub: CCStub, database: dict[str, Any], *, name: str = "syncer",
                 **extra: Any) -> Daemon:
    """Start ``policy-server-asg-syncer`` against ``stub``; the caller stops it."""
    syncer = harness.start_syncer(syncer_settings(stub, database, name=name, **extra),
                                  config_file=tmp_path / f"{name}.json", log=tmp_path / f"{name}.log", spawn=Daemon)
    assert isinstance(syncer.process, Daemon)
    return syncer.process


@dataclass
class PolicyServer:
    """A running ``policy-server`` and the certificates to talk to it."""

    daemon: Daemon
    port: int
    health_port: int
    pki: Pki

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_cert(self) -> tuple[str, str]:
        return str(self.pki.client.cert), str(self.pki.client.key)


def start_policy_server(tmp_path: Path, database: dict[str, Any], *, workers: int = 2, **extra: Any) -> PolicyServer:
    """Start ``policy-server`` on free loopback ports and wait until every worker serves; the caller stops it."""
    pki = make_certs(tmp_path / "ps-pki", "ps")
    config = PolicyServerConfig(database=database, server=pki.server, port=free_port(), health_port=free_port(),
                                metrics_port=extra.pop("metrics_port", 0), workers=workers, extra=extra)
    started = harness.start_policy_server(config, pki, config_file=tmp_path / "policy-server.json",
                                          log=tmp_path / "policy-server.log", spawn=Daemon)
    daemon = started.process
    assert isinstance(daemon, Daemon)
    server = PolicyServer(daemon, config.port, config.health_port, pki)

    def answers() -> bool:
        r = requests.get(f"{server.url}/networking/v1/internal/security_groups", verify=str(pki.server.ca),
                         cert=server.client_cert(), timeout=5)
        return r.status_code == 200

    try:
        wait_for(answers, timeout=30, what="the policy server to answer")
        wait_for(lambda: len(daemon.events("dataset-loaded")) >= workers, timeout=30,
                 what="every worker to load the dataset")
    except AssertionError:
        daemon.stop()
        raise
    return server


@dataclass
class InProcessStub:
    """The CC stand-in's servers running in this process (threads), for unit tests."""

    state: StubState
    server: StubServer
    pki: Pki
    asgs: Path

    @property
    def url(self) -> str:
        return str(self.server.base_url)

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.server.ports['internal']}"


@contextmanager
def inprocess_stub(tmp_path: Path, groups: list[dict[str, Any]]) -> Iterator[InProcessStub]:
    """A running in-process stand-in serving ``groups`` (stopped afterwards)."""

    pki = make_certs(tmp_path / "cc-pki", "cc")
    asgs = tmp_path / "asgs.json"
    asgs.write_text(json.dumps({"security_groups": groups}))
    public = server_context(ca_file=None, cert_file=str(pki.server.cert), key_file=str(pki.server.key),
                            require_client_cert=False)
    internal = server_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.server.cert),
                              key_file=str(pki.server.key))
    state = StubState(Catalog(()), client_id="network-policy", client_secret="secret", token_ttl=3600)
    log = Logger("cc-stub", stream=io.StringIO())
    server = StubServer(state, host="127.0.0.1", public=(0, public), internal=(0, internal), control_port=0, log=log)
    state.catalog = load_catalog(asgs, base_url=server.base_url)
    server.start()
    try:
        yield InProcessStub(state, server, pki, asgs)
    finally:
        server.stop()


FAST = RetryPolicy(attempts=3, deadline=10, initial=0.01, maximum=0.05)
SHORT = Timeouts(connect=2, read=2)


def example_groups(n: int) -> list[dict[str, Any]]:
    """``n`` groups bound to space-0..2 for running, in the stand-in's file format."""
    return [{"name": f"asg-{i:03d}", "rules": [{"protocol": "tcp", "destination": f"10.0.{i}.1", "ports": "443"}],
             "running_spaces": [f"space-{i % 3}"]} for i in range(n)]


def stub_http(stub: InProcessStub, *, internal: bool = False, timeouts: Timeouts = SHORT,
              retry: RetryPolicy = FAST, service: str = "cloud controller") -> JsonHttp:
    """A JsonHttp for the stand-in's public (or internal, with the client certificate) port."""
    cert = (str(stub.pki.client.cert), str(stub.pki.client.key)) if internal else (None, None)
    context = client_context(ca_file=str(stub.pki.ca.cert_path), cert_file=cert[0], key_file=cert[1])
    return JsonHttp(stub.internal_url if internal else stub.url, session_for(context), service=service,
                    timeouts=timeouts, retry=retry)


def cc_client(stub: InProcessStub, *, page_size: int = 3, secret: str = "secret") -> CloudController:
    """A Cloud Controller client of the stand-in."""
    tokens = TokenSource(stub_http(stub, service="uaa"), client_id="network-policy", client_secret=secret)
    return CloudController(api=stub_http(stub), internal=stub_http(stub, internal=True), tokens=tokens,
                           page_size=page_size)
