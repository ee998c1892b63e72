"""Build security groups, containers and their planned chains from compact test descriptions."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg.model import Container, SecurityGroup, Workload
from dynamic_asgs.asg.parse import parse_groups_document
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex, plan_container
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


def plan(c: Container, groups: GroupIndex | Sequence[SecurityGroup],
         settings: ChainSettings | None = None) -> ContainerChains:
    planned = plan_container(c, groups, settings or ChainSettings())
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
