"""The stand-ins for silk's cni-wrapper-plugin and vxlan-policy-agent do what silk does.

Expected tables are written out here from silk-release's source (netrules/*.go, lib/rules),
independently of silk.netrules, in the form ``iptables -S`` prints them; each
runs on legacy and nft in a cell namespace. Real traffic checks that Garden's static
rules allow and refuse what they say. The store is compared byte for byte with what Go's
encoding/json writes, and read back by our agent's reader.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from silk.agent import DISABLED, SilkAgent
from silk.cni import ADD_STEPS, DEL_STEPS, Call, CniFailure, SilkCni
from silk.netrules import DenyNetworks, OutConn, SilkCniConfig, parse_net_out_rules
from silk.store import SilkStore, StoreFailure, go_json

from dynamic_asgs.asg import chains
from dynamic_asgs.metadata_store import MetadataStore
from support.cell import Cell, cell
from support.env import IPTABLES_BACKENDS, require_backend
from support.netns import ns_run

H = "3d3b6b4c-7e5a-4c3e-9c62-0a1b2c3d4e5f"
NETOUT, INPUT, OVERLAY = "netout--3d3b6b4c-7e5a-4c3e-9", "input--3d3b6b4c-7e5a-4c3e-9c", "overlay--3d3b6b4c-7e5a-4c3e-"
LOG, RL_LOG, NETIN = "netout--3d3b6b4c-7e5a-4--log", "netout--3d3b6b4c-7e5--rl-log", "netin--3d3b6b4c-7e5a-4c3e-9c"
REJECT = "-j REJECT --reject-with icmp-port-unreachable"
META = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app"}


def net(start: str, end: str = "") -> dict[str, str]:
    return {"start": start, "end": end or start}


RULES: list[dict[str, Any]] = [
    {"protocol": 1, "networks": [net("198.18.1.1"), net("198.18.2.0", "198.18.2.255")],
     "ports": [{"start": 80, "end": 80}, {"start": 1000, "end": 2000}]},
    {"protocol": 2, "networks": [net("198.18.1.1")], "ports": [{"start": 53, "end": 53}], "log": True},
    {"protocol": 3, "networks": [net("198.18.1.2")], "icmps": {"type": 8, "code": 0}},
    {"protocol": 3, "networks": [net("198.18.1.3")], "icmps": {"type": 255, "code": 255}},
    {"protocol": 0, "networks": [net("198.18.3.0", "198.18.3.255")]},
    {"protocol": 1, "networks": [net("198.18.1.1")], "ports": [{"start": 80, "end": 80}]},  # a duplicate
    {"protocol": 1, "networks": [net("198.18.1.9")]},  # tcp without ports: skipped
    {"protocol": 3, "networks": [net("198.18.1.9")], "icmps": {"type": 8}},  # icmp without code: skipped
]


class Silk:
    """A cell with the silk agent stand-in and cni-wrapper-plugin stand-in."""

    def __init__(self, cell: Cell, agent: SilkAgent, tmp: Path) -> None:
        self.cell, self.agent, self.tmp = cell, agent, tmp

    def cni(self, *, logging: bool = False, **config: Any) -> SilkCni:
        cfg = SilkCniConfig(datastore=str(self.tmp / "container-metadata" / "store.json"),
                            iptables_lock_file=str(self.cell.lock_file),
                            policy_agent_force_poll_address=self.agent.address, **config)
        return SilkCni(self.cell, cfg.with_iptables_logging(logging))

    def rules(self, table: str, chain: str) -> list[str]:
        out = ns_run(self.cell.ns, [self.cell.tool(4), "-w", "-t", table, "-S", chain], check=False)
        return out.stdout.splitlines()[1:] if out.returncode == 0 else []

    def chains(self, table: str) -> set[str]:
        out = ns_run(self.cell.ns, [self.cell.tool(4), "-w", "-t", table, "-S"]).stdout
        return {line.split()[1] for line in out.splitlines() if line.startswith("-N ")}


@pytest.fixture(params=IPTABLES_BACKENDS)
def silk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Silk]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c, SilkAgent() as agent:
        yield Silk(c, agent, tmp_path)


# -- the table after ADD ----------------------------------------------------------------------


def test_our_chain_names_are_silks() -> None:
    assert (chains.netout_chain_name(H), chains.log_chain_name(H), chains.rate_limit_log_chain_name(H)) == (
        NETOUT, LOG, RL_LOG)


def test_add_with_job_defaults_creates_silks_chains_and_static_rules(silk: Silk) -> None:
    result = silk.cni().add(H, metadata=META, net_out_rules=RULES)
    ip = result.ip
    assert ip == "10.255.1.2"
    assert result.asg_status == 405
    assert [w.split(":")[0] for w in result.warnings] == ["UDP/TCP rule must specify ports",
                                                          "ICMP rule must specify ICMP type/code"]
    assert silk.chains("filter") == {INPUT, NETOUT, OVERLAY, LOG}
    assert silk.chains("nat") == silk.chains("mangle") == {NETIN}
    assert silk.rules("filter", "INPUT") == [f"-A INPUT -s {ip}/32 -j {INPUT}"]
    assert silk.rules("filter", "FORWARD") == [f"-A FORWARD -s {ip}/32 -o underlay0 -j {NETOUT}",
                                               f"-A FORWARD -j {OVERLAY}"]
    assert silk.rules("filter", INPUT) == [f"-A {INPUT} -m state --state RELATED,ESTABLISHED -j ACCEPT",
                                           f"-A {INPUT} {REJECT}"]
    tcp = f"-A {NETOUT} -p tcp -m iprange --dst-range"
    assert silk.rules("filter", NETOUT) == [  # Garden's rules reversed (each inserted at 1), then the REJECT
        f"-A {NETOUT} -m state --state RELATED,ESTABLISHED -j ACCEPT",
        f"-A {NETOUT} -p tcp -m state --state INVALID -j DROP",
        f"-A {NETOUT} -m iprange --dst-range 198.18.3.0-198.18.3.255 -j ACCEPT",
        f"-A {NETOUT} -p icmp -m iprange --dst-range 198.18.1.3-198.18.1.3 -m icmp --icmp-type any -j ACCEPT",
        f"-A {NETOUT} -p icmp -m iprange --dst-range 198.18.1.2-198.18.1.2 -m icmp --icmp-type 8/0 -j ACCEPT",
        f"-A {NETOUT} -p udp -m iprange --dst-range 198.18.1.1-198.18.1.1 -m udp --dport 53 -g {LOG}",
        f"{tcp} 198.18.2.0-198.18.2.255 -m tcp --dport 1000:2000 -j ACCEPT",
        f"{tcp} 198.18.2.0-198.18.2.255 -m tcp --dport 80 -j ACCEPT",
        f"{tcp} 198.18.1.1-198.18.1.1 -m tcp --dport 1000:2000 -j ACCEPT",
        f"{tcp} 198.18.1.1-198.18.1.1 -m tcp --dport 80 -j ACCEPT",
        f"-A {NETOUT} {REJECT}"]
    assert silk.rules("filter", OVERLAY) == [
        f"-A {OVERLAY} -s {ip}/32 -o silk-vtep -m mark ! --mark 0x0 -j ACCEPT",
        f"-A {OVERLAY} -d {ip}/32 -m state --state RELATED,ESTABLISHED -j ACCEPT",
        f"-A {OVERLAY} -d {ip}/32 -m mark --mark 0xffff0000 -j ACCEPT",
        f"-A {OVERLAY} -d {ip}/32 {REJECT}"]
    assert silk.rules("filter", LOG) == [
        f'-A {LOG} ! -p udp -m conntrack --ctstate INVALID,NEW,UNTRACKED -j LOG --log-prefix "OK_{H[:25]} "',
        f'-A {LOG} -p udp -m limit --limit 100/sec --limit-burst 100 -j LOG --log-prefix "OK_{H[:25]} "',
        f"-A {LOG} -j ACCEPT"]
    for table in ("nat", "mangle"):
        assert silk.rules(table, "PREROUTING") == [f"-A PREROUTING -j {NETIN}"]
        assert silk.rules(table, NETIN) == []
    assert silk.rules("nat", "POSTROUTING") == [f"-A POSTROUTING -s {ip}/32 ! -d 10.255.0.0/16 ! -o silk-vtep "
                                                "-j MASQUERADE"]


def test_add_with_logging_limits_deny_networks_and_port_mappings(silk: Silk) -> None:
    cni = silk.cni(underlay_interfaces=("underlay0", "eth9"), dns_servers=("169.254.0.2", "8.8.8.8"),
                   host_tcp_services=("169.254.0.2:9001",), host_udp_services=("169.254.0.3:9002",),
                   deny_networks=DenyNetworks(always=("198.18.6.7/24",), running=("198.18.4.0/24",),
                                              staging=("198.18.5.1/32",)),
                   outbound_connections=OutConn(limit=True, burst=900, rate_per_sec=100),
                   iptables_denied_logs_per_sec=2, logging=True)
    rules = [{"protocol": 1, "networks": [net("198.18.1.1")], "ports": [{"start": 443, "end": 443}]}]
    result = cni.add(H, metadata={**META, "container_workload": "staging"}, net_out_rules=rules,
                     port_mappings=[{"host_port": 61000, "container_port": 8080}])
    ip = result.ip
    assert silk.chains("filter") == {INPUT, NETOUT, OVERLAY, LOG, RL_LOG}
    assert silk.rules("filter", "FORWARD") == [f"-A FORWARD -s {ip}/32 -o underlay0 -j {NETOUT}",
                                               f"-A FORWARD -s {ip}/32 -o eth9 -j {NETOUT}",
                                               f"-A FORWARD -j {OVERLAY}"]
    assert silk.rules("filter", INPUT) == [  # only link-local DNS servers
        f"-A {INPUT} -m state --state RELATED,ESTABLISHED -j ACCEPT",
        f"-A {INPUT} -d 169.254.0.2/32 -p tcp -m tcp --dport 53 -j ACCEPT",
        f"-A {INPUT} -d 169.254.0.2/32 -p udp -m udp --dport 53 -j ACCEPT",
        f"-A {INPUT} -d 169.254.0.2/32 -p tcp -m tcp --dport 9001 -j ACCEPT",
        f"-A {INPUT} -d 169.254.0.3/32 -p udp -m udp --dport 9002 -j ACCEPT",
        f"-A {INPUT} {REJECT}"]
    assert silk.rules("filter", NETOUT) == [  # staging: the always and staging deny networks, not running
        f"-A {NETOUT} -m state --state RELATED,ESTABLISHED -j ACCEPT",
        f"-A {NETOUT} -p tcp -m state --state INVALID -j DROP",
        f"-A {NETOUT} -p tcp -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 100/sec "
        f"--hashlimit-burst 900 --hashlimit-mode dstip,dstport --hashlimit-name {H} --hashlimit-htable-expire 9000 "
        f"-j {RL_LOG}",
        f"-A {NETOUT} -d 198.18.5.1/32 {REJECT}",
        f"-A {NETOUT} -d 198.18.6.0/24 {REJECT}",
        f"-A {NETOUT} -p tcp -m iprange --dst-range 198.18.1.1-198.18.1.1 -m tcp --dport 443 -g {LOG}",
        f'-A {NETOUT} -m limit --limit 2/sec --limit-burst 2 -j LOG --log-prefix "DENY_{H[:23]} "',
        f"-A {NETOUT} {REJECT}"]
    assert silk.rules("filter", OVERLAY)[3] == (f"-A {OVERLAY} -d {ip}/32 -m limit --limit 2/sec --limit-burst 2 "
                                                f'-j LOG --log-prefix "DENY_C2C_{H[:19]} "')
    assert silk.rules("filter", RL_LOG) == [
        f'-A {RL_LOG} -m limit --limit 2/sec --limit-burst 2 -j LOG --log-prefix "DENY_ORL_{H[:19]} "',
        f"-A {RL_LOG} {REJECT}"]
    assert silk.rules("nat", NETIN) == [f"-A {NETIN} -d 198.18.0.1/32 -p tcp -m tcp --dport 61000 "
                                        f"-j DNAT --to-destination {ip}:8080"]
    assert silk.rules("mangle", NETIN) == [
        f"-A {NETIN} -d 198.18.0.1/32 -i {name} -p tcp -m tcp --dport 61000 -j MARK --set-xmark 0xffff0000/0xffffffff"
        for name in ("underlay0", "eth9")]


# -- order of events -----------------------------------------------------------------------------


def test_add_steps_happen_in_silks_order(silk: Silk) -> None:
    cni = silk.cni()
    seen: dict[str, tuple[Any, ...]] = {}

    def snapshot(step: str) -> None:
        seen[step] = (H in cni.store.entries(), tuple(silk.agent.paths()), tuple(silk.rules("filter", NETOUT)),
                      bool(silk.rules("filter", "FORWARD")), NETIN in silk.chains("nat"),
                      bool(silk.rules("nat", "POSTROUTING")))

    windows: list[Call] = []

    def per_call(call: Call) -> None:  # a moment when the hook exists and the parent is still empty
        if call.step == "chains" and silk.rules("filter", "FORWARD") and NETOUT in silk.chains("filter") \
                and not silk.rules("filter", NETOUT):
            windows.append(call)

    rules = [{"protocol": 0, "networks": [net("198.18.3.1")]}]
    cni.add(H, metadata=META, net_out_rules=rules, on_step=snapshot, on_call=per_call)
    poll, asgs = "/force-policy-poll-cycle", "/force-asgs-for-container"
    static = [f"-A {NETOUT} -m state --state RELATED,ESTABLISHED -j ACCEPT",
              f"-A {NETOUT} -p tcp -m state --state INVALID -j DROP",
              f"-A {NETOUT} -m iprange --dst-range 198.18.3.1-198.18.3.1 -j ACCEPT", f"-A {NETOUT} {REJECT}"]
    lone = (f"-A {NETOUT} {REJECT}",)
    # step: (store entry, agent calls, netout rules, FORWARD hooked, nat netin, MASQUERADE)
    assert seen == {
        "delegate": (False, (), (), False, False, False),
        "store": (True, (), (), False, False, False),
        "force-poll": (True, (poll,), (), False, False, False),
        "chains": (True, (poll,), lone, True, False, False),
        "netin": (True, (poll,), lone, True, True, False),
        "force-asgs": (True, (poll, asgs), lone, True, True, False),
        "static-rules": (True, (poll, asgs), tuple(static), True, True, False),
        "masquerade": (True, (poll, asgs), tuple(static), True, True, True),
    }
    assert list(seen) == list(ADD_STEPS)
    assert windows, "the FORWARD hook jumps to an empty netout chain until its rules are appended"


def _command(call: Call) -> str:
    """A single command without the tool and ``--wait``; a restore as its table and first line."""
    if call.payload:
        table, first = call.payload.splitlines()[:2]
        return f"{table} {first}"
    return " ".join(call.argv[1:-1])


def test_add_and_del_run_silks_iptables_commands_in_silks_order(silk: Silk) -> None:
    cni = silk.cni()
    ip = cni.add(H, metadata=META).ip
    fwd = f"*filter -A FORWARD -s {ip} -o underlay0 --jump {NETOUT}"
    assert [(c.step, _command(c)) for c in cni.calls] == [
        *(("chains", cmd) for cmd in (
            f"-t filter -N {INPUT}", f"*filter -A INPUT -s {ip} --jump {INPUT}", f"-t filter -N {NETOUT}", fwd,
            f"-t filter -N {OVERLAY}", f"*filter -A FORWARD --jump {OVERLAY}", f"-t filter -N {LOG}",
            f"*filter -A {INPUT} -m state --state RELATED,ESTABLISHED --jump ACCEPT",
            f"*filter -A {NETOUT} --jump REJECT --reject-with icmp-port-unreachable",
            f"*filter -A {OVERLAY} -s {ip} -o silk-vtep -m mark ! --mark 0x0 --jump ACCEPT",
            f"*filter -A {LOG} ! -p udp -m conntrack --ctstate INVALID,NEW,UNTRACKED -j LOG "
            f'--log-prefix "OK_{H[:25]} "')),
        ("netin", f"-t nat -N {NETIN}"), ("netin", f"*nat -A PREROUTING --jump {NETIN}"),
        ("netin", f"-t mangle -N {NETIN}"), ("netin", f"*mangle -A PREROUTING --jump {NETIN}"),
        ("static-rules", f"*filter -I {NETOUT} 1 -p tcp -m state --state INVALID -j DROP"),
        ("masquerade", f"*nat -A POSTROUTING --source {ip} ! -o silk-vtep ! --destination 10.255.0.0/16 "
                       "--jump MASQUERADE")]
    del cni.calls[:]
    cni.delete(H)
    assert [(c.step, _command(c)) for c in cni.calls] == [
        *(("netin", f"-t {t} {cmd}") for t in ("nat", "mangle")
          for cmd in (f"-D PREROUTING --jump {NETIN}", f"-N {NETIN}", f"-F {NETIN}", f"-X {NETIN}")),
        *(("chains", cmd) for cmd in (
            f"-t filter -D INPUT -s {ip} --jump {INPUT}", *(f"-t filter {op} {INPUT}" for op in ("-N", "-F", "-X")),
            f"-t filter -D FORWARD -s {ip} -o underlay0 --jump {NETOUT}",
            *(f"-t filter {op} {NETOUT}" for op in ("-N", "-F", "-X")),
            f"-t filter -D FORWARD --jump {OVERLAY}", *(f"-t filter {op} {OVERLAY}" for op in ("-N", "-F", "-X")),
            *(f"-t filter {op} {LOG}" for op in ("-N", "-F", "-X")))),
        ("masquerade", f"-t nat -D POSTROUTING --source {ip} ! -o silk-vtep ! --destination 10.255.0.0/16 "
                       "--jump MASQUERADE")]


def test_a_writer_pausing_the_add_between_steps_sees_static_rules_land_above_it(silk: Silk) -> None:
    """What issue 12 describes: an agent that writes before the 405 fallback ends up below the static rules."""
    asg = chains.asg_chain_name(H)

    def agent_writes(step: str) -> None:
        if step == "force-asgs":
            silk.cell.restore(4, [f":{asg} - [0:0]", f":{NETOUT} - [0:0]", f"-A {asg} {REJECT}",
                                  f"-A {NETOUT} -j {asg}", f"-A {NETOUT} {REJECT}"])

    rules = [{"protocol": 0, "networks": [net("198.18.3.1")]}]
    silk.cni().add(H, metadata=META, net_out_rules=rules, on_step=agent_writes)
    assert silk.rules("filter", NETOUT)[2:] == [f"-A {NETOUT} -m iprange --dst-range 198.18.3.1-198.18.3.1 -j ACCEPT",
                                                f"-A {NETOUT} -j {asg}", f"-A {NETOUT} {REJECT}"]


def test_every_iptables_command_waits_for_the_cell_lock(silk: Silk) -> None:
    cni = silk.cni()
    polled, steps = threading.Event(), []

    def on_step(step: str) -> None:
        steps.append(step)
        if step == "force-poll":
            polled.set()

    fd = os.open(silk.cell.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        adder = threading.Thread(target=cni.add, args=(H,), kwargs={"metadata": META, "on_step": on_step})
        adder.start()
        assert polled.wait(30)
        adder.join(0.5)
        assert adder.is_alive() and steps == ["delegate", "store", "force-poll"]
        assert not silk.chains("filter")
    finally:
        os.close(fd)
    adder.join(60)
    assert steps == list(ADD_STEPS)  # 405 with no Garden rules still inserts INVALID DROP and RELATED,ESTABLISHED
    assert NETOUT in silk.chains("filter")


def test_concurrent_adds_lose_no_store_entry(silk: Silk) -> None:
    cni = silk.cni()
    handles = [f"conc-{i}" for i in range(8)]
    errors: list[BaseException] = []

    def add(handle: str) -> None:
        try:
            cni.add(handle, metadata=META)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(cni.store.entries()) == sorted(handles)
    assert cni.store.version_path.read_text() == str(1 + len(handles))
    assert {f"netout--{h}" for h in handles} <= silk.chains("filter")


# -- DEL -----------------------------------------------------------------------------------------


def test_del_removes_silks_chains_and_entry_but_leaves_the_asg_chain(silk: Silk) -> None:
    cni = silk.cni(logging=True)
    result = cni.add(H, metadata=META, port_mappings=[{"host_port": 61000, "container_port": 8080}])
    asg = chains.asg_chain_name(H)  # what our agent writes: netout jumps to asg-<h>, whose log rule uses --log
    silk.cell.restore(4, [f":{asg} - [0:0]", f":{NETOUT} - [0:0]", f"-A {asg} -m iprange --dst-range "
                          "198.18.1.1-198.18.1.1 -g " + LOG, f"-A {asg} {REJECT}", f"-A {NETOUT} -j {asg}",
                          f"-A {NETOUT} {REJECT}"])
    steps: list[str] = []
    gone = cni.delete(H, on_step=steps.append)
    assert steps == list(DEL_STEPS)
    assert gone.ip == result.ip
    assert len(gone.errors) == 1 and f"-X {LOG} --wait" in gone.errors[0], gone.errors  # asg-<h> still uses it
    assert silk.chains("filter") == {asg, LOG}
    assert silk.rules("filter", asg)[0].endswith(f"-g {LOG}")
    for table, chain in (("filter", "INPUT"), ("filter", "FORWARD"), ("nat", "PREROUTING"), ("nat", "POSTROUTING"),
                         ("mangle", "PREROUTING")):
        assert silk.rules(table, chain) == []
    assert silk.chains("nat") == silk.chains("mangle") == set()
    assert cni.store.entries() == {}
    assert silk.agent.paths()[-1] == "/force-orphaned-asgs-cleanup"
    assert ns_run(silk.cell.containers[H].ns, ["ip", "link", "show", "eth0"], check=False).returncode != 0


def test_del_without_a_store_entry_cannot_unhook_as_in_silk(silk: Silk) -> None:
    cni = silk.cni()
    cni.add(H, metadata=META)
    cni.store.delete(H)  # the entry went missing: DEL knows no IP
    gone = cni.delete(H)
    assert gone.ip == "" and gone.errors
    assert silk.rules("filter", "FORWARD")[0].endswith(f"-j {NETOUT}")
    assert NETOUT in silk.chains("filter")
    assert cni.store.version_path.read_text() == "4"  # ADD, the manual delete, and DEL's store.Delete


# -- traffic -------------------------------------------------------------------------------------


def test_static_rules_allow_and_refuse_what_gardens_rules_say(silk: Silk) -> None:
    d = "198.18.1."
    silk.cell.add_destination("d1", [d + str(i) for i in range(1, 6)], tcp=[80, 443], udp=[53, 5353])
    cni = silk.cni(deny_networks=DenyNetworks(always=(d + "3/32",), running=(d + "5/32",)))
    cni.add("narrow", metadata=META, net_out_rules=[
        {"protocol": 1, "networks": [net(d + "1")], "ports": [{"start": 80, "end": 80}]},
        {"protocol": 2, "networks": [net(d + "1")], "ports": [{"start": 53, "end": 53}]},
        {"protocol": 3, "networks": [net(d + "2")], "icmps": {"type": 8, "code": 0}},
        {"protocol": 1, "networks": [net(d + "4")], "ports": [{"start": 443, "end": 443}], "log": True}])
    probe = silk.cell.probe
    assert [probe("narrow", "tcp", d + "1", 80), probe("narrow", "udp", d + "1", 53), probe("narrow", "icmp", d + "2"),
            probe("narrow", "tcp", d + "4", 443)] == ["ok"] * 4
    assert [probe("narrow", "tcp", d + "1", 443), probe("narrow", "udp", d + "1", 5353),
            probe("narrow", "icmp", d + "1"), probe("narrow", "tcp", d + "4", 80)] == ["refused"] * 4
    log_chain = dict(zip(silk.cell.rules(4, "netout--narrow--log"), silk.cell.packets(4, "netout--narrow--log"),
                         strict=True))
    accepted = [count for rule, count in log_chain.items() if rule.endswith("-j ACCEPT")]
    assert accepted and accepted[0] >= 1  # the logged rule accepts through the log chain
    everything = [{"protocol": 0, "networks": [net(d + "0", d + "7")]}]
    cni.add("app", metadata=META, net_out_rules=everything)
    cni.add("stg", metadata={**META, "container_workload": "staging"}, net_out_rules=everything)
    for handle in ("app", "stg"):
        assert probe(handle, "tcp", d + "4", 443) == "ok"
        assert probe(handle, "tcp", d + "3", 80) == "refused"  # deny_networks.always beats the accept
    assert probe("app", "tcp", d + "5", 80) == "refused"  # deny_networks.running: apps and tasks only
    assert probe("stg", "tcp", d + "5", 80) == "ok"


def test_with_asg_syncing_on_no_static_rules_are_inserted(tmp_path: Path) -> None:
    require_backend("legacy")
    with cell("legacy", tmp_path) as c, SilkAgent(enable_asg_syncing=True) as agent:
        c.add_destination("d1", ["198.18.1.1"], tcp=[80])
        silk = Silk(c, agent, tmp_path)
        result = silk.cni().add(H, metadata=META, net_out_rules=[{"protocol": 0, "networks": [net("198.18.1.1")]}])
        assert (result.asg_status, result.static_rules) == (200, [])
        assert silk.rules("filter", NETOUT) == [f"-A {NETOUT} {REJECT}"]
        assert c.probe(H, "tcp", "198.18.1.1", 80) == "refused"


# -- failures ------------------------------------------------------------------------------------


def test_a_failing_poll_cycle_fails_the_add_after_the_store_entry(tmp_path: Path) -> None:
    require_backend("legacy")

    def broken() -> None:
        raise RuntimeError("policy server unreachable")

    with cell("legacy", tmp_path) as c, SilkAgent(poll_cycle=broken) as agent:
        silk = Silk(c, agent, tmp_path)
        cni = silk.cni()
        with pytest.raises(CniFailure) as failure:
            cni.add(H, metadata=META)
        assert failure.value.step == "force-poll"
        assert str(failure.value) == ("vpa response code: 500 with message: failed to force policy poll cycle: "
                                      "policy server unreachable")
        assert H in cni.store.entries()
        assert silk.chains("filter") == set()


def test_bad_runtime_config_is_refused_before_anything_is_done(silk: Silk) -> None:
    cni = silk.cni()
    for rules, where in (([{"protocol": 256}], "netOutRules[0].protocol"),
                         ([{"protocol": "tcp"}], "netOutRules[0].protocol"),
                         ([{"ports": [{"start": 70000}]}], "netOutRules[0].ports[0].start"),
                         ([{"networks": [{"start": "10.0.0.01"}]}], "netOutRules[0].networks[0].start"),
                         ([{"icmps": {"type": 8, "code": -1}}], "netOutRules[0].icmps.code"),
                         ([{"log": "yes"}], "netOutRules[0].log"), ({"protocol": 1}, "runtimeConfig.netOutRules")):
        with pytest.raises(CniFailure, match=rf"^loading wrapper config: .*{re.escape(where)}"):
            cni.add(H, metadata=META, net_out_rules=rules)
    with pytest.raises(CniFailure, match="invalid Container ID"):
        cni.add("-j ACCEPT", metadata=META)
    assert silk.agent.calls == [] and not cni.calls and H not in silk.cell.containers
    assert not Path(cni.config.datastore).exists()
    with pytest.raises(CniFailure, match=r"^cannot allocate port 0$"):
        cni.add(H, metadata=META, port_mappings=[{"host_port": 0, "container_port": 8080}])


def test_config_is_checked_as_load_wrapper_config_does(tmp_path: Path) -> None:
    base: dict[str, Any] = {"datastore": str(tmp_path / "s.json"), "iptables_lock_file": str(tmp_path / "l"),
            "policy_agent_force_poll_address": "127.0.0.1:1"}
    for bad, message in (({"iptables_denied_logs_per_sec": 0}, "invalid denied logs per sec"),
                         ({"outbound_connections": OutConn(burst=0)}, "invalid outbound connection burst"),
                         ({"underlay_interfaces": ()}, "missing underlay ips"),
                         ({"policy_agent_force_poll_address": ""}, "PolicyAgentForcePollAddress")):
        with pytest.raises(ValueError, match=message):
            SilkCniConfig(**{**base, **bad})
    cfg = SilkCniConfig(**base).with_iptables_logging(True)
    assert (cfg.iptables_asg_logging, cfg.iptables_c2c_logging, cfg.outbound_connections.logging) == (True,) * 3


def test_garden_rules_decode_as_go_decodes_them() -> None:
    rule = parse_net_out_rules([{"protocol": 9, "networks": [{"start": "::ffff:198.18.0.1"}],
                                 "icmps": {"type": 3}, "unknown": 1}])[0]
    assert (rule.protocol, rule.networks, rule.icmp, rule.log) == (9, (("198.18.0.1", "<nil>"),), None, False)
    assert parse_net_out_rules(None) == []


# -- the silk agent stand-in ---------------------------------------------------------------------


def _get(agent: SilkAgent, path: str, method: str = "GET") -> tuple[int, str]:
    host, _, port = agent.address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_silk_agent_answers_as_silks_handlers_do() -> None:
    with SilkAgent() as agent:
        assert _get(agent, "/force-policy-poll-cycle") == (200, "")
        assert _get(agent, "/force-policy-poll-cycle", "POST") == (200, "")
        assert _get(agent, "/force-asgs-for-container?container=h1") == (405, DISABLED)
        assert _get(agent, "/force-orphaned-asgs-cleanup") == (405, DISABLED)
        assert _get(agent, "/force-policy-poll-cycle/x") == (404, "404 page not found\n")
        assert [(c.method, c.container, c.status) for c in agent.calls] == [
            ("GET", None, 200), ("POST", None, 200), ("GET", "h1", 405), ("GET", None, 405), ("GET", None, 404)]
    with SilkAgent(enable_asg_syncing=True) as agent:
        assert _get(agent, "/force-asgs-for-container?container=") == (400, "no container specified")
        assert _get(agent, "/force-asgs-for-container?container=h1") == (200, "updated container h1")
        assert _get(agent, "/force-orphaned-asgs-cleanup?container=h1") == (200, "cleaned up ASGs for container h1")


# -- the store -----------------------------------------------------------------------------------


def test_go_json_encodes_as_encoding_json_does() -> None:
    assert go_json({"b": 1, "a": [True, None, "x"]}) == '{"a":[true,null,"x"],"b":1}'
    assert go_json("<a&b>\u2028é\n\x01\"") == '"\\u003ca\\u0026b\\u003e\\u2028é\\n\\u0001\\""'
    assert [go_json(v) for v in (8080, 8080.0, 1.5, -0.0, 1e20, 1e21, 0.000001, 1e-7, 123456789.125, 2 ** 60)] == [
        "8080", "8080", "1.5", "-0", "100000000000000000000", "1e+21", "0.000001", "1e-7", "123456789.125",
        "1152921504606847000"]  # shortest digits, then zeros
    with pytest.raises(StoreFailure):
        go_json(float("nan"))


def test_store_is_written_as_silk_writes_it_and_our_agent_reads_it(tmp_path: Path) -> None:
    store = SilkStore(tmp_path / "meta" / "store.json")
    store.add("h2", "10.255.0.3", {"space_id": "s", "policy_group_id": "a&b", "container_workload": "app",
                                   "ports": "8080"})
    store.add("h1", "10.255.0.2", None)
    assert store.delete("nope") == {"handle": "", "ip": "", "metadata": None}
    assert store.path.read_bytes() == (
        b'{"h1":{"handle":"h1","ip":"10.255.0.2","metadata":null},'
        b'"h2":{"handle":"h2","ip":"10.255.0.3","metadata":{"container_workload":"app",'
        b'"policy_group_id":"a\\u0026b","ports":"8080","space_id":"s"}}}\n')
    assert store.version_path.read_bytes() == b"4"
    assert {p.name: p.stat().st_mode & 0o777 for p in store.path.parent.iterdir()} == {
        "store.json": 0o600, "store.json_version": 0o600, "store.json_lock": 0o600}
    raw, _ = MetadataStore(store.path).read_all()
    assert raw["h2"]["metadata"]["policy_group_id"] == "a&b"
    store.path.write_text('{"h3":{"handle":"h3","ip":"10.255.0.4","ipv6":"fd00::4","metadata":{}}} trailing')
    store.delete("h1")
    assert store.path.read_text() == '{"h3":{"handle":"h3","ip":"10.255.0.4","metadata":{}}}\n'  # Go drops ipv6
    store.version_path.write_text("7\n")
    with pytest.raises(StoreFailure, match="is not a number"):
        store.add("h4", "10.255.0.5", {})
    with pytest.raises(StoreFailure, match="invalid ip"):
        store.add("h4", "10.255.0", {})


def test_store_writes_wait_for_the_store_lock(tmp_path: Path) -> None:
    store = SilkStore(tmp_path / "store.json")
    store.lock_path.touch()
    fd = os.open(store.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = threading.Thread(target=store.add, args=("h1", "10.255.0.2", {}))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not store.path.exists()
    finally:
        os.close(fd)
    writer.join(30)
    assert list(store.entries()) == ["h1"]
