"""The runner against real iptables (legacy and nft): reads, refusals with context, the lock."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.errors import IptablesError, LockTimeout, RestoreError
from dynamic_asgs.filelock import locked
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.netns import netns


@pytest.fixture(params=IPTABLES_BACKENDS)
def ns(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    require_backend(request.param)
    with netns("run") as name:
        yield name, request.param


def runner(ns: tuple[str, str], tmp_path: Path, version: int = 4, **kw: float) -> IptablesRunner:
    restore, save = commands_for(version, ns[1])
    return IptablesRunner(version=version, restore_cmd=restore, save_cmd=save, lock_file=tmp_path / "lock",
                          prefix=("ip", "netns", "exec", ns[0]), **kw)


@pytest.mark.parametrize("version", [4, 6])
def test_restore_then_save_reads_back_names_hashes_and_references(ns: tuple[str, str], tmp_path: Path,
                                                                  version: int) -> None:
    r = runner(ns, tmp_path, version)
    stats = r.restore(["*filter", ":netout--h - [0:0]", ":asg-h - [0:0]",
                       "-A asg-h -m comment --comment dasg:0123456789abcdef -j ACCEPT",
                       "-A netout--h -m comment --comment dasg:0123456789abcdef -j asg-h",
                       "-A netout--h -j DROP", "-A FORWARD -j netout--h", "COMMIT"])
    assert stats.lines == 8
    table = r.save()
    assert {"INPUT", "FORWARD", "OUTPUT", "netout--h", "asg-h"} <= table.chains
    assert table.info["asg-h"].digest == table.info["netout--h"].digest == "0123456789abcdef"
    assert table.info["netout--h"].rules == 2 and table.info["netout--h"].targets == ("asg-h",)
    assert table.referrers == {"asg-h": {"netout--h"}, "netout--h": {"FORWARD"}}


def test_a_refused_payload_names_the_line_and_shows_its_neighbours(ns: tuple[str, str], tmp_path: Path) -> None:
    r = runner(ns, tmp_path)
    payload = ["*filter", ":asg-h - [0:0]", "-A asg-h -j ACCEPT", "-A asg-h -m nosuchmatch -j ACCEPT",
               "-A asg-h -j DROP", "COMMIT"]
    with pytest.raises(RestoreError) as err:
        r.restore(payload)
    assert err.value.line == 4 and "nosuchmatch" in str(err.value) and "at line 4" in str(err.value)
    assert ">     4: -A asg-h -m nosuchmatch -j ACCEPT" in err.value.context
    assert "      3: -A asg-h -j ACCEPT" in err.value.context
    assert "asg-h" not in r.save().chains  # atomic: nothing of it applied


def test_flushing_a_missing_parent_is_refused_not_created(ns: tuple[str, str], tmp_path: Path) -> None:
    r = runner(ns, tmp_path)
    with pytest.raises(RestoreError) as err:
        r.restore(["*filter", "-F netout--missing", "COMMIT"])
    assert err.value.line == 2
    assert "netout--missing" not in r.save().chains


def test_a_held_lock_times_out(ns: tuple[str, str], tmp_path: Path) -> None:
    r = runner(ns, tmp_path, lock_timeout=0.3)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locked(tmp_path / "lock", timeout=5):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(5)
        with pytest.raises(LockTimeout):
            r.restore(["*filter", ":asg-h - [0:0]", "COMMIT"])
        with pytest.raises(LockTimeout):
            r.save()
    finally:
        release.set()
        holder.join()
    r.restore(["*filter", ":asg-h - [0:0]", "COMMIT"])
    assert "asg-h" in r.save().chains


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    r = IptablesRunner(version=4, restore_cmd="/nonexistent/iptables-restore", save_cmd="/nonexistent/iptables-save",
                       lock_file=tmp_path / "lock")
    with pytest.raises(IptablesError, match="/nonexistent/iptables-restore: cannot run"):
        r.restore(["*filter", "COMMIT"])
    with pytest.raises(IptablesError, match="/nonexistent/iptables-save: cannot run"):
        r.save()


@pytest.mark.parametrize("count", [2, 6])  # one by one (``-S``), and through one save
def test_read_chains_reads_just_those_chains(ns: tuple[str, str], tmp_path: Path, count: int) -> None:
    r = runner(ns, tmp_path)
    names = [f"netout--c{i}" for i in range(count)]
    r.restore(["*filter", *[f":{n} - [0:0]" for n in names[1:]],
               *[f"-A {n} -m state --state RELATED,ESTABLISHED -j ACCEPT" for n in names[1:]],
               *[f"-A {n} -j REJECT --reject-with icmp-port-unreachable" for n in names[1:]], "COMMIT"])
    part = r.read_chains(names)
    assert part.chains == set(names[1:])  # the first does not exist
    assert all(part.info[n].rules == 2 and part.info[n].established for n in names[1:])


def test_final_reject_counters_count_what_each_asg_chain_refused(ns: tuple[str, str], tmp_path: Path) -> None:
    r = runner(ns, tmp_path)
    subprocess.run(["ip", "netns", "exec", ns[0], "ip", "link", "set", "lo", "up"], check=True)
    r.restore(["*filter", ":asg-a - [0:0]", ":asg-b - [0:0]", ":netout--a - [0:0]",
               "-A asg-a -p udp --dport 7 -j ACCEPT", "-A asg-a -j REJECT --reject-with icmp-port-unreachable",
               "-A asg-b -j ACCEPT", "-A netout--a -j REJECT",
               "-A OUTPUT -o lo -p udp --dport 7:9 -j asg-a", "COMMIT"])
    send = ("import contextlib, socket\n"
            "for port in (9, 9, 9, 7, 8):\n"
            "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):\n"
            "        s.sendto(b'x', ('127.0.0.1', port))")  # a refused send fails at once (EPERM): keep sending
    subprocess.run(["ip", "netns", "exec", ns[0], sys.executable, "-c", send], check=True, timeout=30)
    assert r.final_reject_packets("asg-") == {"asg-a": 4}  # 9, 9, 9 and 8 refused; 7 accepted; asg-b ends in ACCEPT
    assert r.final_reject_packets("netout--") == {"netout--a": 0}
