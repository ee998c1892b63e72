"""The fleet audit's report logic, input parsing and output (no network beyond loopback)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.agent.status import (
    AgentStatus,
    ContainerStatus,
    Drift,
    PolicyServerStatus,
    StoreStatus,
    Totals,
    instant,
)
from dynamic_asgs.cli import main
from dynamic_asgs.errors import InputError, UpstreamError
from dynamic_asgs.tools.audit import (
    EXIT_LAGGING,
    EXIT_OK,
    EXIT_UNREACHABLE,
    AgentTarget,
    Current,
    build_report,
    fetch_all,
    fetch_status,
    parse_targets,
    render_table,
)

NOW = 1_700_000_100.0
CURRENT = Current(version=7, changed_at=NOW - 40)


def status(containers: dict[str, int | None], *, agent_version: int | None = 7, error: str | None = None
           ) -> dict[str, Any]:
    """An /asg-status document as the agent writes it."""
    at = instant(1_699_999_980.0)  # 2023-11-14T22:13:00.000Z
    entries = {h: ContainerStatus(app_guid=f"app-{h}", space_guid="s1", workload="app", ruleset={}, rule_count=3,
                                  applied_at=at, verified_at=None, dataset_version=v,
                                  enforcing_since=at if v is not None else None) for h, v in containers.items()}
    lagging = sum(1 for v in containers.values() if v != agent_version)
    return AgentStatus(
        dataset_version=agent_version, dataset_changed_at=None, containers=entries,
        totals=Totals(containers=len(entries), rules=3 * len(entries), lagging=lagging, store_entries=len(entries),
                      invalid_store_entries=0),
        last_cycle=None, drift=Drift(repaired=0, last=None), settling=(),
        policy_server=PolicyServerStatus(error=error, last_success=None, refused_spaces={}),
        store=StoreStatus(error=None)).to_json()


def target(name: str) -> AgentTarget:
    return AgentTarget(name, f"http://127.0.0.1:1/{name}")


def test_counts_current_and_lagging_containers_per_cell_and_in_total() -> None:
    report = build_report(CURRENT, [
        (target("a"), status({"a1": 7, "a2": 8})),  # 8: the server moved on while the audit ran: current
        (target("b"), status({"b1": 6, "b2": None, "b3": 7}, agent_version=6, error="policy server: timeout")),
        (target("c"), ConnectionRefusedError("cannot connect")),
        (target("d"), {"something": "else"}),
    ], now=NOW, max_lag=30)
    a, b, c, d = report.cells
    assert (a.containers, a.current, a.lagging, a.state) == (2, 2, [], "ok")
    assert (b.containers, b.current, b.state, b.agent_dataset_version) == (3, 1, "LAGGING", 6)
    assert b.agent_error == "policy server: timeout"
    assert [(x.handle, x.dataset_version, x.lag_seconds, x.beyond_max_lag) for x in b.lagging] == \
        [("b1", 6, 40.0, True), ("b2", None, 40.0, True)]
    assert (c.reachable, c.state, c.error) == (False, "UNREACHABLE", "cannot connect")
    assert not d.reachable and d.error is not None and "not an /asg-status document" in d.error
    assert report.totals() == {"cells": 4, "cells_unreachable": 2, "containers": 5, "current": 3, "lagging": 2,
                               "lagging_beyond_max_lag": 2}
    assert report.exit_code() == EXIT_LAGGING, "a definite lag wins over unreachable cells"


@pytest.mark.parametrize(("max_lag", "unreachable", "expected", "state"), [
    (60, False, EXIT_OK, "catching-up"),       # lagging, but for less than --max-lag
    (39.5, False, EXIT_LAGGING, "LAGGING"),
    (60, True, EXIT_UNREACHABLE, "catching-up"),
])
def test_exit_status(max_lag: float, unreachable: bool, expected: int, state: str) -> None:
    answers: list[tuple[AgentTarget, Any]] = [(target("a"), status({"a1": 6}))]
    if unreachable:
        answers.append((target("z"), TimeoutError("no answer within 5 s")))
    report = build_report(CURRENT, answers, now=NOW, max_lag=max_lag)
    assert report.exit_code() == expected and report.cells[0].state == state


def test_everything_current_is_ok_and_an_empty_cell_counts() -> None:
    report = build_report(CURRENT, [(target("a"), status({"a1": 7})), (target("e"), status({}))], now=NOW, max_lag=0)
    assert report.exit_code() == EXIT_OK and report.totals()["containers"] == 1


def test_an_agent_with_asg_syncing_disabled_is_unusable_not_a_crash() -> None:
    report = build_report(CURRENT, [(target("a"), {"enable_asg_syncing": False})], now=NOW, max_lag=0)
    assert not report.cells[0].reachable and "not an /asg-status document" in str(report.cells[0].error)


def test_an_unknown_change_time_counts_as_beyond_any_lag() -> None:
    report = build_report(Current(7, None), [(target("a"), status({"a1": 6}))], now=NOW, max_lag=3600)
    assert report.cells[0].lagging[0].lag_seconds is None and report.exit_code() == EXIT_LAGGING


def test_a_document_with_a_bad_version_is_unusable_not_a_crash() -> None:
    bad = status({"a1": 7})
    bad["containers"]["a1"]["dataset_version"] = "7"
    report = build_report(CURRENT, [(target("a"), bad)], now=NOW, max_lag=0)
    assert not report.cells[0].reachable and "dataset_version" in str(report.cells[0].error)
    assert report.exit_code() == EXIT_UNREACHABLE


def test_json_and_table_output() -> None:
    report = build_report(CURRENT, [(target("a"), status({"a1": 7})), (target("b"), status({"b1": 5})),
                                    (target("c"), OSError("cannot connect: ConnectionError"))], now=NOW, max_lag=10)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["policy_server"] == {"dataset_version": 7, "changed_at": "2023-11-14T22:14:20.000Z"}
    assert doc["exit_code"] == EXIT_LAGGING and doc["totals"]["lagging"] == 1
    assert [(c["name"], c["state"]) for c in doc["cells"]] == [("a", "ok"), ("b", "LAGGING"), ("c", "UNREACHABLE")]
    assert doc["cells"][1]["lagging"][0]["handle"] == "b1" and doc["cells"][1]["lagging"][0]["lag_seconds"] == 40
    table = render_table(report)
    assert "dataset version 7" in table and "(40.0s ago)" in table
    cells_part, lagging_part = table.split("lagging containers")
    rows = {line.split()[0]: line.split() for line in cells_part.splitlines() if line and line.split()[0] in "abc"}
    assert rows["a"][1:5] == ["ok", "1", "1", "0"] and rows["b"][1:5] == ["LAGGING", "1", "0", "1"]
    assert rows["c"][1] == "UNREACHABLE" and "cannot connect" in " ".join(rows["c"])
    lag_line = next(line for line in lagging_part.splitlines() if " b1 " in line)
    assert "app-b1" in lag_line and " 5 " in lag_line and "40.0s" in lag_line and "BEYOND MAX LAG" in lag_line


def test_targets_from_flags_and_a_cells_file(tmp_path: Path) -> None:
    cells = tmp_path / "cells.txt"
    cells.write_text("# fleet\ncell-1 http://10.0.0.1:8721/asg-status\n\n"
                     "cell-2=http://10.0.0.2:8721   # trailing comment\n"
                     "http://10.0.0.3:8721/\n/var/tmp/cell-4.json\n")
    targets = parse_targets(["z=http://127.0.0.1:9/asg-status"], [str(cells)])
    assert [(t.name, t.source) for t in targets] == [
        ("z", "http://127.0.0.1:9/asg-status"), ("cell-1", "http://10.0.0.1:8721/asg-status"),
        ("cell-2", "http://10.0.0.2:8721/asg-status"), ("10.0.0.3:8721", "http://10.0.0.3:8721/asg-status"),
        ("/var/tmp/cell-4.json", "/var/tmp/cell-4.json")]
    assert not targets[-1].is_url


@pytest.mark.parametrize(("agents", "message"), [
    ([], "no agents to audit"),
    (["a=http://x:1", "a=http://y:1"], "cells listed twice: a"),
    (["a http://x:1 extra"], "expected \\[NAME\\] URL\\|FILE"),
    (["http:///nohost"], "is not a URL"),
])
def test_bad_targets_are_named(agents: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_targets(agents, [])


class _Agent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code, body = {"/asg-status": (200, json.dumps(status({"a1": 7}))), "/broken": (500, "boom"),
                      "/text": (200, "not json")}.get(self.path, (404, ""))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetching_reports_each_failure_in_one_line(agent_url: str, tmp_path: Path) -> None:
    saved = tmp_path / "cell.json"
    saved.write_text(json.dumps(status({"f1": 7})))
    closed = HTTPServer(("127.0.0.1", 0), _Agent)
    dead = f"http://127.0.0.1:{closed.server_address[1]}/asg-status"
    closed.server_close()
    targets = parse_targets([f"ok={agent_url}", f"err={agent_url}/broken", f"text={agent_url}/text", f"dead={dead}",
                             f"file={saved}", f"nofile={tmp_path / 'missing.json'}"], [])
    answers = dict((t.name, a) for t, a in fetch_all(targets, timeout=5, parallel=4, fetch=fetch_status))
    assert answers["ok"]["containers"]["a1"]["dataset_version"] == 7
    assert answers["file"]["containers"]["f1"]["dataset_version"] == 7
    assert str(answers["err"]) == f"HTTP 500 from {agent_url}/broken"
    assert str(answers["text"]) == "answer is not JSON"
    assert str(answers["dead"]).startswith("cannot connect")
    assert "cannot read" in str(answers["nofile"])
    assert isinstance(answers["nofile"], InputError) and isinstance(answers["err"], UpstreamError)
    assert isinstance(answers["dead"], UpstreamError) and isinstance(answers["text"], UpstreamError)


def test_the_command_fails_cleanly_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["audit", "--policy-server-url", "https://127.0.0.1:1", "--ca-cert", str(tmp_path / "ca.pem"),
              "--client-cert", str(tmp_path / "c.pem"), "--client-key", str(tmp_path / "k.pem")]
    assert main(common) == 2  # the fleet view, from the policy server alone: its client cannot be made
    err = capsys.readouterr().err
    assert err.startswith("dynamic-asgs audit: error: ") and "Traceback" not in err and "ca.pem" in err
    empty = tmp_path / "agents.txt"
    empty.write_text("# no cells yet\n")
    assert main([*common, "--agents-file", str(empty)]) == 2
    assert capsys.readouterr().err == "dynamic-asgs audit: error: no agents to audit: give --agent URL or " \
                                      "--agents-file FILE\n"
    assert main([*common, "--agent", "http://127.0.0.1:1", "--wait-for", "current"]) == 2
    assert "read the policy server's fleet view" in capsys.readouterr().err
    assert main([*common, "--app", "a b"]) == 2
    assert "--app: 'a b' is not a GUID" in capsys.readouterr().err
    assert main([*common, "--agent", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynamic-asgs audit: error: ") and "Traceback" not in err and "ca.pem" in err
