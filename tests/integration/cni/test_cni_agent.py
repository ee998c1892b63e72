"""The chain ptp -> dynamic-asgs-cni with a real agent and a real policy server.

ADD records the container, creates its netout chain and hook, and the agent's forced
sync writes its ASG chain at once (real traffic shows the ASG enforced); CHECK passes;
DEL removes the store entry, every chain and the hook, and is idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dynamic_asgs.asg import chains
from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.cell import Cell
from support.cni import CniCell, write_wrappers
from support.daemons import Daemon, database, database_config, free_port, start_policy_server, wait_for

RULES = [{"protocol": "tcp", "destination": "198.18.1.1", "ports": "8080"}]
META = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app",
        "log_config": json.dumps({"guid": "app-1", "index": 0, "source_name": "CELL", "tags": {}})}


@pytest.fixture
def agent_address(the_cell: Cell, tmp_path: Path) -> Iterator[str]:
    """A policy server with one group bound to space-1, and an agent on the cell's table."""
    with database("sqlite", tmp_path / "db") as db:
        engine = create_engine(db)
        upgrade(engine)
        PolicyStore(engine).replace([GroupRow("g1", "web", json.dumps(RULES), False, False, (), ("space-1",))],
                                    cc_last_update=None)
        engine.dispose()
        server = start_policy_server(tmp_path, database_config(db), workers=1)
        try:
            force = free_port()
            cert, key = server.client_cert()
            config = tmp_path / "agent.json"
            config.write_text(json.dumps({
                "policy_server_url": server.url, "ca_cert_file": str(server.pki.ca.cert_path),
                "client_cert_file": cert, "client_key_file": key,
                "cni_datastore_path": str(tmp_path / "cni" / "container-metadata" / "store.json"),
                "iptables_lock_file": str(the_cell.lock_file), "asg_blocking_wait": 0,
                "force_policy_poll_cycle_port": force, "debug_server_port": free_port(), "metrics_port": 0,
                **write_wrappers(tmp_path / "agent-bin", the_cell.ns),
            }))
            agent = Daemon(["vxlan-policy-agent", "--config-file", str(config)], tmp_path / "agent.log")
            try:
                url = f"http://127.0.0.1:{force}/force-asgs-for-container"
                wait_for(lambda: requests.get(url, timeout=2).status_code == 400, timeout=30,
                         what="the agent's force endpoint")
                yield f"127.0.0.1:{force}"
            finally:
                agent.stop()
        finally:
            server.daemon.stop()


def test_add_syncs_through_the_agent_and_del_removes_everything(the_cell: Cell, tmp_path: Path,
                                                                agent_address: str) -> None:
    c = CniCell(the_cell, tmp_path / "cni", agent_address)
    the_cell.add_destination("web", ["198.18.1.1"], tcp=[8080, 9090])
    h = "5fa0c0de-1111-4e2f-9aaa-0123456789ab"
    netout, asg = chains.netout_chain_name(h), chains.asg_chain_name(h)

    result = c.add(h, metadata=META)
    assert result.returncode == 0, (result.output, result.stderr)
    assert result.output == {**c.ptp_results[h], "cniVersion": "1.0.0"}
    ip = c.ptp_results[h]["ips"][0]["address"].split("/")[0]
    assert c.store_entries()[h] == {"handle": h, "ip": ip, "metadata": META}
    assert f"-A FORWARD -s {ip}/32 -o underlay0 -j {netout}" in the_cell.save(4)
    parent = the_cell.rules(4, netout)
    assert parent[0].endswith(f"-j {asg}") and parent[1].endswith("-j REJECT --reject-with icmp-port-unreachable")
    assert any("--dst-range 198.18.1.1-198.18.1.1" in r and "--dport 8080 -j ACCEPT" in r
               for r in the_cell.enforced(4, asg))
    assert the_cell.probe(h, "tcp", "198.18.1.1", 8080, timeout=5) == "ok"
    assert the_cell.probe(h, "tcp", "198.18.1.1", 9090) == "refused"
    assert c.run("CHECK", h).returncode == 0

    gone = c.delete(h)
    assert gone.returncode == 0 and gone.output is None, (gone.output, gone.stderr)
    assert h not in c.store_entries()
    saved = the_cell.save(4)
    assert netout not in saved and asg not in saved
    again = c.run("DEL", h)
    assert again.returncode == 0, again.output
