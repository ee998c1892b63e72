"""``dynamic-asgs local up|down|status|exec``: the whole system on this machine (see :mod:`.environment`)."""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path
from typing import Any

from dynamic_asgs.errors import DynamicASGsError
from dynamic_asgs.local import topology
from dynamic_asgs.local.environment import SPACES, LocalEnv
from dynamic_asgs.signals import stop_on_signals

__all__ = ["add_arguments", "run"]

DEFAULT_STATE = "state/local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's actions and flags."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start everything; Ctrl-C (or `local down`) stops and removes it")
    up.add_argument("--asgs", type=Path, help="security groups file, edits picked up live (default: a copy of "
                    "the package's local/examples/asgs.yml in the state dir)")
    up.add_argument("--containers", type=int, default=3, help="app containers on the cell (default 3)")
    up.add_argument("--backend", choices=("legacy", "nft"), default="legacy", help="iptables backend of the cell")
    down = actions.add_parser("down", help="stop and remove every process, namespace and file of `local up`")
    status = actions.add_parser("status", help="per container: space, workload, rules, ruleset, applied at")
    status.add_argument("--json", action="store_true", help="print JSON")
    run_in = actions.add_parser("exec", help="run a command in a container's network namespace")
    run_in.add_argument("container", help="container name (c1, c2, ...)")
    run_in.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    for action in (up, down, status, run_in):
        action.add_argument("--state-dir", default=DEFAULT_STATE, help=f"where configs, logs and state live "
                            f"(default {DEFAULT_STATE})")


def run(args: argparse.Namespace) -> int:
    """Dispatch one action; errors are DynamicASGsError (exit 2, one clear line)."""
    env = LocalEnv(args.state_dir)
    if args.action == "up":
        return _up(env, args)
    if args.action == "down":
        problems = env.load().stop()
        for problem in problems:
            print(f"dynamic-asgs local down: {problem}")
        print(f"local environment in {env.dir} removed" + (" (with the problems above)" if problems else ""))
        return 1 if problems else 0
    if args.action == "status":
        _print_status(env.load().status(), as_json=args.json)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise DynamicASGsError("local exec: give a command after --, e.g. local exec c1 -- curl -sS 10.10.10.5:5432")
    ns = env.load().container_ns(args.container)
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])
    return 0  # not reached


def _up(env: LocalEnv, args: argparse.Namespace) -> int:
    if args.containers < 1:
        raise DynamicASGsError(f"--containers {args.containers}: must be at least 1")
    stop = threading.Event()
    stop_on_signals(stop)
    print(f"starting the local environment in {env.dir} ...", flush=True)
    env.up(asgs=args.asgs, containers=args.containers, backend=args.backend)
    print(_banner(env), flush=True)
    stop.wait()
    print("stopping ...", flush=True)
    problems = env.load().down()
    for problem in problems:
        print(f"dynamic-asgs local: {problem}")
    print("local environment removed")
    return 1 if problems else 0


def _banner(env: LocalEnv) -> str:
    s, p = env.state, env.state.ports
    lines = [f"dynamic-asgs local environment is up (state, configs and logs: {env.dir})", "",
             "processes (logs in logs/<name>.log):",
             f"  cc-stub             https://127.0.0.1:{p.cc_public} (ASGs from {s.asgs})",
             "  syncer              polls the stand-in every 1 s",
             f"  policy-server       https://127.0.0.1:{p.policy_server} (mTLS), "
             f"health http://127.0.0.1:{p.policy_health}/health",
             f"  vxlan-policy-agent  status http://127.0.0.1:{p.agent_debug}/asg-status, "
             f"metrics http://127.0.0.1:{p.agent_metrics}/metrics",
             f"  netmon              in {s.cell}: ip netns exec {s.cell} curl -s "
             f"127.0.0.1:{p.netmon_metrics}/metrics", "",
             f"cell namespace {s.cell} ({s.backend} iptables); containers:"]
    for name, c in s.containers.items():
        lines.append(f"  {name:<4} {c.ip or '-':<14} space {c.space:<10} namespace {c.ns}")
    lines += ["", f"services in namespace {s.dest}:"]
    for svc in topology.SERVICES:
        ports = ", ".join([f"tcp {x}" for x in svc.tcp] + [f"udp {x}" for x in svc.udp])
        lines.append(f"  {svc.name:<15} {svc.address:<11} {ports}")
    payments = next(n for n, c in s.containers.items() if c.space == SPACES[0][0])
    other = next((n for n, c in s.containers.items() if c.space != SPACES[0][0]), payments)
    lines += ["", "try it:",
              f"  dynamic-asgs local exec {payments} -- nc -zv -w 2 10.10.10.5 5432   # open: payments-db is bound "
              "to space payments",
              f"  dynamic-asgs local exec {other} -- nc -zv -w 2 10.10.10.5 5432   # refused: not bound to "
              f"{s.containers[other].space}",
              f"  edit {s.asgs} (e.g. add {SPACES[1][1]} to payments-db's running_spaces),",
              "  then run the second command again: the change is enforced within seconds, no restart",
              "  dynamic-asgs local status", "",
              f"Ctrl-C here, or `dynamic-asgs local down --state-dir {env.dir}`, stops and removes everything."]
    return "\n".join(lines)


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    print(f"dataset version {status['dataset_version']} (changed at {status['dataset_changed_at']})")
    print(f"{'container':<10}{'ip':<14}{'space':<11}{'workload':<10}{'rules':>6}  {'ruleset':<18}{'version':>8}"
          f"  applied at")
    for name, c in status["containers"].items():
        print(f"{name:<10}{c['ip'] or '-':<14}{c['space']:<11}{c['workload'] or '-':<10}"
              f"{c['rule_count'] if c['rule_count'] is not None else '-':>6}  {(c['ruleset'] or '-')[:16]:<18}"
              f"{c['dataset_version'] if c['dataset_version'] is not None else '-':>8}  {c['applied_at'] or '-'}")
    down = [n for n, alive in status["processes"].items() if not alive]
    if down:
        print(f"not running: {', '.join(down)} (see logs/<name>.log)")
