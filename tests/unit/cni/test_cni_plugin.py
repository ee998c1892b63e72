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


# -- hostile input (issue 13) ---------------------------------------------------------------------

BAD_IDS = ["x" * 20 + "\n-A FORWARD -j ACCEPT", "abc\r", "abc\x00", "abc\tx", 'abc"', "-abc", "abc def", "é",
           "x" * 129, "abc#"]


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_container_id_outside_the_cni_spec_grammar_is_refused_and_nothing_touched(rig: Rig, command: str,
                                                                                   bad: str) -> None:
    assert rig.call("ADD", rig.config())[0] == 0
    before = (rig.entries(), rig.runners[4].table.save_lines(), rig.runners[4].restores, list(rig.agent.calls))
    status, error = rig.call(command, rig.config(), handle=bad)
    assert status == 1 and error["code"] == Code.INVALID_ENVIRONMENT and error["msg"] == "invalid CNI_CONTAINERID"
    assert "\n" not in error["details"]
    assert (rig.entries(), rig.runners[4].table.save_lines(), rig.runners[4].restores, rig.agent.calls) == before


@pytest.mark.parametrize(("field", "value"), [("space_id", "s\n-A FORWARD -j ACCEPT"), ("policy_group_id", "a b"),
                                              ("container_workload", "app\n*nat"), ("ports", "80\r"),
                                              ("log_config", '{"guid": "a\\u0000"}')])
def test_metadata_outside_its_grammar_fails_add_before_anything_is_touched(rig: Rig, field: str, value: str) -> None:
    status, error = rig.call("ADD", rig.config(metadata={**META, field: value}))
    assert status == 1 and error["code"] == Code.INVALID_CONFIG and f"metadata.{field}" in error["details"]
    assert rig.entries() == {} and rig.runners[4].restores == 0 and rig.agent.calls == []


FIRST, SECOND = "0a1b2c3d-4e5f-6a7b-8c9d-000000000001", "0a1b2c3d-4e5f-6a7b-8c9d-000000000002"
PREV2 = {**PREV, "ips": [{"address": "10.255.0.8/24", "interface": 0}]}


def test_an_add_whose_chain_names_collide_is_refused_naming_both_and_the_first_is_untouched(rig: Rig) -> None:
    assert chains.collide(FIRST, SECOND)
    assert rig.call("ADD", rig.config(iptables_asg_logging=True), handle=FIRST)[0] == 0
    before = (rig.entries(), rig.runners[4].table.save_lines(), rig.store_path.read_bytes())
    status, error = rig.call("ADD", rig.config(iptables_asg_logging=True, prevResult=PREV2), handle=SECOND)
    assert status == 1 and error["code"] == Code.CHAIN_NAME_COLLISION
    assert FIRST in error["details"] and SECOND in error["details"]
    assert (rig.entries(), rig.runners[4].table.save_lines(), rig.store_path.read_bytes()) == before
    assert rig.agent.calls == [("sync", FIRST)]
    # The runtime cleans up a failed ADD with DEL: the first container keeps its chains, hook and entry.
    assert rig.call("DEL", rig.config(iptables_asg_logging=True, prevResult=PREV2), handle=SECOND) == (0, None)
    assert (rig.entries(), rig.runners[4].table.save_lines()) == before[:2]
    assert rig.call("CHECK", rig.config(iptables_asg_logging=True), handle=FIRST) == (0, None)


def test_del_removes_only_its_own_hooks_from_a_chain_another_container_shares(rig: Rig) -> None:
    assert rig.call("ADD", rig.config(), handle=FIRST)[0] == 0
    # A colliding container written by a CNI that checks nothing (silk's): its entry and hook.
    store = MetadataStore(rig.store_path)
    store.add(SECOND, "10.255.0.8", META)
    netout = chains.netout_chain_name(SECOND)
    rig.runners[4].table.load([f"-I FORWARD 1 -s 10.255.0.8/32 -o eth0 -j {netout}"])
    assert rig.call("DEL", rig.config(prevResult=PREV2), handle=SECOND) == (0, None)
    table = rig.runners[4].table
    assert sorted(table.rules("FORWARD")) == sorted(f"-A FORWARD -s 10.255.0.7/32 -o {i} -j {netout}"
                                                    for i in ("bond0", "eth0"))
    assert table.exists(netout) and list(rig.entries()) == [FIRST]
    assert rig.call("DEL", rig.config(), handle=FIRST) == (0, None)  # the last one out removes the chains
    assert rig.user_chains() == [] and table.rules("FORWARD") == []


@pytest.mark.parametrize("name", ["store.json_lock", "store.json_version", "store.json"])
def test_a_symlink_planted_at_a_store_file_fails_the_cni_cleanly_and_its_target_is_untouched(
        rig: Rig, tmp_path: Path, name: str) -> None:
    assert rig.call("ADD", rig.config(), handle="first")[0] == 0
    target = tmp_path / "etc-shadow"
    target.write_text("root:x:0:0\n")
    (tmp_path / name).unlink()
    (tmp_path / name).symlink_to(target)
    for command in ("ADD", "DEL"):
        status, error = rig.call(command, rig.config())
        assert status == 1 and error["code"] == Code.STORE_FAILED, error
        assert "symbolic link: refused" in error["details"]
    assert target.read_text() == "root:x:0:0\n" and (tmp_path / name).is_symlink()
    assert rig.runners[4].table.rules("FORWARD") == [
        f"-A FORWARD -s 10.255.0.7/32 -o {i} -j {chains.netout_chain_name('first')}" for i in ("bond0", "eth0")]
