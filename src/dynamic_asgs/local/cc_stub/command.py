"""``dynamic-asgs cc-stub``: the subcommand's flags; the stand-in is :mod:`dynamic_asgs.local.cc_stub.cli`.

Only argparse is imported here: the CLI imports every subcommand's module to build its
parser, and the daemon's dependencies (uvicorn, SQLAlchemy, ...) would otherwise slow down
every ``dynamic-asgs`` invocation. :func:`run` imports the daemon when it is started.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's flags."""
    parser.add_argument("--asgs", required=True,
                        help="security groups file (YAML or JSON; see local/examples/asgs.yml)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the public and internal ports")
    parser.add_argument("--port", type=int, default=9022, help="public TLS port: UAA token + CC v3 API")
    parser.add_argument("--internal-port", type=int, default=9023, help="CC internal API port (mutual TLS)")
    parser.add_argument("--control-port", type=int, default=9024, help="fault switches and stats (127.0.0.1)")
    parser.add_argument("--cert", help="server certificate (PEM) for both TLS ports")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument("--ca", help="CA that signs accepted client certificates on the internal port")
    parser.add_argument("--pki-dir", help="generate (or reuse) a CA and certificates here instead")
    parser.add_argument("--client-id", default="network-policy", help="UAA client accepted by the token endpoint")
    parser.add_argument("--client-secret-file", help="file holding the UAA client secret "
                        "(default: the secret 'network-policy-secret')")
    parser.add_argument("--token-ttl", type=int, default=3600, help="lifetime of issued tokens, seconds")
    parser.add_argument("--ports-file", help="write the bound ports here as JSON")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "error"])


def run(args: argparse.Namespace) -> int:
    """Start the CC stand-in (see :mod:`dynamic_asgs.local.cc_stub.cli`)."""
    from dynamic_asgs.local.cc_stub.cli import run as start

    return start(args)
