"""Send "Security group rules were updated" to an app's log stream.

The agent talks to the cell's local loggregator agent (metron / forwarder agent)
through the v2 ``Ingress.Send`` RPC with mutual TLS, as silk's agent does with
go-loggregator: ``source_id`` is the app guid, ``instance_id`` the instance index,
``source_type`` and the other tags come from the container's ``log_config``.
Emitting never blocks an enforcement cycle: envelopes go to a bounded queue that
a background thread sends in batches; when loggregator is down they are counted
and dropped, and the failure is logged once per outage.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from pathlib import Path

import grpc

from dynamic_asgs.agent.loggregator import envelope_pb2, ingress_pb2_grpc
from dynamic_asgs.asg.model import Container
from dynamic_asgs.lager import Logger

__all__ = ["AppLogEmitter"]

_BATCH = 100


class AppLogEmitter:
    """Queue app log lines and send them to loggregator v2 ingress over mutual TLS."""

    def __init__(
        self,
        *,
        address: str,
        ca_file: str | Path,
        cert_file: str | Path,
        key_file: str | Path,
        logger: Logger,
        server_name: str = "metron",
        timeout: float = 5.0,
        queue_size: int = 10_000,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca_file).read_bytes(),
            private_key=Path(key_file).read_bytes(),
            certificate_chain=Path(cert_file).read_bytes(),
        )
        self._channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", server_name)]
        )
        self._stub = ingress_pb2_grpc.IngressStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._log = logger.session("loggregator")
        self._queue: queue.Queue[envelope_pb2.Envelope | None] = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self.dropped = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="loggregator-emitter", daemon=True)
        self._thread.start()

    def emit(self, container: Container, message: str) -> None:
        """Queue ``message`` for ``container``'s app log stream; never blocks."""
        if not container.app_guid:
            return
        envelope = envelope_pb2.Envelope(
            timestamp=time.time_ns(),
            source_id=container.app_guid,
            instance_id=container.log_index,
            log=envelope_pb2.Log(payload=message.encode(), type=envelope_pb2.Log.OUT),
        )
        envelope.tags.update(dict(container.log_tags))
        envelope.tags["source_type"] = container.log_source or "CELL"
        try:
            self._queue.put_nowait(envelope)
        except queue.Full:
            self.dropped += 1

    def _send(self, batch: list[envelope_pb2.Envelope]) -> None:
        try:
            self._stub.Send(envelope_pb2.EnvelopeBatch(batch=batch), timeout=self._timeout)
        except grpc.RpcError as exc:
            self.dropped += len(batch)
            if not self._failing:
                self._log.error("send-failed", f"{exc.code().name}: {exc.details()}", {"dropped": len(batch)})
            self._failing = True
            return
        if self._failing:
            self._log.info("send-recovered")
        self._failing = False
        self.sent += len(batch)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send(batch)
                    return
                batch.append(more)
            self._send(batch)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then close the channel."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._channel.close()
