"""A temporary directory laid out like a BOSH VM's /var/vcap, for running rendered jobs in tests.

Goals: jobs rendered by bosh_tools.render run as they would on a VM (monit starts bin/ctl,
pidfiles under sys/run/<job>/, logs under sys/log/<job>/, data under data/<job>/, packages under
packages/<name>), without touching the machine's /var/vcap; every process they leave is found.

Mechanisms: rendered files are written under jobs/<job>/ with every `/var/vcap/` replaced by the
root's own path (the only change made to them), bin/* executable, other files 0644 (a ctl script
narrows key files itself, as on a VM); a job's monit file goes to monit/job/<job>.monitrc, which
bosh_tools.monit's control file includes, like the agent's /var/vcap/monit/job/. Packages are
symlinks, like /var/vcap/packages/<name> -> /var/vcap/data/packages/<name>/<version>. Processes
are found by scanning /proc for command lines or working directories inside the root, which is
unique per test; `kill_leftovers` ends only those.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["VcapRoot"]

_DIRS = ("jobs", "packages", "sys/run", "sys/log", "data", "monit/job")


class VcapRoot:
    """A /var/vcap stand-in rooted at ``path`` (created)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        for sub in _DIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def rewrite(self, text: str) -> str:
        """``text`` with /var/vcap/ paths moved into this root."""
        return text.replace("/var/vcap/", f"{self.path}/")

    def install_job(self, job: str, files: Mapping[str, str]) -> Path:
        """Write a rendered job: ``files`` maps destination paths (and "monit") to their text."""
        job_dir = self.path / "jobs" / job
        for destination, text in files.items():
            monit = destination == "monit"
            target = self.path / "monit" / "job" / f"{job}.monitrc" if monit else job_dir / destination
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.rewrite(text))
            target.chmod(0o755 if destination.startswith("bin/") else 0o644)
        for sub in ("sys/run", "sys/log", "data"):
            (self.path / sub / job).mkdir(parents=True, exist_ok=True)
        return job_dir

    def link_package(self, name: str, install_dir: Path | str) -> Path:
        """Expose a compiled package at packages/<name>."""
        link = self.path / "packages" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(install_dir).resolve(), target_is_directory=True)
        return link

    def processes(self) -> list[int]:
        """Pids of live processes whose command line or working directory is inside this root."""
        root = str(self.path)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and (root in cmdline or cwd == root or cwd.startswith(root + "/")):
                found.append(int(entry.name))
        return found

    def kill_leftovers(self, grace: float = 5.0) -> list[int]:
        """End processes left inside this root (TERM, then KILL after ``grace``); return their pids."""
        ended: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            ended.extend(p for p in pids if p not in ended)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.processes():
                time.sleep(0.1)
            if not self.processes():
                break
        return ended
