"""The Grafana dashboard uses only metrics the daemons export, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.env import require_tools

DASHBOARD = Path(__file__).parents[2] / "dashboards" / "dynamic-asgs.json"

# Every metric class of every daemon, instantiated in a fresh interpreter (the policy server's
# register in the process-wide registry): sample names by family type.
_EXPORTED = """
import json
from prometheus_client import REGISTRY, CollectorRegistry
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.netmon.measure import NetmonMetrics
from dynamic_asgs.policy_server.api import ApiMetrics
from dynamic_asgs.policy_server.holder import HolderMetrics
from dynamic_asgs.syncer.metrics import SyncerMetrics
ApiMetrics(); HolderMetrics()
registries = {"agent": AgentMetrics().registry, "syncer": SyncerMetrics().registry,
              "netmon": NetmonMetrics().registry, "policy-server": REGISTRY}
suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""],
            "summary": ["_count", "_sum", ""]}
out = {}
for daemon, registry in registries.items():
    for family in registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue
        for suffix in suffixes[family.type]:
            out[family.name + suffix] = daemon
print(json.dumps(out))
"""

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def exported() -> dict[str, str]:
    """Sample name -> the daemon that exports it."""
    proc = subprocess.run([sys.executable, "-c", _EXPORTED], capture_output=True, text=True, check=True)
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or numbers)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)             # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                       # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)                      # range selectors
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if m.group(2) or m.group(1) in _KEYWORDS:
            continue                                            # a function or aggregation, or a keyword
        names.add(m.group(1))
    return names


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


def test_the_expression_parser_finds_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(asg_total_poll_seconds_bucket{kind="full"}[5m]))) '
            '+ on (instance) group_left time() - max without (job) (x_total offset 5m) or vector(0)')
    assert metric_names(expr) == {"asg_total_poll_seconds_bucket", "x_total"}


def test_every_metric_in_the_dashboard_is_exported_by_a_daemon() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = targets(dashboard)
    assert len(queries) > 20
    known = exported()
    used = {name: title for title, expr in queries for name in metric_names(expr)}
    missing = {name: title for name, title in used.items() if name not in known}
    assert not missing, f"dashboard queries metrics no daemon exports: {missing}"
    # Operators need every daemon on it: sync latency, enforce/cleanup times, rule counts, errors.
    assert {known[n] for n in used} == {"agent", "syncer", "netmon", "policy-server"}
    for needed in ("asg_sync_latency_seconds_bucket", "asg_iptables_enforce_seconds_bucket",
                   "asg_iptables_cleanup_seconds_bucket", "iptables_rules", "asg_restore_failures_total",
                   "security_groups_sync_failures_total"):
        assert needed in used


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    require_tools("promtool")
    queries = targets(json.loads(DASHBOARD.read_text()))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "rules.json"  # promtool reads YAML, and JSON is YAML
    path.write_text(json.dumps(rules))
    proc = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("key", ["title", "uid", "panels", "schemaVersion", "templating"])
def test_the_dashboard_is_a_grafana_dashboard(key: str) -> None:
    assert key in json.loads(DASHBOARD.read_text())
