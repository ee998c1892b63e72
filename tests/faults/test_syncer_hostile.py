"""A hostile Cloud Controller against the real syncer daemon: nothing it says off the rules reaches the DB.

The syncer runs as a real process against :class:`support.hostile_cc.HostileCC` (CC and
UAA over TLS, CC's internal API over mutual TLS) and a real policy DB. Issue 13, class 6:

* redirects of the listing, the token and ``last_update`` (to another host with a valid
  certificate, another port, plain HTTP, the same origin, with credentials in the target)
  are refused: the other origins never see a request, nothing is stored, each is logged
  (``cc-answer-refused``, reason ``redirect``, no secret in any log line) and counted;
* endless or contradictory ``next`` chains and an oversized page are refused at their bound,
  with the syncer's peak RSS growth bounded, and the DB unchanged;
* bytes dripped into the headers or body of each endpoint end at the listing deadline
  (the daemon hangs up, logs and counts it), and the daemon syncs once CC behaves;
* groups that cannot be stored (a lone surrogate, NUL, absurd lengths, wrong types) are
  dropped alone while the others are stored, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.store import PolicyStore
from support.daemons import Daemon, database, database_config, free_port, wait_for
from support.faults import record
from support.hostile_cc import (
    GROUPS,
    LATEST,
    TOKEN,
    Drip,
    Elsewhere,
    Endless,
    Fault,
    HostileCC,
    Oversized,
    Redirect,
    cc_resource,
)

Snapshot = tuple[int, str | None, list[tuple[str, str, str]]]


@dataclass
class Rig:
    """A hostile CC, the real syncer daemon configured for it, and the policy DB it writes."""

    cc: HostileCC
    syncer: Daemon
    store: PolicyStore
    metrics_port: int

    def snapshot(self) -> Snapshot:
        state, snap = self.store.state(), self.store.snapshot()
        return state.version, state.cc_last_update, [(g.row.guid, g.row.name, g.content_hash) for g in snap.groups]

    def guids(self) -> list[str]:
        return sorted(g.row.guid for g in self.store.snapshot().groups)

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def refusals(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.syncer.events("cc-answer-refused") if e["data"]["reason"] == reason]

    def refused_since(self, reason: str, seen: int, text: str = "") -> bool:
        """Whether a refusal for ``reason`` whose error mentions ``text`` came after the first ``seen``."""
        return any(text in e["data"]["error"] for e in self.refusals(reason)[seen:])

    def inject(self, path: str, fault: Fault) -> None:
        """Make ``path`` hostile and give the syncer a reason to use it (a new last_update, a refused token)."""
        self.cc.inject(path, fault)
        if path == TOKEN:
            self.cc.revoke()
        self.cc.publish()


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    started: list[tuple[HostileCC, Daemon, Any]] = []
    stack: list[Any] = []

    def make(kind: str = "sqlite", groups: list[dict[str, Any]] | None = None, **config: Any) -> Rig:
        manager = database(kind, tmp_path / "db")
        settings = manager.__enter__()
        stack.append(manager)
        cc = HostileCC(tmp_path / "cc", groups if groups is not None else baseline())
        port = free_port()
        path = tmp_path / "syncer.json"
        path.write_text(json.dumps(cc.syncer_config(
            database_config(settings), uuid="hostile", metrics_port=port, asg_poll_interval_seconds=1,
            retry_deadline_seconds=2, lease_ttl_seconds=3, **config)))
        syncer = Daemon(["policy-server-asg-syncer", "--config-file", str(path)], tmp_path / "syncer.log")
        engine = create_engine(settings)
        started.append((cc, syncer, engine))
        rig = Rig(cc, syncer, PolicyStore(engine), port)
        wait_for(lambda: syncer.events("sync-complete"), timeout=60, what="the first sync")
        return rig

    yield make
    for cc, syncer, engine in started:
        syncer.stop()
        cc.close()
        engine.dispose()
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def grew(items: list[Any], count: int) -> bool:
    return len(items) > count


def baseline() -> list[dict[str, Any]]:
    return [cc_resource(f"good-{i}", running_spaces=(f"space-{i}",)) for i in range(3)]


def recovered(rig: Rig, groups: list[dict[str, Any]]) -> float:
    """Let CC behave with ``groups``; seconds until the syncer stored them."""
    for path in (TOKEN, LATEST, GROUPS):
        rig.cc.inject(path, None)
    rig.cc.publish(groups)
    started = time.monotonic()
    wanted = sorted(g["guid"] for g in groups)
    wait_for(lambda: rig.guids() == wanted, timeout=60, what="the syncer to store CC's data once it behaves")
    return time.monotonic() - started


def test_redirects_are_never_followed(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    tls, plain = Elsewhere(rig.cc.pki), Elsewhere(None)
    before = rig.snapshot()
    secret_target = f"https://user:hunter2@127.0.0.1:{tls.port}/v3/security_groups?token=sekrit"
    inputs = [
        (GROUPS, Redirect(302, f"{tls.url('localhost')}/v3/security_groups"), f"{tls.url('localhost')}/"),
        (GROUPS, Redirect(307, f"{tls.url()}/v3/security_groups?page=1"), f"{tls.url()}/"),
        (GROUPS, Redirect(301, f"{plain.url()}/v3/security_groups"), f"{plain.url()}/"),
        (GROUPS, Redirect(308, "/v3/security_groups_mirror"), f"{rig.cc.url}/v3/security_groups_mirror"),
        (GROUPS, Redirect(302, secret_target), f"https://127.0.0.1:{tls.port}/v3/security_groups refused"),
        (TOKEN, Redirect(307, f"{tls.url('localhost')}/oauth/token"), f"{tls.url('localhost')}/oauth/token"),
        (LATEST, Redirect(302, f"{plain.url()}/internal/v4/asg_latest_update"), f"{plain.url()}/internal"),
    ]
    violations: list[str] = []
    try:
        for path, fault, shown in inputs:
            seen = len(rig.refusals("redirect"))
            rig.inject(path, fault)
            wait_for(partial(rig.refused_since, "redirect", seen, shown), timeout=30,
                     what=f"the redirect to {shown} to be refused")
            if rig.snapshot() != before:
                violations.append(f"{fault}: the DB changed")
            if tls.requests or plain.requests:
                violations.append(f"{fault}: another origin was asked ({tls.requests} TLS, {plain.requests} plain)")
            rig.cc.inject(path, None)
        assert rig.metric("security_groups_sync_refusals_total", reason="redirect") >= len(inputs)
        assert rig.metric("security_groups_sync_failures_total", kind="refused") >= len(inputs)
        log = rig.syncer.log_path.read_text()
        if "hunter2" in log or "sekrit" in log:
            violations.append("a redirect target's secret reached the log")
        recovery = recovered(rig, [*baseline(), cc_resource("good-new")])
        assert rig.syncer.running()
    finally:
        tls.close()
        plain.close()
    record("syncer-redirects", injected=len(inputs), bad_inputs=len(inputs), violations=len(violations),
           recoveries=[recovery])
    assert not violations, violations


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


#: Growth of the syncer's peak RSS allowed while refusing everything below (the page bound is 64 MiB).
RSS_BOUND_KIB = 320 * 1024


def test_endless_and_oversized_listings_are_refused_at_their_bound(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    before, rss_before = rig.snapshot(), peak_rss_kib(rig.syncer.pid)
    inputs: list[tuple[Fault, str]] = [
        (Endless(total=10**9, pages=None, size=5000), "pages"),  # announces 200,000 pages
        (Endless(total=100_000, pages=None, size=1000), "paging"),  # next forever: stops at the 20th page
        (Endless(total=10_000, pages=2, size=5000, step=5000), "paging"),  # totals grow with every page
        (Endless(total=15_000, pages=3, size=5000, next_page=1), "paging"),  # next points back to page 1
        (Endless(total=15_000, pages=3, size=5000, fresh=False), "paging"),  # the same page again
        (Oversized(256 * 1024 * 1024, declared=False), "response_size"),  # 256 MiB, chunked
        (Oversized(256 * 1024 * 1024, declared=True), "response_size"),
    ]
    violations: list[str] = []
    for fault, reason in inputs:
        seen = len(rig.refusals(reason))
        rig.cc.pages.clear()
        rig.inject(GROUPS, fault)
        wait_for(partial(rig.refused_since, reason, seen), timeout=60, what=f"{fault} to be refused ({reason})")
        if max(rig.cc.pages, default=0) > 20:
            violations.append(f"{fault}: page {max(rig.cc.pages)} was asked for; the bound is 20")
        if rig.snapshot() != before:
            violations.append(f"{fault}: the DB changed")
    growth = peak_rss_kib(rig.syncer.pid) - rss_before
    if growth > RSS_BOUND_KIB:
        violations.append(f"peak RSS grew by {growth} KiB")
    assert rig.cc.sent and all(sent < 256 * 1024 * 1024 for sent in rig.cc.sent)
    recovery = recovered(rig, [*baseline(), cc_resource("good-new")])
    assert rig.syncer.running()
    record("syncer-endless-listing", injected=len(inputs), bad_inputs=len(inputs), violations=len(violations),
           recoveries=[recovery], peak_rss_growth_kib=growth)
    assert not violations, violations


def test_a_drip_ends_at_the_listing_deadline(rig_factory: Callable[..., Rig]) -> None:
    # The read timeout (30 s) never fires for a byte every 50 ms; only the 2 s deadline ends each drip.
    rig = rig_factory(cc_listing_deadline_seconds=2, request_timeout_seconds=30)
    before = rig.snapshot()
    inputs = [(GROUPS, Drip("body", 0.05)), (GROUPS, Drip("headers", 0.05)), (LATEST, Drip("body", 0.05)),
              (LATEST, Drip("headers", 0.05)), (TOKEN, Drip("headers", 0.05))]
    violations: list[str] = []
    for path, fault in inputs:
        seen, hangups = len(rig.refusals("deadline")), len(rig.cc.hangups)
        rig.inject(path, fault)
        wait_for(partial(rig.refused_since, "deadline", seen), timeout=60,
                 what=f"a drip of {path} to end at the deadline")
        wait_for(partial(grew, rig.cc.hangups, hangups), timeout=30, what="the syncer to hang up")
        event = rig.refusals("deadline")[-1]
        assert event["level"] == "error" and event["data"]["bound"] == "cc_listing_deadline_seconds"
        assert event["data"]["limit"] == 2 and event["data"]["url"].startswith("https://127.0.0.1:")
        if rig.snapshot() != before:
            violations.append(f"{path} {fault}: the DB changed")
        if not rig.syncer.running():
            violations.append(f"{path} {fault}: the syncer died")
        rig.cc.inject(path, None)
    assert rig.metric("security_groups_sync_refusals_total", reason="deadline") >= len(inputs)
    recovery = recovered(rig, [*baseline(), cc_resource("good-new")])
    record("syncer-drip", injected=len(inputs), bad_inputs=len(inputs), violations=len(violations),
           recoveries=[recovery], hangup_seconds_max=round(max(rig.cc.hangups)))
    assert not violations, violations


def bad_groups() -> list[Any]:
    """Groups no database can store faithfully, or the policy server could never serve."""
    wrong_guid = cc_resource("x")
    wrong_guid["guid"] = 7
    wrong_rules = cc_resource("bad-rules-type")
    wrong_rules["rules"] = "all"
    no_relationships = cc_resource("bad-no-relationships")
    del no_relationships["relationships"]
    return [
        cc_resource("later-bad", name="\ud800"),  # stored before; a lone surrogate now
        cc_resource("bad-low-surrogate", name="x\udfffy"),
        cc_resource("bad-rule-surrogate", rules=[{"protocol": "all", "destination": "10.0.0.1",
                                                  "description": "\ud83d"}]),
        cc_resource("bad-nul", name="a\x00b"),
        cc_resource("bad-long-name", name="n" * 100_000),
        cc_resource("g" * 300),
        cc_resource("bad,comma"),
        cc_resource("bad-space", running_spaces=("space 1",)),
        cc_resource("bad-space-newline", staging_spaces=("space-1\n",)),
        wrong_guid, wrong_rules, no_relationships, 42,
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_groups_that_cannot_be_stored_are_dropped_alone(rig_factory: Callable[..., Rig], kind: str) -> None:
    rig = rig_factory(kind, groups=[*baseline(), cc_resource("later-bad")])
    assert rig.guids() == ["good-0", "good-1", "good-2", "later-bad"]
    bad = bad_groups()
    good = [*baseline(), cc_resource("good-3", name="dns \u00fcber \U0001f680")]
    rig.cc.publish([good[0], *bad[:6], good[1], *bad[6:], good[2], good[3]])
    wait_for(lambda: rig.guids() == ["good-0", "good-1", "good-2", "good-3"], timeout=60,
             what="the storable groups to be stored")
    dropped = rig.syncer.events("security-groups-dropped")
    assert dropped[-1]["data"]["count"] == len(bad)
    assert rig.metric("security_groups_dropped") == len(bad)
    names = {g.row.guid: g.row.name for g in rig.store.snapshot().groups}
    assert names["good-3"] == "dns \u00fcber \U0001f680"
    assert not rig.syncer.events("sync-retrying") and rig.syncer.running()
    record(f"syncer-unstorable-groups-{kind}", bad_inputs=len(bad), violations=0)
