"""job-ctl, every daemon job's start/stop script, under a private real monit.

The daemon jobs' rendered bin/ctl, bin/pre-start and monit files run under a /var/vcap-like root
(bosh_tools.vcap_root) whose dynamic-asgs package holds the real src/bosh/job-ctl and, as
bin/dynamic-asgs, a stand-in daemon: it prints how it was started (argv, user, working
directory, session) to its stdout, answers HTTP 200 on the health or debug port its rendered
config names (monit checks it), and leaves a child process behind in its process group. So what
is checked is job-ctl's own work: names and paths from the caller's path, the user, the secrets,
the directories, the session, the logs, and a stop that leaves no process.

The machine has no `vcap` user: `--user vcap` becomes nobody:nogroup (the one change made to the
rendered files besides bosh_tools.vcap_root's path rewrite), as in test_smoke.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bosh_tools.monit import RUNNING, STOPPED, private_monit
from bosh_tools.render import render_job
from bosh_tools.vcap_root import VcapRoot
from release_helpers import JOBS

from dynamic_asgs.local.harness import free_port
from support.env import is_root, require, require_tools

JOB_CTL = Path(__file__).resolve().parents[2] / "src" / "bosh" / "job-ctl"
PEM = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"
STANDIN = "nobody:nogroup"
#: The daemon stand-in: reports itself, serves its config's health/debug port, leaves a child behind.
DAEMON = """#!/usr/bin/env python3
import http.server, json, os, signal, subprocess, sys, threading
config = json.load(open(sys.argv[sys.argv.index("--config-file") + 1]))
print(json.dumps({"argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
                  "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0)}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if "--migrate-only" in sys.argv:
    sys.exit(config.get("stand_in_exit", 0))
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", sys.argv[0]])
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
port = config.get("health_check_port") or config.get("debug_server_port")
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
if port:
    threading.Thread(target=http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever, daemon=True).start()
threading.Event().wait()
"""


@pytest.fixture
def root() -> Iterator[VcapRoot]:
    """A /var/vcap stand-in with job-ctl and the daemon stand-in as the dynamic-asgs package."""
    require(is_root(), "root (job-ctl chowns files and drops privileges)")
    require_tools("monit", "ruby", "python3", "setpriv", "setsid")
    path = Path(tempfile.mkdtemp(prefix="dasg-job-ctl-"))
    path.chmod(0o755)
    vcap = VcapRoot(path)
    try:
        package = path / "packages" / "dynamic-asgs" / "bin"
        package.mkdir(parents=True)
        shutil.copy(JOB_CTL, package / "job-ctl")
        (package / "dynamic-asgs").write_text(DAEMON)
        for tool in ("job-ctl", "dynamic-asgs"):
            (package / tool).chmod(0o755)
        yield vcap
    finally:
        vcap.kill_leftovers()
        shutil.rmtree(path, ignore_errors=True)


def install(root: VcapRoot, job: str, properties: dict[str, Any]) -> Path:
    files = {dest: r.text.replace("--user vcap ", f"--user {STANDIN} ")
             for dest, r in render_job(JOBS / job, properties).items()}
    return root.install_job(job, files)


def report(root: VcapRoot, job: str, log: str | None = None) -> dict[str, Any]:
    """The stand-in's report of its last start, from the job's log."""
    lines = (root.path / "sys" / "log" / job / (log or f"{job}.stdout.log")).read_text().splitlines()
    found: dict[str, Any] = json.loads(lines[-1] if log is None else lines[0])
    return found


def mode_and_owner(path: Path) -> tuple[int, str]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), pwd.getpwuid(info.st_uid).pw_name


def test_monit_starts_each_daemon_as_its_user_and_stop_leaves_nothing(root: VcapRoot) -> None:
    health, debug = free_port(), free_port()
    server_dir = install(root, "dynamic-asgs-policy-server", {
        "ca_cert": PEM, "server_cert": PEM, "server_key": PEM, "health_check_port": health})
    agent_dir = install(root, "dynamic-asgs-agent", {
        "ca_cert": PEM, "client_cert": PEM, "client_key": PEM, "debug_server_port": debug})
    jobs = ["dynamic-asgs-agent", "dynamic-asgs-policy-server"]
    with private_monit(root) as monit:
        assert monit.start_all() == dict.fromkeys(jobs, RUNNING)
        nobody = pwd.getpwnam("nobody").pw_uid
        for job, job_dir, uid, daemon in ((jobs[1], server_dir, nobody, "policy-server"),
                                          (jobs[0], agent_dir, 0, "vxlan-policy-agent")):
            started = report(root, job)
            assert started["argv"] == [daemon, "--config-file", f"{job_dir}/config/{daemon}.json"]
            assert (started["uid"], started["cwd"]) == (uid, "/"), "its user, never the caller's directory"
            assert started["sid"] == started["pid"] == int((root.path / f"sys/run/{job}/{job}.pid").read_text()), (
                "a session of its own, led by the pid monit watches")
            assert (root.path / f"sys/log/{job}/{job}.stderr.log").read_text() == "to stderr\n"
            assert mode_and_owner(root.path / "data" / job)[1] == pwd.getpwuid(uid).pw_name
        assert mode_and_owner(server_dir / "config/certs/server.key") == (0o600, "nobody")
        assert mode_and_owner(server_dir / "config/policy-server.json") == (0o600, "nobody")
        assert mode_and_owner(root.path / "store/dynamic-asgs-policy-server")[1] == "nobody"
        assert mode_and_owner(agent_dir / "config/certs/client.key") == (0o600, "root")
        assert (root.path / "data/container-metadata").is_dir() and (root.path / "data/garden-cni").is_dir()
        assert not (root.path / "store/dynamic-asgs-agent").exists(), "only the policy server has a store"
        assert len(root.processes()) >= 4, "each daemon and the child it left behind"

        assert monit.stop_all(timeout=90) == dict.fromkeys(jobs, STOPPED)
        assert root.processes() == [], "stop ends the daemon's whole process group"
        assert not list((root.path / "sys/run").glob("*/*.pid"))


def test_pre_start_migrates_in_the_foreground_and_fails_with_the_daemon(root: VcapRoot) -> None:
    job_dir = install(root, "dynamic-asgs-policy-server", {"ca_cert": PEM, "server_cert": PEM, "server_key": PEM})
    pre_start = job_dir / "bin" / "pre-start"
    result = subprocess.run([str(pre_start)], capture_output=True, text=True, timeout=60, check=False, cwd="/root")
    assert result.returncode == 0, result.stderr
    started = report(root, "dynamic-asgs-policy-server", "pre-start.log")
    assert started["argv"][-1] == "--migrate-only" and started["uid"] == pwd.getpwnam("nobody").pw_uid
    assert json.loads(result.stdout.splitlines()[0]) == started, "the output also goes to the BOSH agent"
    config = job_dir / "config/policy-server.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "stand_in_exit": 3}))
    failed = subprocess.run([str(pre_start)], capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 3, "a failed migration fails the deploy"
    assert root.processes() == []


@pytest.mark.parametrize(("caller", "args", "message"), [
    ("bin/ctl", ["start", "--", "netmon", "c.json"], "expected to be called by /var/vcap/jobs/<job>/bin/<script>"),
    ("{root}/jobs/Bad Name/bin/ctl", ["start", "--", "netmon", "c.json"], "'Bad Name' is not a job name"),
    ("{root}/jobs/x/bin/ctl", ["restart", "--", "netmon", "c.json"], "unknown action 'restart'"),
    ("{root}/jobs/x/bin/ctl", ["start", "--secret"], "--secret needs a value"),
    ("{root}/jobs/x/bin/ctl", ["start", "--color", "red"], "unknown option '--color'"),
    ("{root}/jobs/x/bin/ctl", ["start", "--", "netmon"], "missing DAEMON CONFIG after --"),
])
def test_a_wrong_call_is_refused_naming_what_is_wrong(root: VcapRoot, caller: str, args: list[str],
                                                      message: str) -> None:
    job_ctl = root.path / "packages/dynamic-asgs/bin/job-ctl"
    result = subprocess.run([str(job_ctl), caller.format(root=root.path), *args], capture_output=True, text=True,
                            timeout=30, check=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("job-ctl: ") and message in line
    assert not (root.path / "sys/run/x").exists(), "nothing is made before the call is understood"
