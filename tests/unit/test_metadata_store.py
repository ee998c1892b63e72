"""The container metadata store: silk's format, atomic writes, a reader that survives any file, no link followed."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.errors import LockTimeout, StoreError, ValidationError
from dynamic_asgs.filelock import locked
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MAX_STORE_BYTES, MetadataStore, StoreView

META = {"policy_group_id": "app-1", "space_id": "s1", "container_workload": "app", "ports": "8080",
        "log_config": json.dumps({"guid": "app-1", "index": 2, "source_name": "CELL", "tags": {"a": "b"}})}


def view(store: MetadataStore) -> tuple[StoreView, io.StringIO]:
    out = io.StringIO()
    return StoreView(store, Logger("test", stream=out)), out


def test_add_delete_round_trip_in_silks_format(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("h1", "10.255.0.2", META)
    store.add("h2", "10.255.0.3", META, ipv6="fd00::3")
    raw = json.loads((tmp_path / "store.json").read_text())
    assert raw["h1"] == {"handle": "h1", "ip": "10.255.0.2", "metadata": META}
    assert raw["h2"]["ipv6"] == "fd00::3"
    assert (tmp_path / "store.json_version").read_text() == "3"  # silk starts at 1
    for name in ("store.json", "store.json_version", "store.json_lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert store.delete("h1") == raw["h1"]
    assert store.delete("h1") is None
    assert list(json.loads((tmp_path / "store.json").read_text())) == ["h2"]


def test_view_parses_containers_and_reparses_only_on_change(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    v, _ = view(store)
    assert v.refresh() is False and v.containers == {}  # missing store: empty, no error yet logged
    assert v.signature == store.signature()  # seen as read: the agent's loop does not spin until a first ADD
    store.add("h1", "10.255.0.2", META)
    assert v.refresh() is True
    c = v.containers["h1"]
    assert (c.app_guid, c.log_index, c.log_source, c.log_tags) == ("app-1", "2", "CELL", (("a", "b"),))
    assert v.refresh() is False
    # Same signature (version, mtime, size, inode): the reader must not look inside.
    path = tmp_path / "store.json"
    st = path.stat()
    garbage = b"x" * st.st_size
    with open(path, "r+b") as f:
        f.write(garbage)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert v.refresh() is False and "h1" in v.containers and v.errors == 0


@pytest.mark.parametrize("content", ['{"h1": {"handle": "h1", "ip": "10.2', "[]", "\x00\x01garbage"])
def test_torn_or_garbage_store_keeps_the_last_good_view(tmp_path: Path, content: str) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("h1", "10.255.0.2", META)
    v, log = view(store)
    assert v.refresh() is True
    (tmp_path / "store.json").write_text(content)
    assert v.refresh() is False
    assert list(v.containers) == ["h1"] and v.errors == 1
    line = json.loads(log.getvalue().splitlines()[-1])
    assert line["message"] == "test.store.store-unreadable-keeping-last-view"
    assert line["data"]["containers_kept"] == 1


def test_missing_store_after_it_existed_keeps_the_view(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("h1", "10.255.0.2", META)
    v, _ = view(store)
    v.refresh()
    (tmp_path / "store.json").unlink()
    assert v.refresh() is False and list(v.containers) == ["h1"]


def test_invalid_entry_is_skipped_and_logged_once(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"good": {"handle": "good", "ip": "10.0.0.1", "metadata": META},
                                "bad": {"handle": "bad", "ip": "10.0.0.999", "metadata": META}}))
    v, log = view(MetadataStore(path))
    assert v.refresh() is True
    assert list(v.containers) == ["good"] and "not an IP address" in v.invalid["bad"]
    (tmp_path / "store.json_version").write_text("7")
    v.refresh()
    assert log.getvalue().count("store-entry-invalid") == 1


def _hold(lock: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    with locked(lock, timeout=1):
        ready.set()
        time.sleep(seconds)


def test_writers_wait_for_the_lock_and_give_up_at_the_bound(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json", lock_timeout=0.3)
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(store.lock_path), 2.0, ready))
    holder.start()
    try:
        assert ready.wait(5)
        with pytest.raises(LockTimeout, match=r"store\.json_lock: lock held by another process"):
            store.add("h1", "10.0.0.1", META)
        assert not store.path.exists()
    finally:
        holder.join()
    store.add("h1", "10.0.0.1", META)
    assert store.version() == 2


def test_add_refuses_an_entry_the_agent_could_not_read(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    with pytest.raises(Exception, match="not an IP address"):
        store.add("h1", "not-an-ip", META)
    assert not store.path.exists()


# -- hostile files (issue 13, classes 3 and 8) ------------------------------------------------------

#: The shapes of store.json garbage tried, beyond what the hypothesis tests generate.
SHAPES: dict[str, bytes] = {
    "non-object top level": b"[1, 2, 3]",
    "a string": b'"store"',
    "entries that are not objects": json.dumps({"h1": [1], "h2": "x", "h3": None, "h4": 7}).encode(),
    "wrong types in every field": json.dumps({"h1": {"handle": 1, "ip": [], "ipv6": {}, "metadata": {
        "policy_group_id": 1, "space_id": [], "container_workload": {}, "ports": 8080, "log_config": {}}}}).encode(),
    "deeply nested": b'{"h1": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "deeply nested log_config": json.dumps({"h1": {"handle": "h1", "ip": "10.0.0.1", "metadata": {
        "log_config": "[" * 100_000 + "]" * 100_000}}}).encode(),
    "invalid UTF-8": b'{"h1": {"handle": "h\xff\xfe"}}',
    "duplicate keys": b'{"h1": {"handle": "h1", "ip": "10.0.0.1"}, "h1": {"handle": "h1", "ip": "10.0.0.2"}, '
                      b'"h2": {"handle": "h2", "handle": "h3"}}',
    "NaN and Infinity": b'{"h1": {"handle": "h1", "ip": NaN, "metadata": {"ports": Infinity}}, "h2": -Infinity}',
    "a million-digit number": b'{"h1": {"handle": "h1", "ip": 1' + b"0" * 1_000_000 + b"}}",
    "a million-digit float": b'{"h1": 1.' + b"0" * 1_000_000 + b"}",
    "key differs from handle": json.dumps({"h1": {"handle": "h2", "ip": "10.0.0.1"}}).encode(),
    "newline in every value": json.dumps({"h1\n": {"handle": "h1\n", "ip": "10.0.0.1\n", "metadata": {
        "space_id": "s\n", "container_workload": "app\n", "ports": "80\n"}}}).encode(),
    "NUL bytes": b'{"h1": {"handle": "h1\x00"}}',
    "lone surrogate": b'{"h1": {"handle": "\\ud800"}}',
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20)
field_values = st.one_of(json_values, st.sampled_from(["h1", "10.0.0.1", "fd00::1", "app", "8080", '{"guid":"g"}']))
entries = st.fixed_dictionaries({}, optional={
    "handle": field_values, "ip": field_values, "ipv6": field_values,
    "metadata": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        k: field_values for k in ("policy_group_id", "space_id", "container_workload", "ports", "log_config")}))})


def read_view(tmp: Path, data: bytes) -> tuple[StoreView, io.StringIO]:
    (tmp / "store.json").write_bytes(data)
    (tmp / "store.json_version").write_text(str(time.monotonic_ns()))
    v, log = view(MetadataStore(tmp / "store.json"))
    return v, log


def only_our_errors(tmp: Path, data: bytes) -> None:
    """Decoding and parsing ``data`` ends in a view, a StoreError or per-entry ValidationErrors; nothing else."""
    store = MetadataStore(tmp / "store.json")
    (tmp / "store.json").write_bytes(data)
    try:
        raw, _ = store.read_all()
    except StoreError:
        return
    for key, value in raw.items():
        try:
            parse_container(value, handle=key)
        except ValidationError:
            continue


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_of_garbage_is_a_store_error_or_dropped_entries(tmp_path: Path, shape: str) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("good", "10.255.0.2", META)
    v, _ = view(store)
    assert v.refresh() is True
    (tmp_path / "store.json").write_bytes(SHAPES[shape])
    (tmp_path / "store.json_version").write_text("99")
    v.refresh()  # never raises
    if v.last_error is not None:
        assert list(v.containers) == ["good"]  # the whole file is unusable: the last good view stays
    else:
        assert v.containers == {} or all(c.handle == h for h, c in v.containers.items())
        assert v.invalid, shape  # every shape holds at least one entry to refuse
        assert all("\n" not in h for h in v.containers)
    if shape == "duplicate keys":  # the last wins, as with Go's decoder (silk)
        assert v.containers["h1"].ip == "10.0.0.2" and "differs from the entry's key" in v.invalid["h2"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(json_values, st.dictionaries(st.text(max_size=10), st.one_of(entries, json_values),
                                                       max_size=4)))
def test_any_json_shape_ends_in_a_store_error_or_per_entry_validation(tmp_path: Path, document: Any) -> None:
    only_our_errors(tmp_path, json.dumps(document).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), json_values.map(lambda d: json.dumps(d).encode()).flatmap(
    lambda b: st.integers(0, len(b)).map(lambda cut: b[:cut] + b"\xff" + b[cut:]))))
def test_any_bytes_end_in_a_store_error_or_per_entry_validation(tmp_path: Path, data: bytes) -> None:
    only_our_errors(tmp_path, data)


def test_a_huge_store_is_refused_having_read_only_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    with open(path, "wb") as f:
        f.write(b'{"h": "' + b"x" * (MAX_STORE_BYTES + 10) + b'"}')
    with pytest.raises(StoreError, match=f"larger than {MAX_STORE_BYTES} bytes: refused"):
        MetadataStore(path).read_all()


def test_a_fifo_at_the_store_path_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "store.json")
    with pytest.raises(StoreError, match="not a regular file"):
        MetadataStore(tmp_path / "store.json").read_all()


def test_many_refused_entries_are_logged_a_few_by_name_and_the_rest_counted(tmp_path: Path) -> None:
    bad = {f"h{i}": {"handle": f"h{i}", "ip": "nope"} for i in range(50)}
    v, log = read_view(tmp_path, json.dumps(bad).encode())
    v.refresh()
    assert len(v.invalid) == 50
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert sum(line["message"].endswith("store-entry-invalid") for line in lines) == 10
    assert [line["data"]["count"] for line in lines if line["message"].endswith("store-entries-invalid-not-logged")
            ] == [40]


@pytest.mark.parametrize("name", ["store.json_lock", "store.json_version", "store.json"])
@pytest.mark.parametrize("op", ["add", "delete", "read"])
def test_a_symlink_at_any_store_file_is_refused_and_its_target_untouched(tmp_path: Path, name: str, op: str) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("h1", "10.255.0.2", META)
    target = tmp_path / "outside" / "precious"
    target.parent.mkdir()
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    link = tmp_path / name
    link.unlink()
    link.symlink_to(target)
    before = target.stat()
    with pytest.raises(StoreError, match=rf"{name}: .*symbolic link: refused"):
        if op == "add":
            store.add("h2", "10.255.0.3", META)
        elif op == "delete":
            store.delete("h1")
        else:
            store.read_all() if name != "store.json_version" else store.version()
    after = target.stat()
    assert target.read_text() == "precious\n" and (after.st_mtime_ns, after.st_mode) == (before.st_mtime_ns,
                                                                                           before.st_mode)
    assert link.is_symlink()


def test_a_dangling_symlink_is_not_followed_to_create_its_target(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    target = tmp_path / "created-by-following"
    (tmp_path / "store.json_lock").symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        store.add("h1", "10.255.0.2", META)
    assert not target.exists() and not store.path.exists()


def test_written_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = MetadataStore(tmp_path / "store.json")
        store.add("h1", "10.255.0.2", META)
        store.add("h2", "10.255.0.3", META)
    finally:
        os.umask(old)
    for name in ("store.json", "store.json_version", "store.json_lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_add_runs_the_callers_check_under_the_lock_before_writing(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "store.json")
    store.add("h1", "10.255.0.2", META)
    seen: list[list[str]] = []

    def refuse(entries: Any) -> None:
        seen.append(list(entries))
        raise ValidationError("no")

    with pytest.raises(ValidationError):
        store.add("h2", "10.255.0.3", META, check=refuse)
    assert seen == [["h1"]] and list(store.read_all()[0]) == ["h1"] and store.version() == 2
