"""The fake iptables behaves like the real one where the dataplane relies on it."""

from __future__ import annotations

import pytest

from dynamic_asgs.errors import LockTimeout, RestoreError
from dynamic_asgs.iptables.fake import FakeRunner, FakeTable, Fault


def restore(fake: FakeRunner, *lines: str) -> None:
    fake.restore(["*filter", *lines, "COMMIT"])


def test_declarations_create_or_flush_and_jumps_need_targets() -> None:
    fake = FakeRunner()
    restore(fake, ":asg-a - [0:0]", ":netout--a - [0:0]", "-A asg-a --jump ACCEPT", "-A netout--a -j asg-a")
    restore(fake, ":asg-a - [0:0]", "-A asg-a -m comment --comment dasg:0123456789abcdef --jump DROP")
    assert fake.table.rules("asg-a") == ['-A asg-a -m comment --comment "dasg:0123456789abcdef" -j DROP']
    assert fake.table.referrers("asg-a") == {"netout--a"}
    with pytest.raises(RestoreError) as err:
        restore(fake, ":asg-b - [0:0]", "-A asg-b -j nowhere")
    assert err.value.line == 3 and "nowhere" in str(err.value) and ">     3: -A asg-b -j nowhere" in err.value.context
    assert not fake.table.exists("asg-b")  # atomic


def test_flush_delete_insert_rename_follow_iptables_rules() -> None:
    fake = FakeRunner()
    restore(fake, ":asg-a - [0:0]", ":netout--a - [0:0]", "-A netout--a -j asg-a", "-A asg-a -j ACCEPT")
    for bad, why in [("-F missing", "does not exist"), ("-X asg-a", "not empty"), ("-X INPUT", "not permitted"),
                     ("-N asg-a", "already exists"), ("-D asg-a -j DROP", "Bad rule"), ("-Z asg-a", "unsupported")]:
        with pytest.raises(RestoreError, match=why):
            restore(fake, bad)
    with pytest.raises(RestoreError, match="Too many links"):
        restore(fake, "-F asg-a", "-X asg-a")
    restore(fake, "-N casg-a", "-I netout--a 1 -j casg-a", "-D netout--a -j asg-a", "-F asg-a", "-X asg-a",
            "-E casg-a asg-a")
    assert fake.table.rules("netout--a") == ["-A netout--a -j asg-a"]
    assert fake.table.user_chains() == ["asg-a", "netout--a"] and fake.commits == 2


def test_save_round_trips_through_the_real_parser() -> None:
    table = FakeTable()
    table.create_chain("netout--a", ["-j REJECT --reject-with icmp-port-unreachable"])
    table.create_chain("FORWARD", ["-s 10.0.0.2 -j netout--a"])
    saved = FakeRunner(table=table).save()
    assert saved.info["netout--a"].rules == 1 and saved.referrers == {"netout--a": {"FORWARD"}}
    table.delete_chain("netout--a")
    assert table.rules("FORWARD") == [] and not table.exists("netout--a")


def test_faults() -> None:
    fake = FakeRunner()
    fake.inject(Fault(pattern="asg-b", message="boom"))
    with pytest.raises(RestoreError) as err:
        restore(fake, ":asg-a - [0:0]", ":asg-b - [0:0]")
    assert err.value.line == 3 and "boom" in str(err.value)
    restore(fake, ":asg-b - [0:0]")  # times=1: consumed
    fake.inject(Fault(at_commit=True, times=None, pattern="asg-c"))
    for _ in range(2):
        with pytest.raises(RestoreError) as err:
            restore(fake, ":asg-c - [0:0]", "-A asg-c -j ACCEPT")
        assert err.value.line == 4
    fake.faults.clear()
    fake.inject(Fault(unnumbered=True))
    with pytest.raises(RestoreError) as err:
        restore(fake, ":asg-d - [0:0]")
    assert err.value.line is None
    fake.inject(Fault(lock_timeout=True))
    with pytest.raises(LockTimeout):
        restore(fake, ":asg-d - [0:0]")
    assert fake.table.user_chains() == ["asg-b"] and fake.restores == 6 and fake.commits == 1
