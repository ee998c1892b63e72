"""Garden's static egress rules (``runtimeConfig.netOutRules``), for when ASG syncing is off.

When the agent answers 405 the CNI installs the rules Garden computed for the
container at create time, as silk does. Garden's form: ``protocol`` 0 all, 1 tcp,
2 udp, 3 icmp (4 icmpv6), ``networks`` ``[{start, end}]``, ``ports`` ``[{start, end}]``
(none: every port), ``icmps`` ``{type, code}`` (no code: any code), ``log``.

They become :class:`~dynamic_asgs.asg.model.Rule` values and go through the same
translation as the agent's (:func:`~dynamic_asgs.asg.translate.plan_container`, as one
group that applies to the container), so the chains look exactly as if the agent had
written them: ``netout--<h>`` jumps to ``asg-<h>``, which holds the silk layout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from dynamic_asgs.asg.model import ANY, Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, plan_container
from dynamic_asgs.errors import ConfigError

__all__ = ["GARDEN_PROTOCOLS", "parse_net_out_rules", "static_plan"]

GARDEN_PROTOCOLS = {0: Protocol.ALL, 1: Protocol.TCP, 2: Protocol.UDP, 3: Protocol.ICMP, 4: Protocol.ICMPV6}
_ALL_PORTS = (PortRange(0, 65535),)
_STATIC_GROUP = "garden-net-out-rules"


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: must be an integer in {low}..{high}, not {value!r}"[:200])
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be an object")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list")
    return value


def _network(raw: Any, where: str) -> IPRange:
    obj = _object(raw, where)
    try:
        start = ipaddress.ip_address(str(obj.get("start")))
        end = ipaddress.ip_address(str(obj.get("end", obj.get("start"))))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}"[:200]) from None
    if start.version != end.version or int(start) > int(end):
        raise ConfigError(f"{where}: {start}-{end} is not a range of one family with start <= end")
    return IPRange(start, end)


def _ports(raw: Any, where: str) -> tuple[PortRange, ...]:
    ports = []
    for i, item in enumerate(_list(raw, where)):
        obj = _object(item, f"{where}[{i}]")
        start = _int(obj.get("start"), f"{where}[{i}].start", 0, 65535)
        end = _int(obj.get("end", start), f"{where}[{i}].end", 0, 65535)
        if start > end:
            raise ConfigError(f"{where}[{i}]: start {start} is after end {end}")
        ports.append(PortRange(start, end))
    return tuple(ports) or _ALL_PORTS


def _icmp(raw: Any, where: str) -> tuple[int, int]:
    if raw is None:
        return ANY, ANY
    obj = _object(raw, where)
    icmp_type = _int(obj.get("type"), f"{where}.type", 0, 255)
    code = obj.get("code")
    return icmp_type, ANY if code is None else _int(code, f"{where}.code", 0, 255)


def _rule(raw: Any, where: str) -> Rule:
    obj = _object(raw, where)
    number = _int(obj.get("protocol", 0), f"{where}.protocol", 0, 4)
    protocol = GARDEN_PROTOCOLS[number]
    networks = tuple(_network(n, f"{where}.networks[{j}]") for j, n in enumerate(_list(obj.get("networks"),
                                                                                         f"{where}.networks")))
    need = {Protocol.ICMP: 4, Protocol.ICMPV6: 6}.get(protocol)
    if need is not None and any(n.version != need for n in networks):
        raise ConfigError(f"{where}: {protocol} needs IPv{need} networks")
    log = obj.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: must be a boolean")
    if protocol in (Protocol.TCP, Protocol.UDP):
        return Rule(protocol, networks, ports=_ports(obj.get("ports"), f"{where}.ports"), log=log)
    if protocol is Protocol.ALL:
        return Rule(protocol, networks, log=log)
    icmp_type, icmp_code = _icmp(obj.get("icmps"), f"{where}.icmps")
    return Rule(protocol, networks, icmp_type=icmp_type, icmp_code=icmp_code, log=log)


def parse_net_out_rules(raw: Any) -> tuple[Rule, ...]:
    """Garden's ``netOutRules`` (None or a list) as rules; ConfigError names the bad element."""
    where = "runtimeConfig.netOutRules"
    return tuple(_rule(item, f"{where}[{i}]") for i, item in enumerate(_list(raw, where)))


def static_plan(container: Container, rules: Sequence[Rule], settings: ChainSettings) -> ContainerChains:
    """The container's chains holding exactly ``rules`` (plus the cell-wide deny networks, limits, logging).

    Garden chose the rules for this container already, so they apply whatever its
    space; deny networks follow its workload (staging, else running).
    """
    workload = Workload.STAGING if container.workload is Workload.STAGING else Workload.APP
    planned = Container(handle=container.handle, ip=container.ip, ipv6=container.ipv6,
                        policy_group_id=container.policy_group_id or _STATIC_GROUP,
                        space_id=container.space_id or _STATIC_GROUP, workload=workload)
    group = SecurityGroup(guid=_STATIC_GROUP, name="Garden netOutRules", rules=tuple(rules),
                          running_default=True, staging_default=True)
    plan = plan_container(planned, [group], settings)
    assert plan is not None  # the planned container has a group id and a space
    return plan
