"""The app-log emitter against a real loggregator v2 ingress gRPC server with mutual TLS."""

from __future__ import annotations

import io
import json
from pathlib import Path

from dynamic_asgs.agent.loggregator import AppLogEmitter
from dynamic_asgs.asg.model import Container, Workload
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.pki import make_pki
from support.daemons import free_port, wait_for
from support.ingress import Ingress, ingress_pki, ingress_server

MESSAGE = "Security group rules were updated"
APP = Container(handle="h1", ip="10.255.0.2", policy_group_id="app-1", space_id="s1", workload=Workload.APP,
                app_guid="app-1", log_source="CELL", log_index="3", log_tags=(("app_name", "web"),))


def emitter(ingress: Ingress, log: io.StringIO, *, client_dir: Path | None = None, port: int = 0) -> AppLogEmitter:
    pki = ingress.pki if client_dir is None else make_pki(client_dir, name="other")
    return AppLogEmitter(address=f"127.0.0.1:{port or ingress.port}", ca_file=ingress.pki.server.ca,
                         cert_file=pki.client.cert, key_file=pki.client.key, logger=Logger("test", stream=log),
                         timeout=2)


def test_the_message_reaches_the_app_stream_with_its_log_config(tmp_path: Path) -> None:
    log = io.StringIO()
    with ingress_server(tmp_path) as ingress:
        e = emitter(ingress, log)
        e.emit(APP, MESSAGE)
        e.emit(Container(handle="task", ip="10.255.0.3", policy_group_id="", space_id="s1",
                         workload=Workload.TASK), MESSAGE)  # no app guid: nobody to tell
        e.close()
        assert ingress.logs() == [("app-1", "3", MESSAGE, {"app_name": "web", "source_type": "CELL"})]
    assert e.sent == 1 and e.dropped == 0


def test_a_client_certificate_from_another_ca_is_refused_and_counted(tmp_path: Path) -> None:
    log = io.StringIO()
    with ingress_server(tmp_path / "server") as ingress:
        e = emitter(ingress, log, client_dir=tmp_path / "other")
        e.emit(APP, MESSAGE)
        e.close()
        assert ingress.logs() == []
    assert e.sent == 0 and e.dropped == 1
    errors = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["message"] for line in errors] == ["test.loggregator.send-failed"]


def test_an_outage_drops_and_logs_once_then_recovers(tmp_path: Path) -> None:
    log = io.StringIO()
    pki, port = ingress_pki(tmp_path), free_port()
    e = AppLogEmitter(address=f"127.0.0.1:{port}", ca_file=pki.server.ca, cert_file=pki.client.cert,
                      key_file=pki.client.key, logger=Logger("test", stream=log), timeout=2)
    for n in range(1, 4):  # nothing listens on `port` yet
        e.emit(APP, MESSAGE)
        wait_for(lambda n=n: e.dropped == n, what=f"{n} dropped envelopes")
    with ingress_server(tmp_path, port=port, pki=pki) as ingress:
        def delivered() -> bool:
            e.emit(APP, MESSAGE)  # the channel reconnects with backoff: keep offering lines
            return bool(ingress.logs())

        wait_for(delivered, timeout=30, interval=0.5, what="delivery after the outage")
        e.close()
    messages = [json.loads(line)["message"] for line in log.getvalue().splitlines()]
    assert messages == ["test.loggregator.send-failed", "test.loggregator.send-recovered"], \
        "one error per outage, not one per envelope, then one recovery"
