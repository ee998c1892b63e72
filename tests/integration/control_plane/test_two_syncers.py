"""Two syncers on one DB: one writes; after it is killed, the other takes over within the lease TTL."""

from __future__ import annotations

import time
from pathlib import Path

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.syncer.lease import Lease
from support.daemons import (
    Daemon,
    database_config,
    example_groups,
    start_cc_stub,
    start_syncer,
    wait_for,
)

TTL = 3


def test_standby_takes_over_after_the_active_syncer_dies(db: DatabaseSettings, tmp_path: Path) -> None:
    stub = start_cc_stub(tmp_path, example_groups(3))
    processes: list[Daemon] = [stub.daemon]
    engine = create_engine(db)
    try:
        config = database_config(db)
        first = start_syncer(tmp_path, stub, config, name="syncer-1", asg_poll_interval_seconds=1,
                             lease_ttl_seconds=TTL)
        processes.append(first)
        wait_for(lambda: first.events("sync-complete"), timeout=30, what="the first syncer's sync")
        second = start_syncer(tmp_path, stub, config, name="syncer-2", asg_poll_interval_seconds=1,
                              lease_ttl_seconds=TTL)
        processes.append(second)
        store = PolicyStore(engine)

        stub.write_groups(example_groups(5))
        wait_for(lambda: len(store.snapshot().groups) == 5, timeout=30, what="the edit to be synced")
        assert len(first.events("sync-complete")) == 2
        assert second.events("sync-complete") == [] and second.events("lease-acquired") == []
        status = Lease(engine, holder="observer", ttl=TTL).status()
        assert status is not None and status.holder == "syncer-1"

        first.kill_group()  # SIGKILL: no release, the lease must expire
        killed = time.monotonic()
        stub.write_groups(example_groups(6))
        wait_for(lambda: second.events("lease-acquired"), timeout=TTL + TTL / 3 + 5, what="the takeover")
        wait_for(lambda: len(store.snapshot().groups) == 6, timeout=30, what="the standby's sync")
        assert time.monotonic() - killed > 0  # ordering only; the bound is wait_for's timeout above
        assert second.running()
    finally:
        for process in reversed(processes):
            process.stop()
        engine.dispose()
