"""``promtool check metrics`` accepts every daemon's /metrics, scraped from real running processes.

cc-stub -> syncer -> policy server (two workers: multiprocess metrics) -> agent on a legacy
cell, and netmon inside the cell's namespace. Each daemon is scraped once it has done real
work (labelled series exist), and besides promtool's lint every family must have a HELP
text and the type its name promises (the Go metrics' mapping of DESIGN.md §3.7).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import requests

from support.cell import cell
from support.daemons import free_port, start_cc_stub, start_policy_server, start_syncer, wait_for
from support.env import require_backend, require_tools
from support.netmon import start_netmon
from support.stack import asg, start_agent, store_add

#: The Go metrics' Prometheus names and types (DESIGN.md §3.7), by daemon.
EXPECTED = {
    "agent": {"asg_iptables_enforce_seconds": "histogram", "asg_iptables_cleanup_seconds": "histogram",
              "asg_total_poll_seconds": "histogram", "container_metadata_seconds": "histogram",
              "policy_server_asg_poll_seconds": "histogram", "asg_cycles": "counter", "asg_containers_lagging": "gauge",
              "asg_sync_latency_seconds": "histogram"},
    "syncer": {"security_groups_retrieval_from_cc_seconds": "histogram",
               "security_groups_total_sync_seconds": "histogram",
               "security_groups_store_replace_seconds": "histogram", "security_groups_polls": "counter"},
    "policy-server": {"internal_security_groups_request_seconds": "histogram",
                      "policy_server_dataset_version": "gauge"},
    "netmon": {"iptables_rules": "gauge", "net_interfaces": "gauge", "overlay_rx_bytes": "counter",
               "overlay_tx_bytes": "counter", "overlay_rx_dropped": "counter", "overlay_tx_dropped": "counter",
               "netmon_measurement_errors": "counter"},
}


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Each daemon's /metrics text, once it has worked."""
    require_tools("promtool")
    require_backend("legacy")
    tmp_path = tmp_path_factory.mktemp("promtool")
    database = {"type": "sqlite", "database_name": str(tmp_path / "policy.db")}
    tcp = {"protocol": "tcp", "destination": "198.18.0.10", "ports": "80"}
    with ExitStack() as stack:
        stub = start_cc_stub(tmp_path, [asg("web", [tcp], running=["s1"])])
        stack.callback(stub.daemon.stop)
        syncer_port, policy_port = free_port(), free_port()
        syncer = start_syncer(tmp_path, stub, database, asg_poll_interval_seconds=1, metrics_port=syncer_port)
        stack.callback(syncer.stop)
        wait_for(lambda: syncer.events("sync-complete"), timeout=60, what="the syncer's first sync")
        policy = start_policy_server(tmp_path, database, workers=2, metrics_port=policy_port)
        stack.callback(policy.daemon.stop)
        the_cell = stack.enter_context(cell("legacy", tmp_path))
        store = tmp_path / "store.json"
        the_cell.add_container("p1")
        the_cell.hook("p1")
        store_add(store, the_cell, "p1", space="s1")
        agent = start_agent(tmp_path, the_cell, policy, store)
        stack.callback(agent.daemon.stop)
        netmon = start_netmon(the_cell.ns, tmp_path / "netmon", backend="legacy", interface_name="underlay0")
        stack.callback(netmon.daemon.stop)

        wait_for(lambda: 'asg_cycles_total{kind="full",result="ok"}' in agent.metrics(), timeout=60,
                 what="the agent's first cycle")
        assert agent.force_cleanup("gone").status_code == 200  # a cleanup observation too
        wait_for(lambda: 'security_groups_polls_total{outcome=' in scrape(syncer_port), what="a syncer poll")
        wait_for(lambda: 'internal_security_groups_request_seconds_count{' in scrape(policy_port),
                 what="a policy-server request in the metrics")
        yield {"agent": agent.metrics(), "syncer": scrape(syncer_port), "policy-server": scrape(policy_port),
               "netmon": netmon.text()}


@pytest.mark.parametrize("daemon", sorted(EXPECTED))
def test_promtool_accepts_the_metrics(outputs: dict[str, str], daemon: str) -> None:
    text = outputs[daemon]
    proc = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=text,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        f"promtool on {daemon}'s metrics:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("daemon", sorted(EXPECTED))
def test_every_family_has_help_and_the_expected_type(outputs: dict[str, str], daemon: str) -> None:
    text = outputs[daemon]
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert types and set(helps) == set(types), f"families without HELP: {set(types) - set(helps)}"
    assert all(h.strip() for h in helps.values()), "empty HELP text"
    for name, kind in EXPECTED[daemon].items():
        declared = f"{name}_total" if kind == "counter" else name  # text format 0.0.4 names counters with _total
        assert types.get(declared) == kind, f"{daemon}: {name} should be a {kind}, is {types.get(declared)}"
    assert all(n.endswith("_total") for n, k in types.items() if k == "counter")
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for sample in samples:
        base = re.sub(r"_(bucket|count|sum)$", "", sample)
        assert sample in types or types.get(base) in ("histogram", "summary"), \
            f"{daemon}: sample {sample} has no TYPE line of its own"
