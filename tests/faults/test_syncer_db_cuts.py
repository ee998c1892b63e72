"""The policy DB cut mid-sync, and Cloud Controller data that fails validation: old or new, never a mix.

The real syncer talks to PostgreSQL / MariaDB through a TCP proxy the test controls
(the shared DB servers are never restarted). For each cut point the proxy resets every
connection the moment the syncer sends it, as a DB restart or a network cut would:

* its first ``INSERT`` / ``UPDATE`` / ``DELETE`` of ``security_groups`` (mid-transaction);
* the ``COMMIT`` of that transaction, before it reaches the server;
* the ``COMMIT`` after it reached the server (the answer is lost: the syncer cannot know).

Then Cloud Controller serves rules that fail validation (stored as given: cells drop
them) and a relationship without a guid (that group is dropped alone, the others are
stored; issue 13). A reader polls the DB directly the whole time: every snapshot must be exactly one
of the datasets the test produced, and after each fault the syncer converges on the new one.
CC's other faults (5xx, timeouts, resets, paging changes, malformed JSON) are covered by
tests/integration/control_plane/test_faults.py; failover after SIGKILL by test_two_syncers.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.store import PolicyStore
from support.daemons import Daemon, database, database_config, start_cc_stub, start_syncer, wait_for
from support.faults import TcpProxy, record

CUTS: dict[str, dict[str, Any]] = {
    "mid-transaction-update": {"pattern": rb"UPDATE security_groups"},
    "mid-transaction-insert": {"pattern": rb"INSERT INTO security_groups"},
    "commit-lost-before-server": {"pattern": rb"COMMIT", "after": rb"security_groups"},
    "commit-answer-lost": {"pattern": rb"COMMIT", "after": rb"security_groups", "forward_first": True},
}


def dataset(k: int) -> list[dict[str, Any]]:
    """Groups g{k}..g{k+7}: each step updates 7 rows, inserts one and deletes one."""
    return [{"guid": f"g{i}", "name": f"asg-{i}", "running_spaces": [f"space-{i % 3}"],
             "rules": [{"protocol": "tcp", "destination": f"10.{k}.{i}.0/24", "ports": str(1000 + k)}]}
            for i in range(k, k + 8)]


def key(groups: list[dict[str, Any]]) -> frozenset[tuple[str, str, str]]:
    return frozenset((g["guid"], g["name"], json.dumps(g["rules"], sort_keys=True)) for g in groups)


def _is(store: PolicyStore, wanted: frozenset[tuple[str, str, str]]) -> bool:
    return stored(store) == wanted


def stored(store: PolicyStore) -> frozenset[tuple[str, str, str]]:
    return frozenset((g.row.guid, g.row.name, json.dumps(json.loads(g.row.rules), sort_keys=True))
                     for g in store.snapshot().groups)


@pytest.fixture(params=["postgres", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSettings]:
    with database(request.param, tmp_path) as settings:
        yield settings


class Reader:
    """Reads the DB directly every 20 ms; every snapshot must be one of ``allowed``."""

    def __init__(self, store: PolicyStore, allowed: set[frozenset[tuple[str, str, str]]]) -> None:
        self.store, self.allowed = store, allowed
        self.reads = 0
        self.mixed: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.02):
            seen = stored(self.store)
            self.reads += 1
            if seen not in self.allowed:
                self.mixed.append(f"a dataset that was never written: {sorted(seen)[:3]}...")

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)


def test_a_db_cut_mid_sync_leaves_the_old_or_the_new_dataset(db: DatabaseSettings, tmp_path: Path) -> None:
    proxy = TcpProxy((db.host, db.port))
    via_proxy = {**database_config(db), "port": proxy.port}
    engine = create_engine(db)
    store = PolicyStore(engine)
    stub = start_cc_stub(tmp_path, dataset(0))
    processes: list[Daemon] = [stub.daemon]
    allowed = {key(dataset(k)) for k in range(len(CUTS) + 2)}
    invalid = dataset(len(CUTS) + 1)
    invalid[0]["rules"] = [{"protocol": "tcp", "destination": "10.0.0.256", "ports": "80"},
                           {"protocol": "tcpx", "destination": "10.0.0.1"}, {"protocol": "icmp"}]
    allowed.add(key(invalid))
    broken = dataset(len(CUTS) + 1)
    broken[1] = {"guid": "g-broken", "name": "broken", "rules": [],
                 "relationships": {"running_spaces": {"data": [{"guid": "space-1"}, {"guid": ""}]}}}
    without_broken = [g for g in broken if g["guid"] != "g-broken"]
    allowed.add(key(without_broken))
    recoveries: list[float] = []
    try:
        syncer = start_syncer(tmp_path, stub, via_proxy, asg_poll_interval_seconds=1, retry_deadline_seconds=2,
                              lease_ttl_seconds=3)
        processes.append(syncer)
        wait_for(lambda: stored(store) == key(dataset(0)), timeout=60, what="the first sync")
        with Reader(store, allowed) as reader:
            for k, (name, cut) in enumerate(CUTS.items(), start=1):
                proxy.cut_on(**cut)
                stub.write_groups(dataset(k))
                wait_for(lambda: not proxy.armed, timeout=30, what=f"the cut at {name}")
                started = time.monotonic()
                wait_for(partial(_is, store, key(dataset(k))), timeout=60, what=f"recovery from {name}")
                recoveries.append(time.monotonic() - started)
            # Rules that fail validation: stored as Cloud Controller gave them (the cells drop them).
            stub.write_groups(invalid)
            wait_for(lambda: stored(store) == key(invalid), timeout=30, what="the dataset with invalid rules")
            assert syncer.events("invalid-rules")
            # A relationship without a guid: that group is dropped alone, the others are stored.
            stub.write_groups(broken)
            wait_for(lambda: stored(store) == key(without_broken), timeout=30, what="the others to be stored")
            assert "has no guid" in json.dumps(syncer.events("security-groups-dropped")[-1])
        assert syncer.running()
    finally:
        for process in reversed(processes):
            process.stop()
        cuts = proxy.cuts
        proxy.close()
        engine.dispose()
    record(f"policy-db-cut-{db.type}", injected=cuts, bad_inputs=2, violations=len(reader.mixed),
           recoveries=recoveries, reads=reader.reads)
    assert not reader.mixed, reader.mixed[:3]
    assert cuts == len(CUTS)
    assert reader.reads > 20
