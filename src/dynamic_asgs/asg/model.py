"""Typed, frozen values for security groups, their rules and containers.

Nothing here parses or formats: :mod:`.parse` builds these values from Cloud
Controller, policy-server and container-store documents, and :mod:`.translate`
turns them into iptables rules.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from dynamic_asgs.errors import RuleError

__all__ = [
    "ANY",
    "Container",
    "IPRange",
    "PortRange",
    "Protocol",
    "Rule",
    "SecurityGroup",
    "Workload",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ICMP type/code meaning "any"; CC's -1 is stored as 255, as the Go agent does.
ANY = 255


class Protocol(enum.StrEnum):
    """The protocols Cloud Controller allows in a rule."""

    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"
    ALL = "all"


class Workload(enum.StrEnum):
    """Which lifecycle a container serves; it decides which ASGs apply."""

    STAGING = "staging"
    APP = "app"
    TASK = "task"
    OTHER = "other"

    @classmethod
    def of(cls, value: str) -> Workload:
        """The workload for a store entry's ``container_workload`` value."""
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER

    @property
    def is_running(self) -> bool:
        return self in (Workload.APP, Workload.TASK)


@dataclass(frozen=True, slots=True, order=True)
class IPRange:
    """An inclusive range of addresses of one family."""

    start: IPAddress
    end: IPAddress

    @property
    def version(self) -> int:
        return self.start.version

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive range of ports."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated egress rule of a security group.

    ``ports`` is empty unless the protocol is tcp or udp. ``icmp_type`` and
    ``icmp_code`` are set only for icmp and icmpv6; 255 means any.
    """

    protocol: Protocol
    destinations: tuple[IPRange, ...]
    ports: tuple[PortRange, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    log: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    """A security group with its valid rules and the rules that failed validation.

    An invalid rule is dropped (fail closed for that rule only) and kept in
    ``invalid_rules`` so that callers can log and count it.
    """

    guid: str
    name: str
    rules: tuple[Rule, ...]
    running_default: bool = False
    staging_default: bool = False
    running_spaces: tuple[str, ...] = ()
    staging_spaces: tuple[str, ...] = ()
    invalid_rules: tuple[RuleError, ...] = field(default=(), compare=False)

    @property
    def label(self) -> str:
        """How messages name this group: ``'name' (guid)``."""
        return f"{self.name!r} ({self.guid})"


@dataclass(frozen=True, slots=True)
class Container:
    """One entry of the container metadata store (see DESIGN.md §3.4).

    Values from outside reach one only through :func:`.parse.parse_container`, which
    checks each against its grammar (:mod:`.grammar`).
    """

    handle: str
    ip: str
    policy_group_id: str
    space_id: str
    workload: Workload
    raw_workload: str = ""
    app_guid: str = ""
    log_source: str = ""
    log_index: str = ""
    log_tags: tuple[tuple[str, str], ...] = ()
    ports: str = ""
    ipv6: str = ""
