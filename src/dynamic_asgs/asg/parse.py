"""Parse and validate security groups, rules and container store entries.

Rules are validated as Cloud Controller validates them (DESIGN.md §3.2), with the
agent's extra tolerance for port lists that mix ranges and numbers and for
whitespace around port numbers. An invalid rule never makes a whole group or a
whole container fail: it is dropped (fail closed for that rule only) and returned
in :attr:`SecurityGroup.invalid_rules`, so the caller can log it and count it.
The Go agent instead keeps a container's whole old ruleset when one rule is bad.

A container store entry is all or nothing: every value must match its grammar
(:mod:`.grammar`, issue 13), or the entry is refused whole, never half-used.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

from dynamic_asgs.asg import grammar
from dynamic_asgs.asg.model import ANY, Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.errors import RuleError, ValidationError

__all__ = [
    "MAX_DESTINATIONS",
    "parse_cc_group",
    "parse_container",
    "parse_destinations",
    "parse_groups_document",
    "parse_internal_group",
    "parse_ports",
    "parse_rule",
    "parse_rules",
]

#: Cloud Controller's limit on comma-separated destinations in one rule.
MAX_DESTINATIONS = 6000
_PORT_PROTOCOLS = (Protocol.TCP, Protocol.UDP)
_ICMP_PROTOCOLS = (Protocol.ICMP, Protocol.ICMPV6)
_WHITESPACE = frozenset(" \t\r\n\v\f")
_T = TypeVar("_T")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if "%" in text:
        raise ValueError(f"{text!r} is not an IP address (zone ids are not allowed)")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _destination(text: str) -> IPRange:
    if not text:
        raise ValueError("empty element in destination list")
    if "-" in text:
        first, _, last = text.partition("-")
        start, end = _address(first), _address(last)
        if start.version != end.version:
            raise ValueError(f"range {text!r} mixes IPv4 and IPv6")
        if int(start) > int(end):
            raise ValueError(f"range {text!r} starts after it ends")
        return IPRange(start, end)
    if "/" in text:
        host, _, prefix = text.partition("/")
        _address(host)
        if not prefix.isdigit() or (len(prefix) > 1 and prefix[0] == "0"):
            raise ValueError(f"{text!r} has an invalid prefix length")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid CIDR") from None
        return IPRange(net.network_address, net.broadcast_address)
    address = _address(text)
    return IPRange(address, address)


def parse_destinations(text: Any) -> tuple[IPRange, ...]:
    """Parse a rule's ``destination``: one or a comma list of IPs, CIDRs and ranges."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, not {type(text).__name__}")
    if not text:
        raise ValueError("is required")
    if _WHITESPACE.intersection(text):
        raise ValueError(f"{text[:80]!r} contains whitespace")
    parts = text.split(",")
    if len(parts) > MAX_DESTINATIONS:
        raise ValueError(f"has {len(parts)} elements; at most {MAX_DESTINATIONS} are allowed")
    return tuple(_destination(part) for part in parts)


def _port(text: str, whole: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{whole!r}: {text!r} is not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} is outside 1-65535")
    return port


def parse_ports(value: Any) -> tuple[PortRange, ...]:
    """Parse ``ports``: ``"80"``, ``"80,443"``, ``"1000-2000"`` or mixes like ``"1000-2000, 8080"``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    whole = str(value)
    if not whole.strip():
        raise ValueError("is required for tcp and udp")
    ranges = []
    for element in whole.split(","):
        if not element.strip():
            raise ValueError(f"{whole!r} has an empty element")
        if "-" in element:
            first, _, last = element.partition("-")
            start, end = _port(first, whole), _port(last, whole)
            if start > end:
                raise ValueError(f"{whole!r}: range {element.strip()!r} starts after it ends")
            ranges.append(PortRange(start, end))
        else:
            port = _port(element, whole)
            ranges.append(PortRange(port, port))
    return tuple(ranges)


def _icmp_value(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if value is None:
        raise ValueError("is required for icmp and icmpv6")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    if not -1 <= value <= 255:
        raise ValueError(f"{value} is outside -1..255")
    return ANY if value == -1 else value


def _absent(value: Any) -> bool:
    return value is None or value == ""


def parse_rule(raw: Any, *, group: str, index: int) -> Rule:
    """Validate one rule; raise :class:`RuleError` naming the group, index and field."""

    def fail(field: str, reason: str) -> RuleError:
        return RuleError(group, index, field, reason)

    if not isinstance(raw, Mapping):
        raise fail("rule", f"must be an object, not {type(raw).__name__}")
    try:
        protocol = Protocol(str(raw.get("protocol")))
    except ValueError:
        raise fail("protocol", f"{raw.get('protocol')!r} is not one of tcp, udp, icmp, icmpv6, all") from None
    try:
        destinations = parse_destinations(raw.get("destination"))
    except ValueError as exc:
        raise fail("destination", str(exc)) from None

    ports: tuple[PortRange, ...] = ()
    icmp_type = icmp_code = None
    if protocol in _PORT_PROTOCOLS:
        try:
            ports = parse_ports(raw.get("ports"))
        except ValueError as exc:
            raise fail("ports", str(exc)) from None
    elif not _absent(raw.get("ports")):
        raise fail("ports", f"must not be given for protocol {protocol}")
    if protocol in _ICMP_PROTOCOLS:
        for key in ("type", "code"):
            try:
                value = _icmp_value(raw, key)
            except ValueError as exc:
                raise fail(key, str(exc)) from None
            if key == "type":
                icmp_type = value
            else:
                icmp_code = value
        wanted = 4 if protocol is Protocol.ICMP else 6
        if any(d.version != wanted for d in destinations):
            raise fail("destination", f"{protocol} needs IPv{wanted} destinations")

    log = raw.get("log", False)
    if log is None:
        log = False
    if not isinstance(log, bool):
        raise fail("log", f"must be true or false, not {log!r}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise fail("description", f"must be a string, not {type(description).__name__}")
    return Rule(protocol, destinations, ports, icmp_type, icmp_code, log, description)


def parse_rules(raw_rules: Iterable[Any], *, group: str) -> tuple[tuple[Rule, ...], tuple[RuleError, ...]]:
    """Validate every rule; return the valid ones and the errors of the dropped ones."""
    rules: list[Rule] = []
    errors: list[RuleError] = []
    for index, raw in enumerate(raw_rules):
        try:
            rules.append(parse_rule(raw, group=group, index=index))
        except RuleError as exc:
            errors.append(exc)
    return tuple(rules), tuple(errors)


def _str(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ValidationError(f"{where}: {key}: must be a non-empty string")
    return value


def _bool(raw: Mapping[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationError(f"{where}: {key}: must be true or false, not {value!r}")
    return value


def _label(raw: Mapping[str, Any]) -> str:
    return f"{raw.get('name')!r} ({raw.get('guid')})"


def _relationship(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    relationships = raw.get("relationships")
    if relationships is None:
        return ()
    if not isinstance(relationships, Mapping):
        raise ValidationError(f"{where}: relationships: must be an object")
    rel = relationships.get(key)
    if rel is None:
        return ()
    data = rel.get("data") if isinstance(rel, Mapping) else None
    if not isinstance(data, list):
        raise ValidationError(f"{where}: relationships.{key}.data: must be a list")
    guids = []
    for i, item in enumerate(data):
        guid = item.get("guid") if isinstance(item, Mapping) else None
        if not isinstance(guid, str) or not guid:
            raise ValidationError(f"{where}: relationships.{key}.data[{i}]: has no guid")
        guids.append(guid)
    return tuple(guids)


def parse_cc_group(raw: Any) -> SecurityGroup:
    """Parse one resource of Cloud Controller's ``/v3/security_groups`` listing."""
    if not isinstance(raw, Mapping):
        raise ValidationError(f"security group: must be an object, not {type(raw).__name__}")
    where = f"security group {_label(raw)}"
    guid = _str(raw, "guid", where)
    name = _str(raw, "name", where, required=False)
    enabled = raw.get("globally_enabled")
    if enabled is None:
        enabled = {}
    if not isinstance(enabled, Mapping):
        raise ValidationError(f"{where}: globally_enabled: must be an object")
    raw_rules = raw.get("rules")
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise ValidationError(f"{where}: rules: must be a list")
    label = f"{name!r} ({guid})"
    rules, errors = parse_rules(raw_rules, group=label)
    return SecurityGroup(
        guid=guid,
        name=name,
        rules=rules,
        running_default=_bool(enabled, "running", f"{where}: globally_enabled"),
        staging_default=_bool(enabled, "staging", f"{where}: globally_enabled"),
        running_spaces=_relationship(raw, "running_spaces", where),
        staging_spaces=_relationship(raw, "staging_spaces", where),
        invalid_rules=errors,
    )


def _guid_list(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        raise ValidationError(f"{where}: {key}: must be a list of space guids")
    return tuple(value)


def parse_internal_group(raw: Any) -> SecurityGroup:
    """Parse one entry of the policy server's internal ``security_groups`` answer.

    There ``rules`` is a JSON array encoded as a string.
    """
    if not isinstance(raw, Mapping):
        raise ValidationError(f"security group: must be an object, not {type(raw).__name__}")
    where = f"security group {_label(raw)}"
    guid = _str(raw, "guid", where)
    name = _str(raw, "name", where, required=False)
    text = raw.get("rules")
    if text is None or text == "":
        text = "[]"
    if isinstance(text, str):
        try:
            raw_rules = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{where}: rules: not a JSON array: {exc.msg}") from None
    else:
        raw_rules = text
    if not isinstance(raw_rules, list):
        raise ValidationError(f"{where}: rules: must be a JSON array")
    rules, errors = parse_rules(raw_rules, group=f"{name!r} ({guid})")
    return SecurityGroup(
        guid=guid,
        name=name,
        rules=rules,
        running_default=_bool(raw, "running_default", where),
        staging_default=_bool(raw, "staging_default", where),
        running_spaces=_guid_list(raw, "running_space_guids", where),
        staging_spaces=_guid_list(raw, "staging_space_guids", where),
        invalid_rules=errors,
    )


def parse_groups_document(doc: Any) -> list[SecurityGroup]:
    """Parse either a CC ``/v3/security_groups`` listing or a policy-server answer.

    The form is detected from the top-level key (``resources`` or ``security_groups``);
    a bare list of CC resources is accepted too.
    """
    if isinstance(doc, Mapping) and "resources" in doc:
        items, parse = doc["resources"], parse_cc_group
    elif isinstance(doc, Mapping) and "security_groups" in doc:
        items, parse = doc["security_groups"], parse_internal_group
    elif isinstance(doc, list):
        items, parse = doc, parse_cc_group
    else:
        raise ValidationError(
            "not a security groups document: expected a CC /v3/security_groups listing "
            "(with 'resources') or a policy server answer (with 'security_groups')"
        )
    if not isinstance(items, list):
        raise ValidationError("the list of security groups must be a JSON array")
    return [parse(item) for item in items]


def parse_container(raw: Any, *, handle: str | None = None) -> Container:
    """Parse one container metadata store entry (DESIGN.md §3.4), stored under key ``handle``.

    Every value must match its grammar (:mod:`.grammar`) and the entry's ``handle`` its
    key; otherwise :class:`ValidationError` names the entry, the field and the reason,
    and nothing of the entry is used.
    """
    where = f"container {grammar.shown(handle)}" if handle is not None else "container"
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where}: must be an object, not {grammar.shown(raw)}")
    entry_handle = raw.get("handle")
    if handle is not None and entry_handle != handle:
        raise ValidationError(f"{where}: handle: {grammar.shown(entry_handle)} differs from the entry's key")
    where = f"container {grammar.shown(entry_handle)}"
    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise ValidationError(f"{where}: metadata: must be an object, not {grammar.shown(metadata)}")

    def check(field: str, value: Any, parse: Callable[[Any], _T]) -> _T:
        try:
            return parse(value)
        except ValueError as exc:
            raise ValidationError(f"{where}: {field}: {exc}") from None

    entry_handle = check("handle", entry_handle, grammar.handle)
    meta = metadata.get
    app_guid = check("metadata.policy_group_id", meta("policy_group_id"), grammar.guid)
    workload = check("metadata.container_workload", meta("container_workload"), grammar.workload)
    log = check("metadata.log_config", meta("log_config"), grammar.log_config)
    return Container(
        handle=entry_handle,
        ip=check("ip", raw.get("ip"), grammar.ip),
        policy_group_id=app_guid,
        space_id=check("metadata.space_id", meta("space_id"), grammar.guid),
        workload=Workload.of(workload),
        raw_workload=workload,
        app_guid=log.guid or app_guid,
        log_source=log.source_name,
        log_index=log.index,
        log_tags=log.tags,
        ports=check("metadata.ports", meta("ports"), grammar.ports),
        ipv6=check("ipv6", raw.get("ipv6"), partial(grammar.ip, version=6)),
    )
