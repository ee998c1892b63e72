"""``dynamic-asgs``: the one entry point; one subcommand per daemon and tool.

This is the composition root: each subcommand's module provides
``add_arguments(parser)`` and ``run(args) -> int``; errors of the project's own
kinds become a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dynamic_asgs import __version__
from dynamic_asgs.errors import DynamicASGsError

__all__ = ["COMMANDS", "main"]

#: name -> (module providing add_arguments/run, or None while not built yet; help text)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "policy-server": ("dynamic_asgs.policy_server.command",
                      "daemon: serve the internal security-groups API to cells (mTLS)"),
    "policy-server-asg-syncer": ("dynamic_asgs.syncer.command",
                                 "daemon: copy Cloud Controller's ASGs into the policy DB"),
    "vxlan-policy-agent": ("dynamic_asgs.agent.command", "daemon (one per cell): enforce ASGs on running containers"),
    "netmon": ("dynamic_asgs.netmon.command", "daemon (one per cell): iptables rule counts and overlay metrics"),
    "translate": ("dynamic_asgs.tools.translate", "tool: print the iptables chains a container gets"),
    "audit": ("dynamic_asgs.tools.audit", "tool: is the current ASG dataset enforced in every container of the fleet?"),
    "local": ("dynamic_asgs.local.command", "local: the whole system on this machine (up, down, status, exec)"),
    "cc-stub": ("dynamic_asgs.local.cc_stub.command", "local: Cloud Controller + UAA stand-in (tests, local env)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamic-asgs",
        description="Dynamic Application Security Groups for Cloud Foundry.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if module is None:
            cmd.add_argument("--config-file", help="path to the JSON configuration")
        else:
            importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    module, _ = COMMANDS[args.command]
    if module is None:
        print(f"dynamic-asgs {args.command}: not built yet", file=sys.stderr)
        return 2
    try:
        status: int = importlib.import_module(module).run(args)
    except DynamicASGsError as exc:
        print(f"dynamic-asgs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
