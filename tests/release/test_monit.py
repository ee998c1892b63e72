"""A private real monit runs a rendered job under a /var/vcap-like root, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from bosh_tools.monit import RUNNING, STOPPED, MonitError, private_monit, syntax_error
from bosh_tools.render import GROUP, link_from_job, render, render_job
from bosh_tools.vcap_root import VcapRoot

from dynamic_asgs.local.harness import free_port
from support.env import require_tools

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"
SERVER, DB = FIXTURES / "echo-server", FIXTURES / "echo-db"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("monit", "ruby", "python3")


def install_server(root: VcapRoot, **properties: object) -> int:
    port = free_port()
    rendered = render_job(SERVER, {"port": port, "tls": {"key": "KEY"}, **properties},
                          links={"database": link_from_job(DB, "database", {"db": {"name": "asgs"}})})
    root.install_job("echo-server", {dest: r.text for dest, r in rendered.items()})
    return port


def get(port: int, path: str = "/index.html", timeout: float = 30) -> bytes:
    """GET from the job once it listens (monit reports OK as soon as the pid is alive)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return bytes(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def pid_of(root: VcapRoot) -> int:
    return int((root.path / "sys/run/echo-server/echo-server.pid").read_text())


def test_monit_t_accepts_rendered_files_and_names_errors() -> None:
    links = {"database": link_from_job(DB, "database", {})}
    assert syntax_error(render(SERVER, "monit", {}, links=links)) is None
    assert syntax_error(render(SERVER, "monit", {"disable": True}, links=links)) is None
    error = syntax_error("check process x\n  with pidfil /tmp/x.pid\n")
    assert error is not None and "pidfil" in error


def test_job_starts_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    root = VcapRoot(tmp_path / "vcap")
    port = install_server(root)
    with private_monit(root) as monit:
        assert monit.start_all() == {"echo-server": RUNNING}
        body = json.loads(get(port))
        assert body["job"] == GROUP and body["database"]["name"] == "asgs", "the rendered config, served"
        assert os.stat(root.path / "jobs/echo-server/config/certs/server.key").st_mode & 0o777 == 0o600
        assert pid_of(root) in root.processes()
        assert (root.path / "sys/log/echo-server/echo-server.stderr.log").exists()

        assert monit.stop_all() == {"echo-server": STOPPED}
        assert root.processes() == [], "stop leaves no process"
        assert not (root.path / "sys/run/echo-server/echo-server.pid").exists()
        with pytest.raises(urllib.error.URLError):
            get(port, timeout=0)
        daemon_port = monit.port
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", daemon_port)) != 0, "the monit daemon is gone"


def test_monit_restarts_a_killed_daemon(tmp_path: Path) -> None:
    root = VcapRoot(tmp_path / "vcap")
    port = install_server(root)
    with private_monit(root) as monit:
        monit.start_all()
        get(port)
        first = pid_of(root)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (root.path / "sys/run/echo-server/echo-server.pid").exists() or pid_of(root) == first:
            assert time.monotonic() < deadline, f"monit did not restart the job: {monit.log_tail()}"
            time.sleep(0.5)
        monit.wait_for(RUNNING)
        get(port)
    assert root.processes() == []


def test_disabled_job_has_no_service(tmp_path: Path) -> None:
    root = VcapRoot(tmp_path / "vcap")
    install_server(root, disable=True)
    with private_monit(root) as monit:
        assert monit.start_all() == {}
        assert root.processes() == []


def test_teardown_stops_everything_when_a_test_fails(tmp_path: Path) -> None:
    root = VcapRoot(tmp_path / "vcap")
    port = install_server(root)
    with pytest.raises(RuntimeError), private_monit(root) as monit:
        monit.start_all()
        get(port)
        raise RuntimeError("test failed mid-way")
    assert root.processes() == []


def test_a_bad_monit_file_stops_the_start(tmp_path: Path) -> None:
    root = VcapRoot(tmp_path / "vcap")
    root.install_job("broken", {"monit": "check process broken\n  with pidfil /x\n"})
    with pytest.raises(MonitError, match="pidfil"), private_monit(root):
        pass
    assert root.processes() == []
