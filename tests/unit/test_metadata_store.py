"""The container metadata store: silk's format, atomic writes, a reader that survives bad files."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from dynamic_asgs.errors import LockTimeout
from dynamic_asgs.filelock import locked
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore, StoreView

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
