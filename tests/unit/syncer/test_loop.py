"""The daemon's loops: retry within the deadline, then report and keep trying; lease keeping."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from dynamic_asgs.errors import DatabaseError, LeaseLost, Refusal, RefusedAnswer, UnstableListing
from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.syncer.daemon import LeaseKeeper, SyncLoop
from dynamic_asgs.syncer.lease import Lease
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.sync import PollResult
from support.daemons import wait_for


class ScriptedSyncer:
    """A syncer whose polls fail with the scripted errors, then succeed."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.polls = 0

    def poll(self) -> PollResult:
        self.polls += 1
        if self.errors:
            raise self.errors.pop(0)
        return PollResult("unchanged", "t")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    yield engine
    engine.dispose()


def events(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def run_loop(syncer: Any, engine: Engine, *, deadline: float, until: Any) -> tuple[io.StringIO, SyncerMetrics]:
    log, metrics = io.StringIO(), SyncerMetrics()
    stop, wake = threading.Event(), threading.Event()
    keeper = LeaseKeeper(Lease(engine, holder="me", ttl=3), logger=Logger("k", stream=log), metrics=metrics,
                         wake=wake)
    loop = SyncLoop(syncer, keeper, interval=0.05, retry_deadline=deadline, logger=Logger("s", stream=log),
                    metrics=metrics, stop=stop, wake=wake)
    keeper.start()
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        wait_for(lambda: until(metrics), timeout=20, what="the loop")
    finally:
        stop.set()
        wake.set()
        thread.join(10)
        keeper.stop()
    return log, metrics


def value(metrics: SyncerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_failures_within_the_deadline_are_retried_quietly(engine: Engine) -> None:
    syncer = ScriptedSyncer([UnstableListing("moving"), DatabaseError("db down")])
    log, metrics = run_loop(syncer, engine, deadline=60, until=lambda m: syncer.polls >= 3)
    messages = [e["message"] for e in events(log)]
    assert messages.count("s.sync-retrying") == 2 and "s.sync-failed" not in messages
    assert "s.sync-recovered" in messages
    assert value(metrics, "security_groups_sync_failures_total", kind="unstable") == 1
    assert value(metrics, "security_groups_sync_failures_total", kind="database") == 1
    assert value(metrics, "security_groups_sync_failing") == 0


def test_failures_past_the_deadline_are_reported_and_retrying_continues(engine: Engine) -> None:
    syncer = ScriptedSyncer([RuntimeError("bug")] * 3 + [DatabaseError("db down")] * 200)
    log, metrics = run_loop(syncer, engine, deadline=0.01,
                            until=lambda m: value(m, "security_groups_sync_failing") == 1 and syncer.polls >= 5)
    failed = [e for e in events(log) if e["message"] == "s.sync-failed"]
    assert failed and failed[0]["level"] == "error" and failed[0]["data"]["error"] == "RuntimeError: bug"
    assert value(metrics, "security_groups_sync_failures_total", kind="internal") == 3


def test_a_refused_answer_is_logged_with_its_bound_and_counted(engine: Engine) -> None:
    syncer = ScriptedSyncer([
        RefusedAnswer("cloud controller: GET /v3/security_groups: HTTP 302 redirect to http://evil/x refused",
                      reason=Refusal.REDIRECT, url="https://cc:9024/v3/security_groups?per_page=5000&page=1"),
        RefusedAnswer("too many", reason=Refusal.PAGES, url="https://cc:9024/v3/security_groups", limit=20),
    ])
    log, metrics = run_loop(syncer, engine, deadline=60, until=lambda m: syncer.polls >= 3)
    refused = [e for e in events(log) if e["message"] == "s.cc-answer-refused"]
    assert [(e["level"], e["data"]["reason"], e["data"]["bound"], e["data"]["limit"]) for e in refused] == [
        ("error", "redirect", "no redirects are followed", None), ("error", "pages", "cc_max_pages", 20)]
    assert refused[0]["data"]["url"] == "https://cc:9024/v3/security_groups?per_page=5000&page=1"
    assert "redirect to http://evil/x refused" in refused[0]["data"]["error"]
    assert value(metrics, "security_groups_sync_refusals_total", reason="redirect") == 1
    assert value(metrics, "security_groups_sync_refusals_total", reason="pages") == 1
    assert value(metrics, "security_groups_sync_failures_total", kind="refused") == 2
    assert metrics.registry.get_sample_value("security_groups_sync_refusals_total", {"reason": "deadline"}) == 0


def test_a_lost_lease_stops_polling_until_it_is_regained(engine: Engine) -> None:
    syncer = ScriptedSyncer([LeaseLost("taken")])
    log, metrics = run_loop(syncer, engine, deadline=60, until=lambda m: syncer.polls >= 2)
    messages = [e["message"] for e in events(log)]
    assert "s.lease-lost-before-write" in messages and messages.count("k.lease-acquired") == 2
    assert value(metrics, "security_groups_sync_failures_total", kind="lease") == 1


def test_only_one_keeper_holds_the_lease(engine: Engine) -> None:
    keepers = [LeaseKeeper(Lease(engine, holder=f"k{i}", ttl=3), logger=Logger("k", stream=io.StringIO()),
                           metrics=SyncerMetrics(), wake=threading.Event()) for i in range(2)]
    for keeper in keepers:
        keeper.tick()
    assert [k.held.is_set() for k in keepers] == [True, False]
    keepers[0].start()
    keepers[0].stop()  # releases
    keepers[1].tick()
    assert keepers[1].held.is_set()
