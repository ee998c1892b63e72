"""The active-syncer lease on every backend: one holder, takeover after expiry, fencing."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.engine import Engine

from dynamic_asgs.errors import LeaseLost
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from dynamic_asgs.syncer.lease import Lease

ROW = GroupRow("g", "g", "[]", False, False, (), ())


def test_one_holder_at_a_time_and_renewal(engine: Engine) -> None:
    a, b = Lease(engine, holder="a", ttl=30), Lease(engine, holder="b", ttl=30)
    assert a.acquire() is True
    assert b.acquire() is False
    assert a.acquire() is True  # renewal
    status = b.status()
    assert status is not None and status.holder == "a" and status.remaining > 0


def test_takeover_only_after_expiry_and_the_old_holder_is_fenced(engine: Engine) -> None:
    a, b = Lease(engine, holder="a", ttl=0.5), Lease(engine, holder="b", ttl=30)
    store = PolicyStore(engine)
    assert a.acquire()
    store.replace([ROW], cc_last_update="t1", fence=a.fence)
    assert b.acquire() is False
    time.sleep(0.7)  # let a's lease run out (DB clock)
    assert b.acquire() is True
    with pytest.raises(LeaseLost, match="held by b, not a"):
        store.replace([], cc_last_update="t2", fence=a.fence)
    assert [g.row.guid for g in store.snapshot().groups] == ["g"]  # a wrote nothing
    assert a.acquire() is False


def test_release_hands_over_at_once(engine: Engine) -> None:
    a, b = Lease(engine, holder="a", ttl=60), Lease(engine, holder="b", ttl=60)
    assert a.acquire()
    a.release()
    assert b.acquire() is True
    with pytest.raises(LeaseLost):
        PolicyStore(engine).replace([ROW], cc_last_update=None, fence=a.fence)


def test_contenders_for_an_expired_lease_get_exactly_one_winner(engine: Engine) -> None:
    contenders = [Lease(engine, holder=f"c{i}", ttl=30) for i in range(4)]
    barrier = threading.Barrier(len(contenders))
    results: dict[str, bool] = {}

    def contend(lease: Lease) -> None:
        barrier.wait()
        results[lease.holder] = lease.acquire()

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, False, False, True]
