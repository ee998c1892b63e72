"""A private, real monit for tests: syntax checks of job monit files, and jobs run as on a VM.

Goals: what the BOSH agent does with monit (include the jobs' monit files, start all, watch
them become healthy, stop all) runs here against the real monit binary, isolated from any monit
of the machine, and always ends with monit and every job process gone.

Mechanisms:
- Control file at mode 0600 (monit refuses any other) in the monit's own state directory,
  with its own log, pid, id and state files, polling every second, and an HTTP interface on
  127.0.0.1 and a free port with a random user and password (the CLI reads them from the
  control file), so `monit -c <file> <command>` talks only to this instance.
- It includes <root>/monit/job/*.monitrc, where bosh_tools.vcap_root puts the jobs' monit files.
- The daemon runs in the foreground (-I) as our child, so it is ended by its own pid. `start
  all` and `stop all` return at once: `wait_for` polls `monit summary` until every process
  service is in the wanted state.
- `syntax_error(text)` runs `monit -t` on a control file that includes just the given text.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bosh_tools.vcap_root import VcapRoot
from dynamic_asgs.local.harness import free_port

__all__ = ["Monit", "MonitError", "private_monit", "syntax_error"]

RUNNING = "OK"
STOPPED = "Not monitored"


class MonitError(Exception):
    """monit refused a command or did not reach a state in time."""


def _monit_binary() -> str:
    found = shutil.which("monit") or next((p for p in ("/usr/bin/monit", "/usr/sbin/monit") if Path(p).exists()),
                                          None)
    if found is None:
        raise MonitError("monit is not installed (Debian package monit)")
    return found


def _control_file(state: Path, include: str, port: int, credentials: str) -> Path:
    control = state / "monitrc"
    control.write_text(
        "set daemon 1\n"
        f"set logfile {state}/monit.log\n"
        f"set pidfile {state}/monit.pid\n"
        f"set idfile {state}/monit.id\n"
        f"set statefile {state}/monit.state\n"
        f"set httpd port {port} and use address 127.0.0.1\n"
        f"  allow {credentials}\n"
        f"include {include}\n")
    control.chmod(0o600)
    return control


def syntax_error(monit_text: str) -> str | None:
    """`monit -t`'s complaint about a job's monit file (None when monit accepts it)."""
    with tempfile.TemporaryDirectory(prefix="dasg-monit-t-") as tmp:
        state = Path(tmp)
        (state / "job.monitrc").write_text(monit_text)
        control = _control_file(state, str(state / "job.monitrc"), free_port(), "u:p")
        result = subprocess.run([_monit_binary(), "-t", "-c", str(control)], capture_output=True, text=True,
                                check=False, timeout=30)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


class Monit:
    """A monit daemon of our own over a VcapRoot's jobs; use through `private_monit`."""

    def __init__(self, root: VcapRoot, state: Path) -> None:
        self.root = root
        self.state = state
        self.port = free_port()
        credentials = f"u{secrets.token_hex(4)}:{secrets.token_hex(12)}"
        self.control = _control_file(state, f"{root.path}/monit/job/*.monitrc", self.port, credentials)
        self._daemon: subprocess.Popen[bytes] | None = None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`monit -c <our control file> ARGS`."""
        result = subprocess.run([_monit_binary(), "-c", str(self.control), *args], capture_output=True, text=True,
                                check=False, timeout=30)
        if check and result.returncode != 0:
            raise MonitError(f"monit {' '.join(args)}: {(result.stdout + result.stderr).strip()}")
        return result

    def check_syntax(self) -> None:
        """`monit -t` over the control file and every included job monit file."""
        self.run("-t")

    def start_daemon(self, timeout: float = 30) -> None:
        """Start monit in the foreground as our child; return once its CLI interface answers."""
        self.check_syntax()
        log = (self.state / "daemon.out").open("wb")
        # cwd: a root-only directory, as a checkout under /root would be. The jobs must not depend on
        # the working directory they inherit (uvicorn's spawned workers chdir to it, as the vcap user).
        self._daemon = subprocess.Popen([_monit_binary(), "-I", "-c", str(self.control)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.state)
        log.close()
        deadline = time.monotonic() + timeout
        while self.run("summary", check=False).returncode != 0:
            if self._daemon.poll() is not None:
                raise MonitError(f"monit exited ({self._daemon.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise MonitError(f"monit did not answer on 127.0.0.1:{self.port} within {timeout}s")
            time.sleep(0.2)

    def summary(self) -> dict[str, str]:
        """Process services and their status (`OK`, `Not monitored`, `Does not exist`, ...)."""
        services = {}
        for line in self.run("-B", "summary").stdout.splitlines():
            cells = re.split(r"\s{2,}", line.strip())
            if len(cells) == 3 and cells[2] == "Process":
                services[cells[0]] = cells[1]
        return services

    def wait_for(self, status: str, names: list[str] | None = None, timeout: float = 60) -> dict[str, str]:
        """Poll until every process service (or those named) shows ``status``; return the summary."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.summary()
            wanted = names if names is not None else list(current)
            if all(current.get(name) == status for name in wanted):
                return current
            if time.monotonic() > deadline:
                raise MonitError(f"monit services not {status!r} within {timeout}s: {current}; {self.log_tail()}")
            time.sleep(0.5)

    def start_all(self, timeout: float = 60) -> dict[str, str]:
        """`monit start all`, then wait until every process is running."""
        self.run("start", "all")
        return self.wait_for(RUNNING, timeout=timeout)

    def stop_all(self, timeout: float = 60) -> dict[str, str]:
        """`monit stop all`, then wait until every process is stopped (not monitored)."""
        self.run("stop", "all")
        return self.wait_for(STOPPED, timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        log = self.state / "monit.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def shutdown(self) -> None:
        """Stop every job, then the daemon (by its pid), then any process left in the root."""
        try:
            if self._daemon is not None and self._daemon.poll() is None:
                with contextlib.suppress(MonitError, subprocess.TimeoutExpired):
                    self.stop_all(timeout=30)
        finally:
            if self._daemon is not None and self._daemon.poll() is None:
                self._daemon.terminate()
                try:
                    self._daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._daemon.kill()
                    self._daemon.wait(timeout=15)
            self.root.kill_leftovers()


@contextlib.contextmanager
def private_monit(root: VcapRoot) -> Iterator[Monit]:
    """A running private monit over ``root``'s jobs; always shut down, with no process left."""
    with tempfile.TemporaryDirectory(prefix="dasg-monit-") as tmp:
        monit = Monit(root, Path(tmp))
        try:
            monit.start_daemon()
            yield monit
        finally:
            monit.shutdown()
