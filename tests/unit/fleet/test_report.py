"""The cell report round-trips, and whatever a peer sends is either a valid report or a named refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.errors import ValidationError
from dynamic_asgs.fleet.report import MAX_REPORT_BYTES, AppEnforcement, CellReport, ContainerCounts, parse_time

ROOT = Path(__file__).resolve().parents[3]
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True)
TIMES = st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                          timezones=st.just(UTC)))
COUNTS = st.integers(0, 10**9)
VERSIONS = st.integers(-1, 2**53 - 1)

reports = st.builds(
    CellReport, cell_id=IDS, cell_name=st.from_regex(r"[a-z][a-z-]{0,20}/[0-9]{1,3}", fullmatch=True),
    interval_seconds=st.floats(0.5, 86400), dataset_version=VERSIONS,
    containers=st.builds(ContainerCounts, COUNTS, COUNTS, COUNTS, COUNTS), lagging_since=TIMES,
    apps=st.lists(st.builds(AppEnforcement, IDS, st.one_of(st.just(""), IDS), VERSIONS, COUNTS, COUNTS, TIMES),
                  max_size=5).map(tuple))


@given(reports)
def test_a_report_round_trips_through_its_json(report: CellReport) -> None:
    assert CellReport.from_bytes(report.to_bytes()) == report


def test_the_published_schema_is_the_one_the_server_validates_with() -> None:
    shipped = ROOT / "src" / "dynamic_asgs" / "fleet" / "schemas" / "cell_report.json"
    assert json.loads((ROOT / "docs" / "cell-report.schema.json").read_text()) == json.loads(shipped.read_text())


def good() -> dict[str, Any]:
    return CellReport("a1b2", "diego-cell/0", 60, 7, ContainerCounts(3, 1, 0, 0),
                      apps=(AppEnforcement("app-1", "space-1", 7, 4),)).to_json()


@pytest.mark.parametrize("path, value, named", [
    (("cell", "id"), "x; DROP TABLE cell_reports", "cell.id"),
    (("cell", "id"), "", "cell.id"),
    (("cell", "name"), "a\nb", "cell.name"),
    (("cell", "name"), "diego-cell/0\n", "cell.name"),
    (("interval_seconds",), 0, "interval_seconds"),
    (("interval_seconds",), "60", "interval_seconds"),
    (("dataset_version",), 10**30, "dataset_version"),
    (("containers", "lagging"), -1, "containers.lagging"),
    (("apps", 0, "guid"), "a b", "apps[0].guid"),
    (("apps", 0, "denials_rose_at"), "yesterday", "apps[0].denials_rose_at"),
    (("lagging_since",), "2026-13-01", "lagging_since"),
    (("extra",), 1, "'extra'"),
])
def test_a_bad_field_is_refused_and_named(path: tuple[Any, ...], value: Any, named: str) -> None:
    raw = good()
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as caught:
        CellReport.from_json(raw)
    assert named in str(caught.value)


@pytest.mark.parametrize("body", [b"", b"\xff", b"[]", b"1" * 5000, b"[" * 100000, b"{" + b" " * MAX_REPORT_BYTES])
def test_garbage_bodies_are_refused_without_escaping(body: bytes) -> None:
    with pytest.raises(ValidationError):
        CellReport.from_bytes(body)


def test_nanosecond_times_are_read() -> None:
    assert parse_time("2026-12-06T04:00:00.123456789Z") == datetime(2026, 12, 6, 4, 0, 0, 123456, tzinfo=UTC)
