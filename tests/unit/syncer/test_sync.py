"""One syncer poll against the CC stand-in and a real SQLite store."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.errors import LeaseLost, UpstreamError
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.cc_stub.catalog import load_catalog
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.syncer.lease import Lease
from dynamic_asgs.syncer.main import build_cc
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.settings import load_settings
from dynamic_asgs.syncer.sync import Syncer
from support.daemons import InProcessStub, cc_client, example_groups, inprocess_stub
from support.hostile_cc import HostileCC, cc_resource


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[InProcessStub, PolicyStore, Syncer, io.StringIO]]:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    store = PolicyStore(engine)
    log = io.StringIO()
    with inprocess_stub(tmp_path, example_groups(5)) as stub:
        syncer = Syncer(cc=cc_client(stub), store=store, fence=None, logger=Logger("s", stream=log),
                        metrics=SyncerMetrics())
        yield stub, store, syncer, log
    engine.dispose()


def cc_requests(stub: InProcessStub) -> int:
    return int(stub.state.stats_snapshot()["cc_requests"])


def set_groups(stub: InProcessStub, groups: list[dict[str, object]]) -> None:
    stub.asgs.write_text(json.dumps({"security_groups": groups}))
    stub.state.replace_catalog(load_catalog(stub.asgs, base_url=stub.url))


def test_first_poll_stores_everything(parts: tuple[InProcessStub, PolicyStore, Syncer, io.StringIO]) -> None:
    _stub, store, syncer, log = parts
    result = syncer.poll()
    assert result.outcome == "changed" and result.result is not None and result.result.inserted == 5
    assert [g.row.name for g in store.snapshot().groups] == [f"asg-{i:03d}" for i in range(5)]
    summary = json.loads(log.getvalue().splitlines()[-1])
    assert summary["message"] == "s.sync-complete" and summary["data"]["inserted"] == 5


def test_an_unchanged_poll_is_one_request_and_no_write(parts: tuple[InProcessStub, PolicyStore, Syncer,
                                                                     io.StringIO]) -> None:
    stub, store, syncer, _ = parts
    syncer.poll()
    state = store.state()
    before = cc_requests(stub)
    assert syncer.poll().outcome == "unchanged"
    assert cc_requests(stub) - before == 1
    assert store.state() == state  # not even the sync time was written


def test_a_touch_without_changes_lists_but_writes_no_rows(parts: tuple[InProcessStub, PolicyStore, Syncer,
                                                                        io.StringIO]) -> None:
    stub, store, syncer, _ = parts
    syncer.poll()
    stub.state.bump()
    result = syncer.poll()
    assert result.outcome == "no_changes" and store.state().version == 1
    assert store.state().cc_last_update == result.last_update


def test_an_edit_is_written(parts: tuple[InProcessStub, PolicyStore, Syncer, io.StringIO]) -> None:
    stub, _store, syncer, _ = parts
    syncer.poll()
    groups = example_groups(5)
    groups[1]["rules"] = []
    set_groups(stub, groups[:4])
    result = syncer.poll().result
    assert result is not None and (result.updated, result.deleted, result.version) == (1, 1, 2)


def test_a_failed_listing_writes_nothing(parts: tuple[InProcessStub, PolicyStore, Syncer, io.StringIO]) -> None:
    stub, store, syncer, _ = parts
    syncer.poll()
    set_groups(stub, example_groups(2))
    stub.state.set_faults({"malformed_next": 1, "paths": ["/v3/"]})
    with pytest.raises(UpstreamError):
        syncer.poll()
    assert len(store.snapshot().groups) == 5 and store.state().version == 1
    assert syncer.poll().outcome == "changed" and len(store.snapshot().groups) == 2


def test_without_the_lease_nothing_is_written(parts: tuple[InProcessStub, PolicyStore, Syncer,
                                                            io.StringIO]) -> None:
    _stub, store, syncer, _ = parts
    Lease(store.engine, holder="other", ttl=60).acquire()
    syncer.fence = Lease(store.engine, holder="me", ttl=60).fence
    with pytest.raises(LeaseLost):
        syncer.poll()
    assert store.snapshot().groups == [] and store.state().cc_last_update is None


def test_a_group_that_cannot_be_stored_is_dropped_and_reported(tmp_path: Path) -> None:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    store, log, metrics = PolicyStore(engine), io.StringIO(), SyncerMetrics()
    good = [cc_resource(f"g{i}") for i in range(3)]
    cc = HostileCC(tmp_path / "pki", [good[0], cc_resource("bad-1", name="\ud800"), good[1],
                                      cc_resource("bad-2", running_spaces=("s,1",)), good[2]])
    try:
        config = tmp_path / "syncer.json"
        config.write_text(json.dumps(cc.syncer_config({"type": "sqlite", "database_name": "unused"})))
        syncer = Syncer(cc=build_cc(load_settings(config), metrics), store=store, fence=None,
                        logger=Logger("s", stream=log), metrics=metrics)
        assert syncer.poll().outcome == "changed"
        assert [g.row.guid for g in store.snapshot().groups] == ["g0", "g1", "g2"]
        assert metrics.registry.get_sample_value("security_groups_dropped") == 2
        lines = [json.loads(line) for line in log.getvalue().splitlines()]
        dropped = [line for line in lines if line["message"] == "s.security-groups-dropped"]
        assert dropped[0]["level"] == "error" and dropped[0]["data"]["count"] == 2
        assert "resources[1]: security group 'bad-1': name: not encodable as UTF-8" in dropped[0]["data"]["examples"][0]
        assert lines[-1]["data"]["dropped_groups"] == 2
        cc.publish(good)
        assert syncer.poll().outcome == "no_changes"
        assert metrics.registry.get_sample_value("security_groups_dropped") == 0
    finally:
        cc.close()
        engine.dispose()
