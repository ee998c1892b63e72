"""The translate tool's behaviour for operators: output, warnings, and clear errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynamic_asgs.local import examples
from support.translate import internal_group, store_entry, translate

EXAMPLES = examples.DIRECTORY
GROUPS = {"security_groups": [internal_group("g", [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"},
                                                  {"protocol": "tcp", "destination": "10.0.0.x", "ports": "80"}],
                                             running_default=True)]}


def test_prints_save_format_with_one_section_per_family(tmp_path: Path) -> None:
    status, out, err = translate(tmp_path, GROUPS, store_entry("h1"))
    assert status == 0
    assert out.count("*filter") == 1 and out.count("COMMIT") == 1
    assert "-A asg-h1 -m comment --comment dasg:" in out
    assert "-A netout--h1 -m comment --comment dasg:" in out
    assert "rules[1]: destination: '10.0.0.x' is not an IP address (rule dropped" in err


def test_the_layout_is_the_agents_default_or_silks(tmp_path: Path) -> None:
    status, shared, _ = translate(tmp_path, GROUPS, store_entry("h1"))
    assert status == 0 and shared.count(":asgs-") == 1  # the group's chain, declared first
    chain = shared.split(":asgs-", 1)[1].split()[0]
    rule = f"-A asgs-{chain} -m comment --comment dasg:{chain} -m iprange -p tcp --dst-range 10.0.0.1-10.0.0.1"
    assert rule in shared
    assert f"-A asg-h1 -j asgs-{chain}" in shared and "-A asg-h1 -m iprange" not in shared
    status, silk, _ = translate(tmp_path, GROUPS, store_entry("h1"), "--layout", "per-container")
    assert status == 0 and "asgs-" not in silk and "-A asg-h1 -m iprange -p tcp --dst-range 10.0.0.1-10.0.0.1" in silk
    assert "1 accept rule(s)" in shared and "1 accept rule(s)" in silk  # the same count either way


def test_strict_refuses_invalid_rules(tmp_path: Path) -> None:
    status, out, err = translate(tmp_path, GROUPS, store_entry("h1"), "--strict")
    assert status == 2 and out == ""
    assert err.strip().endswith("error: 1 rule(s) failed validation (--strict)")


def test_container_without_space_gets_no_chain(tmp_path: Path) -> None:
    status, out, _ = translate(tmp_path, GROUPS, store_entry("h1", space=""))
    assert status == 0 and "has an empty space_id: no ASG chain" in out and "*filter" not in out


def test_whole_store_needs_a_handle_when_it_has_many(tmp_path: Path) -> None:
    store = {"a": store_entry("a"), "b": store_entry("b")}
    status, _, err = translate(tmp_path, GROUPS, store)
    assert status == 2 and "pick one with --handle" in err
    status, out, _ = translate(tmp_path, GROUPS, store, "--handle", "b")
    assert status == 0 and "-A asg-b " in out


def test_family_filter(tmp_path: Path) -> None:
    status, out, _ = translate(tmp_path, GROUPS, store_entry("h1"), "--family", "6")
    assert status == 0 and "*filter" not in out and "no IPv6 rules" in out


@pytest.mark.parametrize(
    ("groups_text", "flags", "message"),
    [
        ("{nope", [], "sg.json: not valid JSON: line 1 column 2"),
        ('{"foo": []}', [], "sg.json: not a security groups document"),
        ('{"resources": [{"guid": "g", "relationships": {"running_spaces": {"data": [{}]}}}]}', [],
         "has no guid"),
        ('{"security_groups": []}', ["--outbound-conn-limit", "fast"], "is not RATE:BURST"),
        ('{"security_groups": []}', ["--deny-networks-always", "10.0.0.0/99"], "is not a CIDR"),
        ('{"security_groups": []}', ["--denied-logs-per-sec", "0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, groups_text: str, flags: list[str], message: str) -> None:
    (tmp_path / "sg.json").write_text(groups_text)
    (tmp_path / "c.json").write_text(json.dumps(store_entry("h")))
    proc = subprocess.run(
        [sys.executable, "-m", "dynamic_asgs.cli", "translate", "--security-groups", str(tmp_path / "sg.json"),
         "--container", str(tmp_path / "c.json"), *flags], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert message in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "translate", "--security-groups",
                           str(tmp_path / "none.json"), "--container", str(EXAMPLES / "container.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"dynamic-asgs translate: error: {tmp_path / 'none.json'}: cannot read: " \
                                  "No such file or directory"


def test_yaml_input(tmp_path: Path) -> None:
    (tmp_path / "sg.yml").write_text("resources:\n- guid: g\n  name: n\n  globally_enabled: {running: true}\n"
                                     "  rules:\n  - {protocol: all, destination: 10.0.0.0/8}\n")
    (tmp_path / "c.json").write_text(json.dumps(store_entry("h")))
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "translate", "--security-groups",
                           str(tmp_path / "sg.yml"), "--container", str(tmp_path / "c.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "-m iprange --dst-range 10.0.0.0-10.255.255.255 --jump ACCEPT" in proc.stdout


@pytest.mark.parametrize(("field", "value"), [
    ("container_workload", "app\nCOMMIT\n*filter\n-A FORWARD -j ACCEPT"),
    ("space_id", "some-space\r\n*nat"), ("policy_group_id", "app\x00"), ("handle", "h1\n-A FORWARD -j ACCEPT"),
    ("log_config", '{"guid": "g\\n*raw"}'), ("ip", "fe80::1%\n"),
])
def test_a_store_entry_outside_its_grammar_is_refused_with_exit_2_and_prints_no_table(
        tmp_path: Path, field: str, value: str) -> None:
    entry = store_entry("h1")
    if field in ("handle", "ip"):
        entry[field] = value
    else:
        entry["metadata"][field] = value
    (tmp_path / "sg.json").write_text(json.dumps(GROUPS))
    (tmp_path / "c.json").write_text(json.dumps(entry))
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "translate", "--security-groups",
                           str(tmp_path / "sg.json"), "--container", str(tmp_path / "c.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "c.json: container" in lines[0] and field in lines[0], lines
