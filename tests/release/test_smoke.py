"""Release smoke test: the compiled packages and rendered jobs run under a private real monit.

The jobs are laid out under a temporary root that mirrors /var/vcap (bosh_tools.vcap_root), with the
compiled python3 and dynamic-asgs packages (conftest's `compiled_packages`). The api side: the
policy server on SQLite (pre-start migrates first, as the BOSH agent runs it) and the syncer
against a cc-stub. The cell side: the agent and netmon, whose iptables tools are wrappers that run
`iptables-legacy-*` inside a private network namespace, so the machine's own tables are never
touched. monit starts everything; the test waits until the policy server is healthy and serves
the stub's ASGs (so the syncer synced), the agent answers /log-level, then stops everything and
checks that no process is left.

The machine has no `vcap` user: the ctl and pre-start scripts' `--user vcap` becomes
`--user nobody:nogroup` (the one change made to the rendered files besides bosh_tools.vcap_root's path
rewrite), which proves the daemons drop root as they will drop it to vcap on a VM.
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
import requests
from bosh_tools.compile import Compiled
from bosh_tools.monit import RUNNING, STOPPED, private_monit
from bosh_tools.render import link_from_job, render_job
from bosh_tools.vcap_root import VcapRoot
from release_helpers import JOBS

from dynamic_asgs.local.harness import iptables_wrappers
from support.daemons import example_groups, free_port, make_certs, start_cc_stub, wait_for
from support.env import require_root_netns, require_tools
from support.netns import netns

pytestmark = pytest.mark.slow

STANDIN_USER, STANDIN_GROUP = "nobody", "nogroup"
NO_PROXY = {"http": "", "https": "", "no_proxy": "*"}


@pytest.fixture
def vcap_root() -> Iterator[VcapRoot]:
    """A /var/vcap stand-in that the stand-in user can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="dasg-vcap-"))
    path.chmod(0o755)
    root = VcapRoot(path)
    try:
        yield root
    finally:
        root.kill_leftovers()
        shutil.rmtree(path, ignore_errors=True)


def wrappers(directory: Path, ns: str) -> dict[str, str]:
    """iptables tools that run the legacy backend inside namespace ``ns`` (the harness's wrappers)."""
    return iptables_wrappers(directory, ns, "legacy")


def install(root: VcapRoot, job: str, properties: dict[str, Any], links: dict[str, Any] | None = None) -> None:
    files = {dest: r.text for dest, r in render_job(JOBS / job, properties, links=links or {}).items()}
    for dest in ("bin/ctl", "bin/pre-start"):
        if dest in files:
            files[dest] = files[dest].replace("--user vcap ", f"--user {STANDIN_USER}:{STANDIN_GROUP} ")
    root.install_job(job, files)


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def pid_of(root: VcapRoot, job: str) -> int:
    return int((root.path / "sys" / "run" / job / f"{job}.pid").read_text())


def test_jobs_start_healthy_under_monit_and_stop_cleanly(compiled_packages: dict[str, Compiled],
                                                         vcap_root: VcapRoot, tmp_path: Path) -> None:
    require_root_netns()
    require_tools("monit", "ruby", "setpriv", "setsid", "iptables-legacy-save", "iptables-legacy-restore")
    root = vcap_root
    for name, package in compiled_packages.items():
        root.link_package(name, package.install_dir)
    pki = make_certs(tmp_path / "pki", "smoke")
    pem = {k: Path(v).read_text() for k, v in {"ca": pki.server.ca, "server_cert": pki.server.cert,
                                                 "server_key": pki.server.key, "client_cert": pki.client.cert,
                                                 "client_key": pki.client.key}.items()}
    groups = example_groups(3)
    stub = start_cc_stub(tmp_path, groups)
    ports = {name: free_port() for name in ("api", "health", "force", "debug")}
    try:
        with netns("smoke") as ns:
            ipt = wrappers(tmp_path / "iptables", ns)
            server_props = {"listen_ip": "127.0.0.1", "internal_listen_port": ports["api"],
                            "health_check_port": ports["health"], "metrics_port": 0, "workers": 1,
                            "ca_cert": pem["ca"], "server_cert": pem["server_cert"], "server_key": pem["server_key"]}
            install(root, "dynamic-asgs-policy-server", server_props)
            cc_ca = (stub.pki_dir / "cc-ca.crt").read_text()
            install(root, "dynamic-asgs-asg-syncer", {
                "asg_poll_interval_seconds": 1, "metrics_port": 0, "uaa_client_secret": "network-policy-secret",
                "uaa_hostname": "127.0.0.1", "uaa_port": stub.ports["public"], "uaa_ca": cc_ca,
                "cc_hostname": "127.0.0.1", "cc_port": stub.ports["public"], "cc_ca_cert": cc_ca,
                "cc_internal": {"hostname": "127.0.0.1", "port": stub.ports["internal"], "ca_cert": cc_ca,
                                "client_cert": (stub.pki_dir / "cc-client.crt").read_text(),
                                "client_key": (stub.pki_dir / "cc-client.key").read_text()},
            }, links={"dynamic-asgs-db": link_from_job(JOBS / "dynamic-asgs-policy-server", "dynamic-asgs-db",
                                                       server_props)})
            agent_props = {"policy_server": {"hostname": "127.0.0.1", "internal_listen_port": ports["api"]},
                           "force_policy_poll_cycle_port": ports["force"], "debug_server_port": ports["debug"],
                           "metrics_port": 0, "asg_poll_interval_seconds": 2, "ca_cert": pem["ca"],
                           "client_cert": pem["client_cert"], "client_key": pem["client_key"], **ipt}
            install(root, "dynamic-asgs-agent", agent_props, links={
                "cni_config": link_from_job(JOBS / "dynamic-asgs-cni", "cni_config", {})})
            install(root, "dynamic-asgs-netmon", {"metrics_port": 0, "poll_interval": 1,
                                                  "iptables_save_command": ipt["iptables_save_command"],
                                                  "ip6tables_save_command": ipt["ip6tables_save_command"]})
            install(root, "dynamic-asgs-cni", {}, links={
                "dynamic-asgs-agent": link_from_job(JOBS / "dynamic-asgs-agent", "dynamic-asgs-agent", agent_props)})

            # The BOSH agent runs pre-start scripts before monit starts the processes.
            for job in ("dynamic-asgs-policy-server", "dynamic-asgs-cni"):
                result = subprocess.run(
                    [str(root.path / "jobs" / job / "bin" / "pre-start")], capture_output=True, text=True,
                    timeout=120, check=False)
                assert result.returncode == 0, f"{job} pre-start: {result.stdout}{result.stderr}"
            db = root.path / "store" / "dynamic-asgs-policy-server" / "policy_server.db"
            assert db.is_file() and pwd.getpwuid(db.stat().st_uid).pw_name == STANDIN_USER, "migrated as the user"

            with private_monit(root) as monit:
                daemons = ["dynamic-asgs-agent", "dynamic-asgs-asg-syncer", "dynamic-asgs-netmon",
                           "dynamic-asgs-policy-server"]
                assert monit.start_all(timeout=90) == dict.fromkeys(daemons, RUNNING)
                health = wait_for(lambda: requests.get(f"http://127.0.0.1:{ports['health']}/health", timeout=5,
                                                       proxies=NO_PROXY).json(), timeout=60, what="policy health")
                assert health["healthy"] is True

                def served() -> list[str]:
                    r = requests.get(f"https://127.0.0.1:{ports['api']}/networking/v1/internal/security_groups"
                                     "?space_guids=space-0,space-1,space-2",
                                     verify=str(pki.server.ca), cert=(str(pki.client.cert), str(pki.client.key)),
                                     timeout=5, proxies=NO_PROXY)
                    return sorted(g["name"] for g in r.json()["security_groups"])

                wait_for(lambda: served() == sorted(g["name"] for g in groups), timeout=60,
                         what="the syncer to copy the stub's ASGs into the policy DB")
                level = wait_for(lambda: requests.get(f"http://127.0.0.1:{ports['debug']}/log-level", timeout=5,
                                                      proxies=NO_PROXY), timeout=60, what="agent /log-level")
                assert level.status_code == 200
                status = monit.wait_for(RUNNING, timeout=60)
                assert set(status) == set(daemons), "monit reports every process healthy"

                nobody = pwd.getpwnam(STANDIN_USER).pw_uid
                for job in daemons:
                    expected = 0 if job in ("dynamic-asgs-agent", "dynamic-asgs-netmon") else nobody
                    assert uid_of(pid_of(root, job)) == expected, f"{job} runs as the wrong user"
                secrets = ["jobs/dynamic-asgs-policy-server/config/certs/server.key",
                           "jobs/dynamic-asgs-policy-server/config/policy-server.json",
                           "jobs/dynamic-asgs-asg-syncer/config/certs/cc_internal_client.key",
                           "jobs/dynamic-asgs-agent/config/certs/client.key"]
                for secret in secrets:
                    assert stat.S_IMODE((root.path / secret).stat().st_mode) == 0o600, secret
                for job in daemons:
                    log = root.path / "sys" / "log" / job / f"{job}.stdout.log"
                    assert log.is_file() and log.stat().st_size > 0, f"{job} logs nothing to {log}"
                plugin = root.path / "jobs" / "dynamic-asgs-cni" / "bin" / "dynamic-asgs-cni"
                assert os.access(plugin, os.X_OK)
                conflist = json.loads((root.path / "jobs/dynamic-asgs-cni/config/cni/dynamic-asgs.conflist")
                                      .read_text())
                assert conflist["plugins"][-1]["policy_agent_force_poll_address"] == f"127.0.0.1:{ports['force']}"

                assert monit.stop_all(timeout=90) == dict.fromkeys(daemons, STOPPED)
                assert root.processes() == [], "stop leaves no process"
                for job in daemons:
                    assert not (root.path / "sys" / "run" / job / f"{job}.pid").exists()
    finally:
        stub.daemon.stop()
    assert root.processes() == []
