"""The policy store on SQLite, PostgreSQL and MariaDB: schema, change-only writes, versions."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import current_revision, head_revision, upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from dynamic_asgs.policydb.tables import metadata


def row(guid: str, name: str | None = None, *, running: tuple[str, ...] = (), staging: tuple[str, ...] = (),
        glob: bool = False, rules: str = '[{"protocol":"all","destination":"10.0.0.0/8"}]') -> GroupRow:
    return GroupRow(guid, name or f"name-{guid}", rules, glob, glob, staging, running)


def ids(store: PolicyStore) -> dict[str, int]:
    return {g.row.guid: g.id for g in store.snapshot().groups}


def test_migration_creates_the_tables_the_code_queries(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    assert upgrade(engine) == (head_revision(), head_revision())  # a second run changes nothing
    assert PolicyStore(engine).state().version == 0


def test_replace_writes_only_what_changed_and_bumps_the_version_once(engine: Engine) -> None:
    store = PolicyStore(engine)
    first = store.replace([row("a"), row("b", running=("s1",)), row("c", staging=("s2",))], cc_last_update="t1")
    assert (first.inserted, first.updated, first.deleted, first.version) == (3, 0, 0, 1)
    before = ids(store)

    same = store.replace([row("c", staging=("s2",)), row("a"), row("b", running=("s1",))], cc_last_update="t2")
    assert (same.inserted, same.updated, same.deleted, same.unchanged, same.version) == (0, 0, 0, 3, 1)
    assert store.state().cc_last_update == "t2"

    changed = store.replace([row("a", "renamed"), row("b", running=("s1",)), row("d")], cc_last_update="t3")
    assert (changed.inserted, changed.updated, changed.deleted, changed.version) == (1, 1, 1, 2)
    after = ids(store)
    assert after["a"] == before["a"] and after["b"] == before["b"]  # updated in place, ids stable
    assert "c" not in after and after["d"] > max(before.values())
    names = {g.row.guid: g.row.name for g in store.snapshot().groups}
    assert names["a"] == "renamed"


def test_snapshot_returns_every_field_in_id_order(engine: Engine) -> None:
    store = PolicyStore(engine)
    rules = json.dumps([{"protocol": "tcp", "destination": "10.1.0.0/16", "ports": "443", "log": True}])
    store.replace([row("z", "Zürich ☃", running=("s1", "s2"), staging=("s3",), rules=rules), row("y", glob=True)],
                  cc_last_update=None)
    snapshot = store.snapshot()
    assert snapshot.version == 1
    assert [g.row.guid for g in snapshot.groups] == ["z", "y"]
    first = snapshot.groups[0]
    assert first.row == GroupRow("z", "Zürich ☃", rules, False, False, ("s3",), ("s1", "s2"))
    assert first.content_hash == first.row.content_hash()
    assert snapshot.groups[1].row.running_default and snapshot.groups[1].row.staging_default


def test_large_rules_survive_every_backend(engine: Engine) -> None:
    destinations = ",".join(f"10.{i // 250}.{i % 250}.1" for i in range(6000))
    rules = json.dumps([{"protocol": "tcp", "destination": destinations, "ports": "1-65535"}] * 3)
    assert len(rules) > 200_000
    store = PolicyStore(engine)
    store.replace([row("big", rules=rules)], cc_last_update=None)
    assert store.snapshot().groups[0].row.rules == rules


def test_an_empty_listing_deletes_everything(engine: Engine) -> None:
    store = PolicyStore(engine)
    store.replace([row("a"), row("b")], cc_last_update="t1")
    result = store.replace([], cc_last_update="t2")
    assert (result.deleted, result.version) == (2, 2)
    assert store.snapshot().groups == []


def test_a_failed_transaction_leaves_the_data_as_it_was(engine: Engine) -> None:
    store = PolicyStore(engine)
    store.replace([row("a"), row("b")], cc_last_update="t1")

    def refuse(_conn: sa.Connection) -> None:
        raise DatabaseError("fence refused")

    with pytest.raises(DatabaseError):
        store.replace([row("c")], cc_last_update="t2", fence=refuse)
    assert [g.row.guid for g in store.snapshot().groups] == ["a", "b"]
    assert store.state().cc_last_update == "t1" and store.state().version == 1


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_an_unreachable_database_is_a_database_error_without_the_password(kind: str) -> None:
    settings = DatabaseSettings(type=kind, database_name="policy", user="u", password="s3cret-pw",
                                host="127.0.0.1", port=1, timeout=2)
    engine = create_engine(settings)
    try:
        with pytest.raises(DatabaseError) as info:
            PolicyStore(engine).version()
    finally:
        engine.dispose()
    assert "s3cret-pw" not in str(info.value)
    assert str(info.value).startswith("policy DB: reading the dataset version:")
