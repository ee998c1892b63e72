"""The local harness's typed pieces: config documents, the environment's state, waits, wrappers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dynamic_asgs.agent.settings import load_settings
from dynamic_asgs.local import examples
from dynamic_asgs.local.configs import AgentConfig, CCEndpoints, SyncerConfig, write_config
from dynamic_asgs.local.environment import ContainerState, EnvState, Ports
from dynamic_asgs.local.harness import NotReady, Process, ProcessExited, iptables_wrappers, wait_until
from dynamic_asgs.local.pki import Issued

CLIENT = Issued(cert=Path("/c.crt"), key=Path("/c.key"), ca=Path("/ca.crt"))


def test_the_agent_config_is_one_the_agent_accepts_and_extra_keys_win(tmp_path: Path) -> None:
    config = AgentConfig(policy_server_url="https://127.0.0.1:4003", client=CLIENT, store=tmp_path / "store.json",
                         lock_file=tmp_path / "lock", force_port=8722, debug_port=8721, metrics_port=0,
                         underlay_ips=("192.0.2.1",), extra={"asg_poll_interval": 7})
    path = write_config(tmp_path / "agent.json", config.to_json())
    assert path.stat().st_mode & 0o777 == 0o600
    settings = load_settings(str(path))
    assert (settings.force_port, settings.debug_port, settings.poll_interval) == (8722, 8721, 7)


def test_the_syncer_config_names_the_cc_endpoints_once() -> None:
    cc = CCEndpoints(url="https://cc", internal_url="https://cci", ca_cert="ca", client_cert="c", client_key="k")
    doc = SyncerConfig(database={"type": "sqlite", "database_name": "x"}, cc=cc, uuid="s1").to_json()
    assert (doc["uaa_url"], doc["cc_url"], doc["cc_internal_url"], doc["uuid"]) == ("https://cc", "https://cc",
                                                                                    "https://cci", "s1")
    assert "asg_poll_interval_seconds" not in doc  # the daemon's default unless given


def test_env_state_round_trips_through_json() -> None:
    state = EnvState(id="dasg1", pid=1, backend="nft", asgs="/a.yml", created_dir=False, entries=["logs"],
                     containers={"c1": ContainerState(ns="n", handle="h", space="s", space_guid="g", app_guid="a")},
                     ports=Ports(agent_debug=8721))
    assert EnvState.from_json(json.loads(json.dumps(state.to_json()))) == state
    with pytest.raises(ValueError):
        EnvState.from_json({"id": "x"})


def test_wait_until_returns_the_value_and_names_what_it_waited_for() -> None:
    assert wait_until(lambda: 3, what="three") == 3
    with pytest.raises(NotReady, match="waiting for nothing"):
        wait_until(lambda: None, what="nothing", timeout=0.2)


def test_a_process_that_exits_ends_the_wait_with_its_log(tmp_path: Path) -> None:
    process = Process([], tmp_path / "log", argv=[sys.executable, "-c", "print('bye')"])
    with pytest.raises(ProcessExited) as caught:
        process.wait_ready(lambda: None, what="a port", timeout=30)
    assert "bye" in caught.value.log_tail
    process.stop()


def test_iptables_wrappers_run_the_backends_tools_in_the_namespace(tmp_path: Path) -> None:
    keys = iptables_wrappers(tmp_path, "ns1", "nft")
    assert sorted(keys) == ["ip6tables_restore_command", "ip6tables_save_command", "iptables_restore_command",
                            "iptables_save_command"]
    script = Path(keys["iptables_save_command"]).read_text()
    assert script.splitlines()[1] == 'exec ip netns exec ns1 iptables-nft-save "$@"'
    assert (tmp_path / "iptables").exists()  # the plain tool, for listing one chain
    assert subprocess.run(["sh", "-n", keys["ip6tables_restore_command"]]).returncode == 0


def test_iptables_wrappers_can_be_written_again_while_they_run(tmp_path: Path) -> None:
    # The local environment asks for the wrappers each time it adds a container, while the agent
    # runs them: a script open for writing cannot be executed, nor opened for writing while the
    # kernel execs it (ETXTBSY, "Text file busy"), on either side.
    keys = iptables_wrappers(tmp_path, "ns1", "nft")
    save = keys["iptables_save_command"]
    stop = threading.Event()
    exec_errors: list[OSError] = []

    def run_it() -> None:
        while not stop.is_set():
            try:
                subprocess.run([save], env={"PATH": str(tmp_path)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            except OSError as error:
                exec_errors.append(error)

    (tmp_path / "ip").write_text("#!/bin/sh\nexit 0\n")  # what the wrapper execs: instant
    (tmp_path / "ip").chmod(0o755)
    runner = threading.Thread(target=run_it)
    runner.start()
    try:
        for i in range(400):
            iptables_wrappers(tmp_path, f"ns{i % 2}", "nft")  # half the calls change the scripts
    finally:
        stop.set()
        runner.join()
    assert exec_errors == []
    assert 'exec ip netns exec ns1 iptables-nft-save "$@"' in Path(save).read_text()
    assert not list(tmp_path.glob(".*.new"))


def test_the_examples_ship_with_the_package() -> None:
    assert examples.ASGS.is_file() and json.loads(examples.CONTAINER.read_text())["handle"]
