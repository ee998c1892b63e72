"""``dynamic-asgs policy-server-asg-syncer``: the subcommand's flags; the daemon is :mod:`dynamic_asgs.syncer.main`.

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


def run(args: argparse.Namespace) -> int:
    """Start the syncer (see :mod:`dynamic_asgs.syncer.main`)."""
    from dynamic_asgs.syncer.main import run as start

    return start(args)
