"""``dynamic-asgs policy-server``: the subcommand's flags; the daemon is :mod:`dynamic_asgs.policy_server.server`.

Only argparse is imported here: the CLI imports every subcommand's module to build its
parser, and the daemon's dependencies (uvicorn, SQLAlchemy, ...) would otherwise slow down
every ``dynamic-asgs`` invocation. :func:`run` imports the daemon when it is started.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's flags."""
    parser.add_argument("--config-file", required=True, help="path to the JSON configuration")
    parser.add_argument("--migrate-only", action="store_true", help="migrate the DB schema and exit")


def run(args: argparse.Namespace) -> int:
    """Start the policy server (see :mod:`dynamic_asgs.policy_server.server`)."""
    from dynamic_asgs.policy_server.server import run as start

    return start(args)
