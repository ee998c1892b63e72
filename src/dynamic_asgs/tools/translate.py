"""``dynamic-asgs translate``: what iptables rules will this container get?

Reads a security groups document (a CC ``/v3/security_groups`` listing or a policy
server answer; JSON or YAML) and one container store entry, and prints the
container's chains in ``iptables-save`` format, one ``*filter`` section per
family that has rules: exactly what the agent writes, hash comments included, in the
agent's default ``shared`` layout (the shared chains first) or, with ``--layout
per-container``, in silk's.
A store entry whose values do not match their grammar (:mod:`dynamic_asgs.asg.grammar`)
is refused with exit 2, and every line, comments too, comes from the renderer, which
refuses any token that could leave its line (issue 13: a newline in a workload once
printed a second table section).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from dynamic_asgs.asg.model import SecurityGroup
from dynamic_asgs.asg.parse import parse_container, parse_groups_document
from dynamic_asgs.asg.translate import (
    ChainLayout,
    ChainSettings,
    ConnLimit,
    ContainerChains,
    DenyNetworks,
    plan_container,
)
from dynamic_asgs.errors import InputError, ValidationError
from dynamic_asgs.iptables.render import content_hash, family_lines, remark

__all__ = ["add_arguments", "read_document", "render_save", "run", "settings_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--security-groups", required=True, metavar="SG.json",
                        help="CC /v3/security_groups listing or policy-server answer (JSON or YAML)")
    parser.add_argument("--container", required=True, metavar="C.json",
                        help="one container metadata store entry (or a store with --handle)")
    parser.add_argument("--handle", help="pick this entry when --container is a whole store.json")
    for kind in ("always", "running", "staging"):
        parser.add_argument(f"--deny-networks-{kind}", default="", metavar="CIDR,...",
                            help=f"deny networks for {kind} (IPv4 and IPv6 CIDRs)")
    parser.add_argument("--asg-logging", action="store_true", help="log every accepted flow and denials")
    parser.add_argument("--denied-logs-per-sec", type=int, default=1, metavar="N")
    parser.add_argument("--accepted-udp-logs-per-sec", type=int, default=100, metavar="N")
    parser.add_argument("--outbound-conn-limit", metavar="RATE:BURST",
                        help="limit new outbound TCP connections per second (silk's outbound_connections)")
    parser.add_argument("--outbound-conn-logging", action="store_true",
                        help="log connections refused by the outbound limit")
    parser.add_argument("--layout", choices=[str(layout) for layout in ChainLayout], default=str(ChainLayout.SHARED),
                        help="the agent's asg_chain_layout (default: shared; per-container is silk's layout)")
    parser.add_argument("--family", choices=("4", "6"), help="print only this family (to pipe into a restore)")
    parser.add_argument("--strict", action="store_true", help="exit 2 if any rule fails validation")


def read_document(path: str) -> Any:
    """Read a JSON (or, by extension, YAML) file; errors name the file and the position."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.endswith((".yml", ".yaml")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def _networks(flag: str, value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise InputError(f"--deny-networks-{flag}: {item!r} is not a CIDR") from None
    return tuple(nets)


def settings_from_args(args: argparse.Namespace) -> ChainSettings:
    """The chain settings the flags describe."""
    limit = None
    if args.outbound_conn_limit:
        rate, sep, burst = args.outbound_conn_limit.partition(":")
        if not (sep and rate.isdigit() and burst.isdigit() and int(rate) > 0 and int(burst) > 0):
            raise InputError(f"--outbound-conn-limit: {args.outbound_conn_limit!r} is not RATE:BURST "
                             "(two positive integers)")
        limit = ConnLimit(int(rate), int(burst), args.outbound_conn_logging)
    for flag in ("denied_logs_per_sec", "accepted_udp_logs_per_sec"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')}: must be at least 1")
    return ChainSettings(
        deny_networks=DenyNetworks(
            always=_networks("always", args.deny_networks_always),
            running=_networks("running", args.deny_networks_running),
            staging=_networks("staging", args.deny_networks_staging),
        ),
        asg_logging=args.asg_logging,
        denied_logs_per_sec=args.denied_logs_per_sec,
        accepted_udp_logs_per_sec=args.accepted_udp_logs_per_sec,
        conn_limit=limit,
        layout=ChainLayout(args.layout),
    )


def _container_entry(doc: Any, handle: str | None, path: str) -> tuple[Any, str | None]:
    if isinstance(doc, dict) and "handle" not in doc and doc and all(isinstance(v, dict) for v in doc.values()):
        if handle is None:
            if len(doc) != 1:
                raise InputError(f"{path}: a store with {len(doc)} containers: pick one with --handle")
            handle = next(iter(doc))
        if handle not in doc:
            raise InputError(f"{path}: no container with handle {handle!r}")
        return doc[handle], handle
    return doc, handle


def render_save(plan: ContainerChains, groups: list[SecurityGroup], family: str | None) -> str:
    """The ``iptables-save``-format text for ``plan``."""
    c = plan.container
    out = [
        remark(f"dynamic-asgs translate: container {c.handle} (app {c.app_guid or '-'}, "
               f"space {c.space_id}, workload {c.raw_workload or '-'})"),
        remark(f"{plan.rule_count} accept rule(s) from {len(groups)} security group(s) in the input"),
    ]
    for fam in plan.families:
        if family and str(fam.version) != family:
            continue
        tool = "iptables-restore" if fam.version == 4 else "ip6tables-restore"
        out += [remark(f"IPv{fam.version} (ruleset {content_hash(fam)}): load with {tool} --noflush"),
                "*filter", *family_lines(fam), "COMMIT"]
    if family == "6" and plan.v6 is None:
        out.append(remark("no IPv6 rules for this container"))
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    """Print the chains of one container; warnings for dropped rules go to stderr."""
    settings = settings_from_args(args)
    try:
        groups = parse_groups_document(read_document(args.security_groups))
    except ValidationError as exc:
        raise InputError(f"{args.security_groups}: {exc}") from None
    entry, handle = _container_entry(read_document(args.container), args.handle, args.container)
    try:
        container = parse_container(entry, handle=handle)
    except ValidationError as exc:
        raise InputError(f"{args.container}: {exc}") from None
    dropped = [err for g in groups for err in g.invalid_rules]
    for err in dropped:
        print(f"dynamic-asgs translate: warning: {err} (rule dropped: it grants nothing)", file=sys.stderr)
    if dropped and args.strict:
        raise InputError(f"{len(dropped)} rule(s) failed validation (--strict)")
    plan = plan_container(container, groups, settings)
    if plan is None:
        reason = "has no policy_group_id (not an app container)" if not container.policy_group_id \
            else "has an empty space_id"
        sys.stdout.write(remark(f"dynamic-asgs translate: container {container.handle} {reason}: no ASG chain") + "\n")
        return 0
    try:
        text = render_save(plan, groups, args.family)
    except ValidationError as exc:  # the renderer refused a token: nothing is printed
        raise InputError(f"{args.container}: {exc}") from None
    sys.stdout.write(text)
    return 0
