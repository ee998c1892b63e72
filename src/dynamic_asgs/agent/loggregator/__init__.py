"""App-visible log lines through loggregator v2 ingress (gRPC with mutual TLS).

``envelope_pb2`` / ``ingress_pb2`` / ``ingress_pb2_grpc`` are generated from the
``.proto`` files here with ``python -m grpc_tools.protoc -Isrc --python_out=src
--grpc_python_out=src src/dynamic_asgs/agent/loggregator/{envelope,ingress}.proto``
(grpcio-tools, see pyproject's ``dev`` extra).
"""

from dynamic_asgs.agent.loggregator.emitter import AppLogEmitter

__all__ = ["AppLogEmitter"]
