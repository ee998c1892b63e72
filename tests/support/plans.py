"""Build security groups, containers and their planned chains from compact test descriptions."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg.model import Container, SecurityGroup, Workload
from dynamic_asgs.asg.parse import parse_groups_document
from dynamic_asgs.asg.translate import ChainLayout, ChainSettings, ContainerChains, GroupIndex, plan_container
from dynamic_asgs.iptables.render import HASH_RE
from dynamic_asgs.iptables.runner import Runner
from dynamic_asgs.lager import Logger


def groups_for(spaces: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[SecurityGroup]:
    """One running security group per space, holding ``rules`` (CC's JSON rule objects)."""
    doc = {"security_groups": [
        {"guid": f"sg-{space}", "name": f"sg-{space}", "rules": json.dumps(list(rules)), "staging_default": False,
         "running_default": False, "staging_space_guids": [], "running_space_guids": [space]}
        for space, rules in spaces.items()]}
    return parse_groups_document(doc)


def container(handle: str, space: str, *, index: int = 1, workload: str = "app") -> Container:
    return Container(handle=handle, ip=f"10.255.{index}.2", policy_group_id="app-guid", space_id=space,
                     workload=Workload.of(workload), raw_workload=workload, ipv6=f"fd00:255:{index}::2")


#: The layout the agent daemon uses unless configured (``asg_chain_layout``): tests of the real daemon plan in it.
AGENT_LAYOUT = ChainLayout.SHARED
_layout: ChainLayout | None = None


@contextlib.contextmanager
def layout(chosen: ChainLayout) -> Iterator[None]:
    """Plan every container with ``chosen`` layout (suites that run under both layouts)."""
    global _layout
    _layout = chosen
    try:
        yield
    finally:
        _layout = None


def current_layout() -> str | None:
    """The layout :func:`layout` chose, if any (to pass to a process that plans too)."""
    return None if _layout is None else str(_layout)


def plan(c: Container, groups: GroupIndex | Sequence[SecurityGroup],
         settings: ChainSettings | None = None) -> ContainerChains:
    """``c``'s chains; in the layout :func:`layout` chose, if any, else the one ``settings`` say."""
    settings = settings or ChainSettings()
    if _layout is not None:
        settings = dataclasses.replace(settings, layout=_layout)
    planned = plan_container(c, groups, settings)
    assert planned is not None
    return planned


def dataplane(runners: Mapping[int, Runner], **kw: Any) -> tuple[Dataplane, io.StringIO]:
    """A Dataplane logging (at debug) into a buffer the test can read."""
    log = io.StringIO()
    return Dataplane(runners=runners, logger=Logger("test", stream=log, level="debug"), **kw), log


def log_events(log: io.StringIO, event: str) -> list[dict[str, Any]]:
    """The ``data`` of every log line whose message ends with ``event``."""
    out = []
    for line in log.getvalue().splitlines():
        entry = json.loads(line)
        if entry["message"].endswith("." + event):
            out.append(entry["data"])
    return out


def chains_in_save(text: str) -> dict[str, list[str]]:
    """Rules per chain in ``iptables-save`` output (independent of the package's parser)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            out.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            out.setdefault(line.split()[1], []).append(line)
    return out


def digest_of(rule: str) -> str | None:
    found = HASH_RE.search(rule)
    return found.group(1) if found else None


def jump_targets(rules: Iterable[str]) -> list[str]:
    return [m.group(1) for r in rules for m in [re.search(r" -[jg] (\S+)", r)] if m]


def random_rules(seed: int, *, most: int = 40) -> list[dict[str, Any]]:
    """Between 1 and ``most`` CC rule objects of every protocol (and IPv6), drawn from ``seed``."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(rnd.randint(1, most)):
        kind = rnd.choice(["tcp", "udp", "icmp", "all", "v6"])
        dst = f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.0/{rnd.choice([24, 28, 32])}"
        if kind in ("tcp", "udp"):
            a = rnd.randint(1, 60000)
            ports = rnd.choice([f"{a}", f"{a}-{a + 9}", f"{a},{a + 5}"])
            out.append({"protocol": kind, "destination": dst, "ports": ports})
        elif kind == "icmp":
            out.append({"protocol": "icmp", "destination": dst, "type": rnd.choice([-1, 0, 8]), "code": -1})
        elif kind == "all":
            out.append({"protocol": "all", "destination": dst, "log": rnd.random() < 0.3})
        else:
            out.append({"protocol": "tcp", "destination": f"fd00:{rnd.randint(1, 9999):x}::/64", "ports": "443"})
    return out
