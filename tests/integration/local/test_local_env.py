"""``dynamic-asgs local``: up with 3 containers in 2 spaces, live ASG edits, status, exec, down leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamic_asgs.local import examples
from support.daemons import wait_for
from support.env import require, require_root_netns, require_tools

EXAMPLES = examples.ASGS
MARKETING = "8c5f0c7e-0000-4000-8000-00000000000c"


def local(*args: str, check: bool = False, user: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*user, sys.executable, "-m", "dynamic_asgs.cli", "local", *args], capture_output=True,
                          text=True, check=check, timeout=120)


class Env:
    def __init__(self, state: Path, asgs: Path, proc: subprocess.Popen[str]) -> None:
        self.state, self.asgs, self.proc = state, asgs, proc

    def connects(self, container: str, addr: str, port: int) -> bool:
        r = local("exec", "--state-dir", str(self.state), container, "--", "nc", "-z", "-w", "3", addr, str(port))
        return r.returncode == 0

    def status(self) -> dict[str, Any]:
        out = local("status", "--json", "--state-dir", str(self.state), check=True).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def saved_state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.state / "state.json").read_text())
        return result

    def edit(self, change: Any) -> None:
        doc = yaml.safe_load(self.asgs.read_text())
        change({g["name"]: g for g in doc["security_groups"]})
        tmp = self.asgs.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.asgs)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    require_root_netns()
    require_tools("nc", "iptables-legacy-restore", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local")
    asgs = tmp_path / "asgs.yml"
    shutil.copy(EXAMPLES, asgs)
    state = tmp_path / "state"
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "dynamic_asgs.cli", "local", "up", "--containers", "3",
                             "--state-dir", str(state), "--asgs", str(asgs)], stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for(lambda: ((state / "state.json").exists() and json.loads((state / "state.json").read_text())["ready"])
                 or proc.poll() is not None, timeout=120, what="local up")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        yield Env(state, asgs, proc)
    finally:
        if proc.poll() is None:
            local("down", "--state-dir", str(state))
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(90)
        log.close()


def netns_inodes(names: list[str]) -> dict[str, int]:
    return {n: os.stat(f"/run/netns/{n}").st_ino for n in names}


def test_local_up_enforces_live_edits_and_down_leaves_nothing(env: Env) -> None:
    state = env.saved_state()
    spaces = {name: c["space"] for name, c in state["containers"].items()}
    assert spaces == {"c1": "payments", "c2": "marketing", "c3": "payments"}
    container_ns = [c["ns"] for c in state["containers"].values()]
    before = netns_inodes(container_ns)

    assert env.connects("c1", "10.10.10.5", 5432) and env.connects("c3", "10.10.10.5", 6432)  # payments-db
    assert not env.connects("c2", "10.10.10.5", 5432)  # not bound to marketing
    assert env.connects("c2", "8.8.8.8", 53)  # public-dns is global
    assert not env.connects("c1", "10.20.0.15", 443)  # build-mirrors is for staging only
    assert not env.connects("c1", "10.30.0.1", 80)  # in no group
    status = env.status()
    assert {c["dataset_version"] for c in status["containers"].values()} == {status["dataset_version"]}
    assert all(c["rule_count"] > 0 for c in status["containers"].values())

    def bind_and_remove(groups: dict[str, Any]) -> None:
        groups["payments-db"]["running_spaces"].append(MARKETING)
        groups["public-dns"]["rules"] = [r for r in groups["public-dns"]["rules"] if r["protocol"] != "tcp"]

    env.edit(bind_and_remove)
    wait_for(lambda: env.connects("c2", "10.10.10.5", 5432), timeout=60, what="payments-db bound to marketing")
    wait_for(lambda: not env.connects("c1", "8.8.8.8", 53), timeout=60, what="DNS over TCP removed")
    assert not env.connects("c2", "8.8.8.8", 53)
    after = env.status()
    assert after["dataset_version"] > status["dataset_version"]
    assert {c["dataset_version"] for c in after["containers"].values()} == {after["dataset_version"]}
    assert netns_inodes(container_ns) == before, "the containers were not recreated"
    text = local("status", "--state-dir", str(env.state), check=True).stdout
    assert "marketing" in text and "payments" in text

    pids = list(state["processes"].values())
    down = local("down", "--state-dir", str(env.state))
    assert down.returncode == 0, down.stdout + down.stderr
    env.proc.wait(60)
    assert env.proc.returncode == 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert state["id"] not in listed
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert not env.state.exists() and env.asgs.exists()  # its own files gone, the user's ASG file kept


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_local_up_without_root_says_what_it_needs(tmp_path: Path) -> None:
    require_tools("setpriv")
    readable = subprocess.run([*NOBODY, sys.executable, "-c", "import dynamic_asgs.cli"], capture_output=True,
                              check=False).returncode == 0
    require(readable, "a checkout and venv that an unprivileged user (uid 65534) can read")
    tmp_path.chmod(0o777)
    r = local("up", "--state-dir", str(tmp_path / "state"), user=NOBODY)
    assert r.returncode == 2 and "needs root" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()


def test_exec_names_the_containers_there_are(env: Env) -> None:
    r = local("exec", "--state-dir", str(env.state), "c9", "--", "true")
    assert r.returncode == 2 and "no container 'c9' (there are: c1, c2, c3)" in r.stderr
