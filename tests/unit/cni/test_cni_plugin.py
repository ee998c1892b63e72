"""ADD/DEL/CHECK against the fake iptables table and a scripted agent (the real ones: tests/integration/cni)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamic_asgs.asg import chains
from dynamic_asgs.cni.agent_client import Answer
from dynamic_asgs.cni.command import run
from dynamic_asgs.cni.plugin import Plugin
from dynamic_asgs.cni.protocol import CniError, Code
from dynamic_asgs.cni.settings import CniSettings
from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.iptables.fake import FakeRunner, Fault
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c"}],
        "ips": [{"address": "10.255.0.7/24", "interface": 0}, {"address": "fd00::7/64", "interface": 0}]}
META = {"policy_group_id": "app", "space_id": "space", "container_workload": "app"}
H = "c0ffee-1"


@dataclass
class ScriptedAgent:
    status: int = 200
    body: str = "ok"
    down: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)

    def sync(self, handle: str) -> Answer:
        return self._answer("sync", handle)

    def cleanup(self, handle: str) -> Answer:
        return self._answer("cleanup", handle)

    def _answer(self, what: str, handle: str) -> Answer:
        self.calls.append((what, handle))
        if self.down:
            raise UpstreamError("connection refused")
        return Answer(self.status, self.body)


@dataclass
class Rig:
    tmp: Path
    agent: ScriptedAgent = field(default_factory=ScriptedAgent)
    runners: dict[int, FakeRunner] = field(default_factory=lambda: {4: FakeRunner(4), 6: FakeRunner(6)})

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "n", "type": "dynamic-asgs-cni", "datastore": str(self.store_path),
                "policy_agent_force_poll_address": "127.0.0.1:8722", "underlay_interface_names": ["eth0", "bond0"],
                "prevResult": PREV, "metadata": META, **extra}

    @property
    def store_path(self) -> Path:
        return self.tmp / "store.json"

    def plugin(self, s: CniSettings, logger: Logger) -> Plugin:
        return Plugin(settings=s, runners=self.runners, store=MetadataStore(s.store_path), agent=self.agent,
                      logger=logger)

    def call(self, command: str, conf: dict[str, Any] | bytes, handle: str = H) -> tuple[int, Any]:
        out, err = io.StringIO(), io.StringIO()
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": handle, "CNI_NETNS": "/var/run/netns/c",
               "CNI_IFNAME": "eth0"}
        status = run(env, stdin, out, build=self.plugin, err=err)
        text = out.getvalue()
        return status, json.loads(text) if text else None

    def entries(self) -> dict[str, Any]:
        return MetadataStore(self.store_path).read_all()[0] if self.store_path.exists() else {}

    def user_chains(self, version: int = 4) -> list[str]:
        return self.runners[version].table.user_chains()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield Rig(tmp_path)


def test_add_records_creates_hooks_and_syncs(rig: Rig) -> None:
    status, result = rig.call("ADD", rig.config(iptables_asg_logging=True))
    assert status == 0 and result == {**PREV, "cniVersion": "1.0.0"}
    assert rig.entries()[H] == {"handle": H, "ip": "10.255.0.7", "ipv6": "fd00::7", "metadata": META}
    table = rig.runners[4].table
    netout, log = chains.netout_chain_name(H), chains.log_chain_name(H)
    assert table.rules(netout) == [f"-A {netout} -j REJECT --reject-with icmp-port-unreachable"]
    assert table.exists(log) and len(table.rules(log)) == 3
    assert sorted(table.rules("FORWARD")) == sorted(
        f"-A FORWARD -s 10.255.0.7/32 -o {i} -j {netout}" for i in ("bond0", "eth0"))
    assert rig.agent.calls == [("sync", H)]
    assert rig.runners[4].restores == 1 and rig.user_chains(6) == []  # IPv6 off: its table untouched
    assert rig.call("CHECK", rig.config(iptables_asg_logging=True)) == (0, None)


def test_ipv6_enabled_creates_the_v6_netout_and_hook(rig: Rig) -> None:
    assert rig.call("ADD", rig.config(enable_ipv6=True))[0] == 0
    assert sorted(rig.runners[6].table.rules("FORWARD")) == [
        f"-A FORWARD -s fd00::7/128 -o {i} -j {chains.netout_chain_name(H)}" for i in ("bond0", "eth0")]
    assert rig.runners[6].table.rules(chains.netout_chain_name(H))[0].endswith("icmp6-port-unreachable")
    assert rig.call("DEL", rig.config(enable_ipv6=True)) == (0, None)
    assert rig.user_chains(6) == [] and rig.runners[6].table.rules("FORWARD") == []


def test_405_installs_static_rules(rig: Rig) -> None:
    rig.agent.status, rig.agent.body = 405, "ASG syncing has been disabled administratively"
    rules = [{"protocol": 1, "networks": [{"start": "1.2.3.4", "end": "1.2.3.4"}],
              "ports": [{"start": 443, "end": 443}]}]
    assert rig.call("ADD", rig.config(runtimeConfig={"netOutRules": rules}))[0] == 0
    table, asg = rig.runners[4].table, chains.asg_chain_name(H)
    assert table.rules(chains.netout_chain_name(H))[0].endswith(f"-j {asg}")
    assert any("--dst-range 1.2.3.4-1.2.3.4" in r and "443:443" in r for r in table.rules(asg))


@pytest.mark.parametrize("agent", [ScriptedAgent(500, "failed to update asgs for container c0ffee-1: boom"),
                                   ScriptedAgent(down=True)])
def test_a_failed_sync_fails_add_and_undoes_it(rig: Rig, agent: ScriptedAgent) -> None:
    rig.agent = agent
    status, error = rig.call("ADD", rig.config(iptables_asg_logging=True))
    assert status == 1 and error["code"] == Code.AGENT_SYNC_FAILED
    if not agent.down:
        assert error["msg"] == "asg sync returned 500 with message: failed to update asgs for container c0ffee-1: boom"
    assert rig.entries() == {} and rig.user_chains() == [] and rig.runners[4].table.rules("FORWARD") == []


def test_a_refused_restore_fails_add_and_undoes_the_store_entry(rig: Rig) -> None:
    rig.runners[4].inject(Fault(pattern="^-I FORWARD", message="no such device"))
    status, error = rig.call("ADD", rig.config())
    assert status == 1 and error["code"] == Code.IPTABLES_FAILED and "no such device" in error["details"]
    assert rig.entries() == {} and rig.user_chains() == [] and rig.agent.calls == []


def test_del_removes_everything_even_a_left_over_asg_chain_and_is_idempotent(rig: Rig) -> None:
    assert rig.call("ADD", rig.config())[0] == 0
    asg = chains.asg_chain_name(H)
    rig.runners[4].table.load([f":{asg} - [0:0]", f"-A {asg} -j ACCEPT", f"-F {chains.netout_chain_name(H)}",
                               f"-A {chains.netout_chain_name(H)} -j {asg}"])
    rig.agent.down = True  # a DEL is never blocked by the agent
    for _ in range(2):
        assert rig.call("DEL", rig.config()) == (0, None)
    assert rig.entries() == {} and rig.user_chains() == [] and rig.runners[4].table.rules("FORWARD") == []
    assert rig.call("DEL", {k: v for k, v in rig.config().items() if k != "prevResult"}, handle="other") == (0, None)


def test_check_names_what_is_missing(rig: Rig) -> None:
    assert rig.call("ADD", rig.config())[0] == 0
    rig.runners[4].table.load([f"-D FORWARD -s 10.255.0.7/32 -o bond0 -j {chains.netout_chain_name(H)}"])
    status, error = rig.call("CHECK", rig.config())
    assert status == 1 and error["code"] == Code.CHECK_FAILED and "-o bond0" in error["details"]


def test_an_unexpected_bug_is_still_cni_error_json(rig: Rig) -> None:
    def broken(s: CniSettings, logger: Logger) -> Plugin:
        raise KeyError("bug")

    out = io.StringIO()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": H, "CNI_NETNS": "/n", "CNI_IFNAME": "eth0"}
    assert run(env, json.dumps(rig.config()).encode(), out, build=broken, err=io.StringIO()) == 1
    assert json.loads(out.getvalue())["code"] == Code.INTERNAL


def test_cni_error_is_raised_for_invalid_metadata(rig: Rig) -> None:
    status, error = rig.call("ADD", rig.config(metadata={"space_id": 7}))
    assert status == 1 and error["code"] == Code.INVALID_CONFIG and rig.user_chains() == []
    assert isinstance(CniError(Code.INTERNAL, "x"), Exception)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                     max_leaves=12)
_keys = st.sampled_from(["cniVersion", "name", "type", "prevResult", "metadata", "runtimeConfig", "datastore",
                         "policy_agent_force_poll_address", "underlay_interface_names", "deny_networks"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(command=st.sampled_from(["ADD", "DEL", "CHECK", "VERSION"]),
       raw=st.one_of(st.binary(max_size=40), _json, st.dictionaries(_keys, _json, max_size=6)),
       merge=st.booleans())
def test_stdin_fuzz_answers_in_protocol_terms(tmp_path: Path, command: str, raw: Any, merge: bool) -> None:
    rig = Rig(tmp_path)
    if isinstance(raw, bytes):
        stdin = raw
    elif merge and isinstance(raw, dict):  # a valid configuration with fuzzed keys on top
        stdin = json.dumps({**rig.config(), **raw}).encode()
    else:
        stdin = json.dumps(raw).encode()
    status, document = rig.call(command, stdin)
    if status == 0:
        assert document is None or "code" not in document
    else:
        assert status == 1 and set(document) == {"cniVersion", "code", "msg", "details"}
        assert isinstance(document["code"], int) and document["code"] != Code.INTERNAL, document
