"""A loggregator v2 ingress server (the cell's forwarder agent) that records what it receives.

It serves the real ``loggregator.v2.Ingress`` gRPC service with mutual TLS (client
certificates required, verified against the test CA) on 127.0.0.1, so the agent's
emitter is tested over the same wire as in a deployment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from dynamic_asgs.agent.loggregator import envelope_pb2, ingress_pb2, ingress_pb2_grpc
from dynamic_asgs.local.pki import Pki, make_pki

__all__ = ["Ingress", "ingress_pki", "ingress_server"]


class Ingress(ingress_pb2_grpc.IngressServicer):
    """Records every envelope; ``port`` and ``pki`` say how to reach it."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.port = 0
        self.envelopes: list[envelope_pb2.Envelope] = []
        self._lock = threading.Lock()

    def _record(self, envelopes: Any) -> None:
        with self._lock:
            self.envelopes.extend(envelopes)

    def Sender(self, request_iterator: Any, context: Any) -> ingress_pb2.IngressResponse:
        self._record(request_iterator)
        return ingress_pb2.IngressResponse()

    def BatchSender(self, request_iterator: Any, context: Any) -> ingress_pb2.BatchSenderResponse:
        for batch in request_iterator:
            self._record(batch.batch)
        return ingress_pb2.BatchSenderResponse()

    def Send(self, request: envelope_pb2.EnvelopeBatch, context: Any) -> ingress_pb2.SendResponse:
        self._record(request.batch)
        return ingress_pb2.SendResponse()

    def logs(self) -> list[tuple[str, str, str, dict[str, str]]]:
        """(source_id, instance_id, payload, tags) of every log envelope received so far."""
        with self._lock:
            return [(e.source_id, e.instance_id, e.log.payload.decode(), dict(e.tags)) for e in self.envelopes]


def ingress_pki(directory: Path) -> Pki:
    """A CA with a server certificate for ``metron`` (the name the agent expects) and a client one."""
    return make_pki(directory, name="loggregator", hosts=("metron", "127.0.0.1", "localhost"))


@contextmanager
def ingress_server(directory: Path, *, port: int = 0, pki: Pki | None = None) -> Iterator[Ingress]:
    """Serve ingress on loopback ``port`` (0: a free one) with ``pki`` or a fresh one, until exit."""
    pki = pki or ingress_pki(directory)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.server.ca.read_bytes(), require_client_auth=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ingress = Ingress(pki)
    ingress_pb2_grpc.add_IngressServicer_to_server(ingress, server)  # type: ignore[no-untyped-call]
    ingress.port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    try:
        yield ingress
    finally:
        server.stop(grace=None)
