"""Answers from the in-memory dataset: which groups, paging, ETags."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.policy_server.dataset import Dataset
from dynamic_asgs.policydb.store import GroupRow, Snapshot, StoredGroup


def group(gid: int, *, running: tuple[str, ...] = (), staging: tuple[str, ...] = (), run_default: bool = False,
          stage_default: bool = False, name: str | None = None) -> StoredGroup:
    row = GroupRow(f"guid-{gid}", name or f"asg-{gid}", '[{"protocol":"all","destination":"10.0.0.0/8"}]',
                   stage_default, run_default, staging, running)
    return StoredGroup(gid, row, row.content_hash())


GROUPS = [
    group(1, run_default=True, stage_default=True),   # global, both lifecycles
    group(3, running=("space-a",)),
    group(4, staging=("space-a", "space-b")),
    group(7, running=("space-b",)),
    group(9, stage_default=True),                     # global staging only
    group(12, running=("space-c",)),
]


def dataset(groups: list[StoredGroup] = GROUPS, version: int = 5) -> Dataset:
    return Dataset(Snapshot(version, 0.0, groups))


def guids(body: bytes) -> list[str]:
    return [g["guid"] for g in json.loads(body)["security_groups"]]


def test_global_groups_plus_groups_bound_to_the_listed_spaces_for_either_lifecycle() -> None:
    ds = dataset()
    assert guids(ds.answer([]).body) == ["guid-1", "guid-9"]
    assert guids(ds.answer(["space-a"]).body) == ["guid-1", "guid-3", "guid-4", "guid-9"]
    assert guids(ds.answer(["space-b", "space-c", "unknown"]).body) == ["guid-1", "guid-4", "guid-7", "guid-9",
                                                                       "guid-12"]


def test_the_answer_has_the_go_servers_shape_with_rules_as_a_json_string() -> None:
    doc = json.loads(dataset().answer(["space-a"]).body)
    assert list(doc) == ["next", "security_groups"]
    assert doc["next"] == 0
    entry = doc["security_groups"][2]
    assert entry == {
        "guid": "guid-4", "name": "asg-4", "rules": '[{"protocol":"all","destination":"10.0.0.0/8"}]',
        "staging_default": False, "running_default": False,
        "staging_space_guids": ["space-a", "space-b"], "running_space_guids": [],
    }


def test_paging_with_from_limit_and_next() -> None:
    ds = dataset()
    first = ds.answer(["space-a", "space-b"], limit=2)
    assert guids(first.body) == ["guid-1", "guid-3"] and first.next == 4
    second = ds.answer(["space-a", "space-b"], start=first.next, limit=2)
    assert guids(second.body) == ["guid-4", "guid-7"] and second.next == 9
    last = ds.answer(["space-a", "space-b"], start=second.next, limit=2)
    assert guids(last.body) == ["guid-9"] and last.next == 0
    assert json.loads(last.body)["next"] == 0


def test_etag_follows_the_answers_content_not_the_dataset_version() -> None:
    a = dataset(version=5).answer(["space-a"])
    unrelated = dataset([*GROUPS[:5], group(12, running=("space-c",), name="renamed")], version=6)
    assert unrelated.answer(["space-a"]).etag == a.etag  # space-a's answer did not change
    related = dataset([group(1, run_default=True, stage_default=True), group(3, running=("space-a",), name="x"),
                       *GROUPS[2:]], version=6)
    assert related.answer(["space-a"]).etag != a.etag
    assert dataset().answer(["space-a"], limit=2).etag != a.etag  # another page is another representation


@st.composite
def datasets(draw: st.DrawFn) -> tuple[Dataset, list[str]]:
    spaces = [f"s{i}" for i in range(6)]
    ids = sorted(draw(st.sets(st.integers(1, 500), max_size=40)))
    groups = [
        group(i, running=tuple(sorted(draw(st.sets(st.sampled_from(spaces), max_size=2)))),
              staging=tuple(sorted(draw(st.sets(st.sampled_from(spaces), max_size=2)))),
              run_default=draw(st.booleans()) and draw(st.booleans()))
        for i in ids
    ]
    return dataset(groups), draw(st.lists(st.sampled_from(spaces), max_size=4))


@given(datasets(), st.integers(1, 7))
def test_following_next_returns_the_whole_answer_exactly_once(data: tuple[Dataset, list[str]], limit: int) -> None:
    ds, spaces = data
    whole = guids(ds.answer(spaces).body)
    pages, start = [], 0
    while True:
        page = ds.answer(spaces, start=start, limit=limit)
        got = guids(page.body)
        assert len(got) <= limit
        pages.extend(got)
        if page.next == 0:
            break
        start = page.next
    assert pages == whole
