"""Cloud Controller faults: the DB keeps its last good data, the syncer keeps running and recovers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.store import PolicyStore
from support.daemons import (
    CCStub,
    Daemon,
    database_config,
    example_groups,
    free_port,
    start_cc_stub,
    start_syncer,
    wait_for,
)

FAULTS: dict[str, dict[str, Any]] = {
    "cc-5xx": {"fail_next": -1, "error_status": 503},
    "cc-timeouts": {"latency_ms": 2500},
    "connection-resets": {"reset_next": -1},
    "change-during-paging": {"change_during_paging": -1},
    "malformed-json": {"malformed_next": -1, "paths": ["/v3/"]},
}


def snapshot_rows(store: PolicyStore) -> tuple[int, list[tuple[int, str, str]]]:
    snap = store.snapshot()
    return snap.version, [(g.id, g.row.guid, g.content_hash) for g in snap.groups]


def metric(port: int, name: str) -> float | None:
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_cloud_controller_never_reaches_the_db(sqlite_db: DatabaseSettings, tmp_path: Path,
                                                        fault: str) -> None:
    stub = start_cc_stub(tmp_path, example_groups(9))
    processes: list[Daemon] = [stub.daemon]
    engine = create_engine(sqlite_db)
    metrics_port = free_port()
    try:
        syncer = start_syncer(tmp_path, stub, database_config(sqlite_db), asg_poll_interval_seconds=1,
                              retry_deadline_seconds=2, cc_page_size=2, request_timeout_seconds=1,
                              connect_timeout_seconds=1, metrics_port=metrics_port)
        processes.append(syncer)
        store = PolicyStore(engine)
        wait_for(lambda: syncer.events("sync-complete"), timeout=30, what="the first sync")
        good = snapshot_rows(store)

        stub.faults(**FAULTS[fault])
        stub.write_groups(example_groups(4))  # what a successful sync would now write
        wait_for(lambda: syncer.events("sync-failed"), timeout=60, what="the failure to be reported")
        assert metric(metrics_port, "security_groups_sync_failing") == 1.0
        assert syncer.events("sync-failed")[0]["level"] == "error"
        assert snapshot_rows(store) == good  # nothing partial, nothing at all
        assert syncer.running()

        stub.reset()
        wait_for(lambda: len(store.snapshot().groups) == 4, timeout=30, what="recovery")
        assert store.state().version == good[0] + 1
        wait_for(lambda: metric(metrics_port, "security_groups_sync_failing") == 0.0, what="the gauge to clear")
        assert syncer.running()
    finally:
        for process in reversed(processes):
            process.stop()
        engine.dispose()


def test_uaa_refusing_the_client_is_reported_and_retried(sqlite_db: DatabaseSettings, tmp_path: Path) -> None:
    stub: CCStub = start_cc_stub(tmp_path, example_groups(3))
    processes: list[Daemon] = [stub.daemon]
    try:
        syncer = start_syncer(tmp_path, stub, database_config(sqlite_db), asg_poll_interval_seconds=1,
                              retry_deadline_seconds=1, uaa_client_secret="wrong")
        processes.append(syncer)
        failed = wait_for(lambda: syncer.events("sync-failed"), timeout=30, what="the failure to be reported")
        assert "uaa: POST /oauth/token: HTTP 401" in failed[0]["data"]["error"]
        assert "wrong" not in syncer.log_path.read_text()  # the secret is never logged
        assert syncer.running()
    finally:
        for process in reversed(processes):
            process.stop()
