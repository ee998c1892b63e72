"""CC stand-in -> syncer -> policy DB -> policy server -> a mutual-TLS client, on every DB backend."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dynamic_asgs.agent.policy_client import PolicyClient
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.store import PolicyStore
from support.daemons import (
    PolicyServer,
    database_config,
    start_cc_stub,
    start_policy_server,
    start_syncer,
    wait_for,
)

SPACE_A, SPACE_B, SPACE_C = "space-aaaa", "space-bbbb", "space-cccc"
GROUPS: list[dict[str, Any]] = [
    {"name": "dns", "guid": "g-dns", "globally_enabled": {"running": True, "staging": True},
     "rules": [{"protocol": "udp", "destination": "8.8.8.8", "ports": "53"}]},
    {"name": "build-proxy", "guid": "g-proxy", "globally_enabled": {"running": False, "staging": True},
     "rules": [{"protocol": "tcp", "destination": "10.9.0.1", "ports": "3128"}]},
    {"name": "payments-db", "guid": "g-db", "running_spaces": [SPACE_A, SPACE_B],
     "rules": [{"protocol": "tcp", "destination": "10.1.0.0/24", "ports": "5432"}]},
    {"name": "mirrors", "guid": "g-mirrors", "staging_spaces": [SPACE_A],
     "rules": [{"protocol": "tcp", "destination": "10.2.0.5-10.2.0.9", "ports": "443"}]},
]


def client(server: PolicyServer) -> PolicyClient:
    cert, key = server.client_cert()
    return PolicyClient(server.url, ca_file=str(server.pki.ca.cert_path), cert_file=cert, key_file=key)


def applicable(groups: list[Any], space: str, lifecycle: str) -> list[str]:
    """What an agent enforces for a container of ``space`` in ``lifecycle`` (DESIGN.md §3.4)."""
    if lifecycle == "running":
        return [g.name for g in groups if g.running_default or space in g.running_spaces]
    return [g.name for g in groups if g.staging_default or space in g.staging_spaces]


def test_groups_flow_from_cloud_controller_to_cells(db: DatabaseSettings, tmp_path: Path) -> None:
    stub = start_cc_stub(tmp_path, GROUPS)
    processes = [stub.daemon]
    engine = create_engine(db)
    try:
        syncer = start_syncer(tmp_path, stub, database_config(db), asg_poll_interval_seconds=1, log_level="debug")
        processes.append(syncer)
        wait_for(lambda: syncer.events("sync-complete"), timeout=30, what="the first sync")
        server = start_policy_server(tmp_path, database_config(db), dataset_check_interval_ms=100)
        processes.append(server.daemon)
        agent = client(server)
        store = PolicyStore(engine)

        result = agent.fetch([SPACE_A])
        assert result.dataset_version == store.version() == 1
        assert applicable(result.groups, SPACE_A, "running") == ["dns", "payments-db"]
        assert applicable(result.groups, SPACE_A, "staging") == ["dns", "build-proxy", "mirrors"]
        b = agent.fetch([SPACE_B]).groups
        assert applicable(b, SPACE_B, "running") == ["dns", "payments-db"]
        assert applicable(b, SPACE_B, "staging") == ["dns", "build-proxy"]
        assert [g.name for g in agent.fetch([SPACE_C]).groups] == ["dns", "build-proxy"]
        assert agent.fetch([SPACE_A], etag=result.etag).not_modified

        # An unchanged poll: one request to CC (the internal endpoint), no token, no listing, no write.
        state = store.state()
        stub.reset()
        polls = len(syncer.events("poll-unchanged"))
        wait_for(lambda: len(syncer.events("poll-unchanged")) >= polls + 3, what="three unchanged polls")
        stats, done = stub.stats()["requests"], len(syncer.events("poll-unchanged")) - polls
        assert stats.get("/v3/security_groups", 0) == 0 and stats.get("/oauth/token", 0) == 0
        assert abs(stats["/internal/v4/asg_latest_update"] - done) <= 1
        assert store.state() == state

        # A file edit reaches the cells with the very next poll.
        edited = copy.deepcopy(GROUPS)
        edited[2]["rules"].append({"protocol": "tcp", "destination": "10.1.1.0/24", "ports": "6432"})
        edited[2]["running_spaces"] = [SPACE_B]
        before = stub.stats()["last_update"]
        stub.write_groups(edited)
        wait_for(lambda: stub.stats()["last_update"] != before, what="the stand-in to reload")
        seen = len(syncer.events("sync-complete")) + len(syncer.events("poll-unchanged"))
        wait_for(lambda: len(syncer.events("sync-complete")) + len(syncer.events("poll-unchanged")) > seen,
                 what="the next poll")
        latest = (syncer.events("sync-complete") + syncer.events("poll-unchanged"))
        next_poll = sorted(latest, key=lambda e: e["timestamp"])[seen]
        assert next_poll["message"].endswith("sync-complete") and next_poll["data"]["updated"] == 1

        changed = agent.fetch([SPACE_A], etag=result.etag, wait=10)
        assert not changed.not_modified and changed.dataset_version == 2
        assert applicable(changed.groups, SPACE_A, "running") == ["dns"]
        db_group = next(g for g in agent.fetch([SPACE_B]).groups if g.name == "payments-db")
        assert len(db_group.rules) == 2
        assert syncer.running() and server.daemon.running()
    finally:
        for process in reversed(processes):
            process.stop()
        engine.dispose()
