"""What cni-wrapper-plugin puts in iptables, token for token: its config and silk's netrules.

Transcribed from silk-release (cni-wrapper-plugin/lib/lib.go, netrules/*.go, lib/rules/rules.go)
for the stand-in in :mod:`silk.cni`; nothing here runs iptables.

* :class:`SilkCniConfig` holds the conflist keys the plugin reads (lib.WrapperConfig), with
  the values silk-cni's job template renders by default; :meth:`SilkCniConfig.with_iptables_logging`
  maps the one BOSH property ``iptables_logging`` onto the three keys the template sets from it.
* Chain names: ``<prefix>--<handle>`` cut to 28 (ChainNamer.Prefix); log chains
  ``<netout name cut to 28-len("--"+suffix)>--<suffix>`` (ChainNamer.Postfix).
* :func:`netout_chains` is NetOut.defaultNetOutRules with appendInputRules (input, netout with its
  FORWARD hooks, overlay, the ``--log`` chain, the ``--rl-log`` chain when
  ``(limit and logging) or dry_run``), in silk's order; :func:`netin_chains` is NetIn's nat and
  mangle ``netin--<h>``; :func:`static_rules` is NetOutChain.IPTablesRules over Garden's
  ``netOutRules`` (converted, de-duplicated, deny networks, rate limit, INVALID DROP,
  RELATED,ESTABLISHED ACCEPT), which BulkInsert then puts at position 1 one by one (reversed).
* :func:`parse_net_out_rules` / :func:`parse_port_mappings` accept CNI ``runtimeConfig`` as Garden
  sends it and refuse what Go's json decoding into garden.NetOutRule / garden.NetIn refuses.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["MAX_CHAIN", "DenyNetworks", "FullChain", "GardenRule", "OutConn", "PortMapping", "Rule",
           "SilkCniConfig", "deny_networks", "input_rules", "local_dns_servers", "log_chain", "masquerade_rule",
           "netin_chains", "netin_rules", "netout_chains", "parse_net_out_rules", "parse_port_mappings", "prefix",
           "rate_limit_log_chain", "static_rules"]

MAX_CHAIN = 28
Rule = tuple[str, ...]
_REJECT: Rule = ("--jump", "REJECT", "--reject-with", "icmp-port-unreachable")


@dataclass(frozen=True)
class OutConn:
    """``outbound_connections`` (silk-cni defaults: limit off, burst 1000, 100/s)."""

    limit: bool = False
    logging: bool = False
    burst: int = 1000
    rate_per_sec: int = 100
    dry_run: bool = False


@dataclass(frozen=True)
class DenyNetworks:
    """``deny_networks``: CIDRs (``always``, for app/task ``running``, for ``staging``)."""

    always: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    staging: tuple[str, ...] = ()


@dataclass(frozen=True)
class SilkCniConfig:
    """The cni-wrapper-plugin conflist keys that shape the table (names as in the conflist)."""

    datastore: str
    iptables_lock_file: str
    policy_agent_force_poll_address: str
    instance_address: str = "198.18.0.1"
    underlay_interfaces: tuple[str, ...] = ("underlay0",)  # temporary_underlay_interface_names
    no_masquerade_cidr_range: str = "10.255.0.0/16"
    vtep_name: str = "silk-vtep"
    ingress_tag: str = "ffff0000"
    iptables_asg_logging: bool = False
    iptables_c2c_logging: bool = False
    iptables_denied_logs_per_sec: int = 1
    iptables_accepted_udp_logs_per_sec: int = 100
    dns_servers: tuple[str, ...] = ()
    host_tcp_services: tuple[str, ...] = ()
    host_udp_services: tuple[str, ...] = ()
    deny_networks: DenyNetworks = field(default_factory=DenyNetworks)
    outbound_connections: OutConn = field(default_factory=OutConn)

    def __post_init__(self) -> None:
        """LoadWrapperConfig's checks, with its messages."""
        for ok, message in ((self.datastore, "missing datastore path"),
                            (self.iptables_lock_file, "missing iptables lock file path"),
                            (self.instance_address, "missing instance address"),
                            (self.underlay_interfaces, "missing underlay ips"),
                            (self.ingress_tag, "missing ingress tag"), (self.vtep_name, "missing vtep device name"),
                            (self.iptables_denied_logs_per_sec > 0, "invalid denied logs per sec"),
                            (self.iptables_accepted_udp_logs_per_sec > 0, "invalid accepted udp logs per sec"),
                            (self.outbound_connections.burst > 0, "invalid outbound connection burst"),
                            (self.outbound_connections.rate_per_sec > 0, "invalid outbound connection rate"),
                            (self.policy_agent_force_poll_address, "validator: PolicyAgentForcePollAddress: zero")):
            if not ok:
                raise ValueError(message)

    def with_iptables_logging(self, enabled: bool) -> SilkCniConfig:
        """The job template: ``iptables_logging`` sets ASG, c2c and outbound-connection logging."""
        return replace(self, iptables_asg_logging=enabled, iptables_c2c_logging=enabled,
                       outbound_connections=replace(self.outbound_connections, logging=enabled))


@dataclass(frozen=True)
class FullChain:
    """netrules.IpTablesFullChain: a chain, the jumps to it from ``parent`` (if any), its rules."""

    table: str
    parent: str
    name: str
    jumps: tuple[Rule, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class GardenRule:
    """garden.NetOutRule as the converter sees it (networks already as ``net.IP.String()``)."""

    protocol: int
    networks: tuple[tuple[str, str], ...]
    ports: tuple[tuple[int, int], ...]
    icmp: tuple[int, int] | None  # None: no ``icmps`` or no ``icmps.code``
    log: bool


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int


# -- names ---------------------------------------------------------------------------------


def prefix(kind: str, handle: str) -> str:
    return f"{kind}--{handle}"[:MAX_CHAIN]


def _postfix(body: str, suffix: str) -> str:
    return f"{body[: MAX_CHAIN - len('--' + suffix)]}--{suffix}"


def log_chain(handle: str) -> str:
    return _postfix(prefix("netout", handle), "log")


def rate_limit_log_chain(handle: str) -> str:
    return _postfix(prefix("netout", handle), "rl-log")


# -- rules.go --------------------------------------------------------------------------------


def _log_prefix(name: str) -> str:
    return f'"{name[:28]} "'  # trimAndPad: the quotes are part of the token, for iptables-restore


def _limited_log(handle: str, kind: str, per_sec: int) -> Rule:
    return ("-m", "limit", "--limit", f"{per_sec}/s", "--limit-burst", str(per_sec), "--jump", "LOG",
            "--log-prefix", _log_prefix(f"{kind}_{handle}"))


def _related_established() -> Rule:
    return ("-m", "state", "--state", "RELATED,ESTABLISHED", "--jump", "ACCEPT")


def masquerade_rule(ip: str, cfg: SilkCniConfig) -> Rule:
    """NewDefaultEgressRule (nat POSTROUTING)."""
    rule: Rule = ("--source", ip, "!", "-o", cfg.vtep_name)
    if cfg.no_masquerade_cidr_range:
        rule += ("!", "--destination", cfg.no_masquerade_cidr_range)
    return (*rule, "--jump", "MASQUERADE")


def local_dns_servers(cfg: SilkCniConfig) -> list[str]:
    """getLocalDNSServers: only link-local servers get INPUT rules."""
    out = []
    for entry in cfg.dns_servers:
        try:
            addr = ipaddress.ip_address(entry)
        except ValueError:
            raise ValueError(f'invalid DNS server "{entry}", must be valid IP address') from None
        if addr.is_link_local:
            out.append(entry)
    return out


def _host_port(service: str, kind: str) -> tuple[str, int]:
    host, sep, port = service.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)  # the job template refuses anything but an IP here
    except ValueError:
        raise ValueError(f"input rules: host {kind} services: address {service}: not IP:port") from None
    if not sep or not port.isdigit():
        raise ValueError(f'input rules: host {kind} services: strconv.Atoi: parsing "{port}": invalid syntax')
    return host, int(port)


def input_rules(cfg: SilkCniConfig, dns_servers: Sequence[str]) -> tuple[Rule, ...]:
    """appendInputRules: RELATED,ESTABLISHED, DNS (tcp, udp), host TCP then UDP services, REJECT."""
    rules: list[Rule] = [_related_established()]
    for server in dns_servers:
        rules += [("-p", proto, "-d", server, "--destination-port", "53", "--jump", "ACCEPT")
                  for proto in ("tcp", "udp")]
    for services, proto in ((cfg.host_tcp_services, "tcp"), (cfg.host_udp_services, "udp")):
        for service in services:
            host, port = _host_port(service, proto)
            rules.append(("-p", proto, "-d", host, "--destination-port", str(port), "--jump", "ACCEPT"))
    return (*rules, _REJECT)


def netout_chains(handle: str, ip: str, cfg: SilkCniConfig, inputs: Sequence[Rule] = ()) -> list[FullChain]:
    """defaultNetOutRules (with ``inputs`` as the input chain's rules), in silk's order."""
    netout, overlay, inp = prefix("netout", handle), prefix("overlay", handle), prefix("input", handle)
    netout_rules = ((_limited_log(handle, "DENY", cfg.iptables_denied_logs_per_sec),)
                    if cfg.iptables_asg_logging else ()) + (_REJECT,)
    overlay_rules: list[Rule] = [
        ("-s", ip, "-o", cfg.vtep_name, "-m", "mark", "!", "--mark", "0x0", "--jump", "ACCEPT"),
        ("-d", ip, *_related_established()),
        ("-d", ip, "-m", "mark", "--mark", f"0x{cfg.ingress_tag}", "--jump", "ACCEPT"),
        ("-d", ip, *_REJECT)]
    if cfg.iptables_c2c_logging:
        overlay_rules.insert(3, ("-d", ip, *_limited_log(handle, "DENY_C2C", cfg.iptables_denied_logs_per_sec)))
    udp_per_sec = cfg.iptables_accepted_udp_logs_per_sec
    out = [
        FullChain("filter", "INPUT", inp, (("-s", ip, "--jump", inp),), tuple(inputs)),
        FullChain("filter", "FORWARD", netout,
                  tuple(("-s", ip, "-o", name, "--jump", netout) for name in cfg.underlay_interfaces), netout_rules),
        FullChain("filter", "FORWARD", overlay, (("--jump", overlay),), tuple(overlay_rules)),
        FullChain("filter", "", log_chain(handle), (("--jump", log_chain(handle)),), (
            ("!", "-p", "udp", "-m", "conntrack", "--ctstate", "INVALID,NEW,UNTRACKED", "-j", "LOG",
             "--log-prefix", _log_prefix(f"OK_{handle}")),
            ("-p", "udp", "-m", "limit", "--limit", f"{udp_per_sec}/s", "--limit-burst", str(udp_per_sec), "-j", "LOG",
             "--log-prefix", _log_prefix(f"OK_{handle}")),
            ("--jump", "ACCEPT")))]
    conn = cfg.outbound_connections
    if (conn.limit and conn.logging) or conn.dry_run:
        rl_rules: list[Rule] = []
        if conn.logging or conn.dry_run:
            rl_rules.append(_limited_log(handle, "DENY_ORL", cfg.iptables_denied_logs_per_sec))
        if not conn.dry_run:
            rl_rules.append(_REJECT)
        name = rate_limit_log_chain(handle)
        out.append(FullChain("filter", "", name, (("--jump", name),), tuple(rl_rules)))
    return out


def netin_chains(handle: str) -> list[FullChain]:
    """NetIn.defaultNetInRules: ``netin--<h>`` in nat, then mangle, jumped to from PREROUTING."""
    name = prefix("netin", handle)
    return [FullChain(table, "PREROUTING", name, (("--jump", name),), ()) for table in ("nat", "mangle")]


def netin_rules(mapping: PortMapping, ip: str, cfg: SilkCniConfig) -> list[tuple[str, tuple[Rule, ...]]]:
    """NetIn.AddRule: (table, rules) for the nat DNAT and the mangle MARK per interface."""
    host, port = cfg.instance_address, str(mapping.host_port)
    dnat = ("-d", host, "-p", "tcp", "-m", "tcp", "--dport", port, "--jump", "DNAT",
            "--to-destination", f"{ip}:{mapping.container_port}")
    marks = tuple(("-i", name, "-d", host, "-p", "tcp", "-m", "tcp", "--dport", port, "--jump", "MARK",
                   "--set-mark", f"0x{cfg.ingress_tag}") for name in cfg.underlay_interfaces)
    return [("nat", (dnat,)), ("mangle", marks)]


# -- Garden's netOutRules and what NetOutChain makes of them --------------------------------------


def deny_networks(cfg: SilkCniConfig) -> DenyNetworks:
    """NetOutChain.Validate: every entry must be a CIDR (net.ParseCIDR); kept as its network."""
    def one(cidr: str) -> str:
        try:
            if "/" not in cidr:
                raise ValueError(cidr)
            return str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"deny networks: invalid CIDR address: {cidr}") from None

    d = cfg.deny_networks
    return DenyNetworks(tuple(map(one, d.always)), tuple(map(one, d.running)), tuple(map(one, d.staging)))


def _convert(rule: GardenRule, log_to: str, global_logging: bool, warnings: list[str]) -> list[Rule]:
    """RuleConverter.Convert (a skipped network is reported on stderr, as silk prints it)."""
    out: list[Rule] = []
    proto = {1: "tcp", 2: "udp", 3: "icmp"}.get(rule.protocol, "all")
    target = ("-g", log_to) if rule.log or global_logging else ("--jump", "ACCEPT")
    for start, end in rule.networks:
        dst = f"{start}-{end}"
        if proto in ("tcp", "udp"):
            if not rule.ports:
                warnings.append(f"UDP/TCP rule must specify ports: {rule}")
                continue
            out += [("-m", "iprange", "-p", proto, "--dst-range", dst, "-m", proto, "--destination-port",
                     f"{first}:{last}", *target) for first, last in rule.ports]
        elif proto == "icmp":
            if rule.icmp is None or rule.ports:
                warnings.append(f"ICMP rule must {'not specify ports' if rule.ports else 'specify ICMP type/code'}: "
                                f"{rule}")
                continue
            out.append(("-m", "iprange", "-p", "icmp", "--dst-range", dst, "-m", "icmp", "--icmp-type",
                        f"{rule.icmp[0]}/{rule.icmp[1]}", *target))
        elif rule.ports:
            warnings.append(f"Rule for all protocols (TCP/UDP/ICMP) must not specify ports: {rule}")
        else:
            out.append(("-m", "iprange", "--dst-range", dst, *target))
    return out


def static_rules(handle: str, workload: str, rules: Sequence[GardenRule], cfg: SilkCniConfig,
                 denied: DenyNetworks) -> tuple[list[Rule], list[str]]:
    """NetOutChain.IPTablesRules: the rules BulkInsert puts at position 1, and the converter's complaints."""
    warnings: list[str] = []
    converted: list[Rule] = []
    for rule in rules:
        converted += _convert(rule, log_chain(handle), cfg.iptables_asg_logging, warnings)
    out = list(dict.fromkeys(converted))  # DeduplicateRules: first occurrence wins
    nets = list(denied.always)
    nets += denied.running if workload in ("app", "task") else denied.staging if workload == "staging" else ()
    out += [("-d", net, *_REJECT) for net in nets]
    conn = cfg.outbound_connections
    if conn.limit or conn.dry_run:
        target = rate_limit_log_chain(handle) if conn.logging or conn.dry_run else "REJECT"
        expire = math.ceil(conn.burst / conn.rate_per_sec) * 1000
        out.append(("-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "hashlimit", "--hashlimit-above",
                    f"{conn.rate_per_sec}/sec", "--hashlimit-burst", str(conn.burst), "--hashlimit-mode",
                    "dstip,dstport", "--hashlimit-name", handle, "--hashlimit-htable-expire", str(expire),
                    "-j", target))
    out += [("-p", "tcp", "-m", "state", "--state", "INVALID", "-j", "DROP"),
            ("-m", "state", "--state", "RELATED,ESTABLISHED", "-j", "ACCEPT")]
    return out, warnings


def _uint(value: Any, where: str, bits: int) -> int:
    """A Go uintN field: null/absent is 0; anything but an integer literal in range is a decode error."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"json: cannot unmarshal {value!r} into {where} of type uint{bits}")
    return int(value)


def _ip(value: Any, where: str) -> str:
    """A net.IP field as ``String()`` renders it (absent or empty: ``<nil>``)."""
    if value is None or value == "":
        return "<nil>"
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"{where}: invalid IP address: {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{where}: invalid IP address: {value}") from None
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return str(mapped or addr)


def _objects(value: Any, where: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"json: cannot unmarshal {type(value).__name__} into {where} (a list)")
    for i, item in enumerate(value):
        if item is not None and not isinstance(item, Mapping):
            raise ValueError(f"json: cannot unmarshal {type(item).__name__} into {where}[{i}] (an object)")
    return [item or {} for item in value]


def _garden_rule(raw: Mapping[str, Any], at: str) -> GardenRule:
    networks = tuple((_ip(n.get("start"), f"{at}.networks[{j}].start"), _ip(n.get("end"), f"{at}.networks[{j}].end"))
                     for j, n in enumerate(_objects(raw.get("networks"), f"{at}.networks")))
    ports = tuple((_uint(p.get("start"), f"{at}.ports[{j}].start", 16), _uint(p.get("end"), f"{at}.ports[{j}].end", 16))
                  for j, p in enumerate(_objects(raw.get("ports"), f"{at}.ports")))
    icmps = raw.get("icmps")
    if icmps is not None and not isinstance(icmps, Mapping):
        raise ValueError(f"json: cannot unmarshal {type(icmps).__name__} into {at}.icmps (an object)")
    icmp = None
    if icmps is not None and icmps.get("code") is not None:
        icmp = (_uint(icmps.get("type"), f"{at}.icmps.type", 8), _uint(icmps["code"], f"{at}.icmps.code", 8))
    elif icmps is not None:
        _uint(icmps.get("type"), f"{at}.icmps.type", 8)
    log = raw.get("log")
    if log is not None and not isinstance(log, bool):
        raise ValueError(f"json: cannot unmarshal {log!r} into {at}.log of type bool")
    return GardenRule(_uint(raw.get("protocol"), f"{at}.protocol", 8), networks, ports, icmp, bool(log))


def parse_net_out_rules(raw: Any) -> list[GardenRule]:
    """``runtimeConfig.netOutRules`` (a list of garden.NetOutRule objects) as Go decodes it."""
    return [_garden_rule(item, f"netOutRules[{i}]")
            for i, item in enumerate(_objects(raw, "runtimeConfig.netOutRules"))]


def parse_port_mappings(raw: Any) -> list[PortMapping]:
    """``runtimeConfig.portMappings`` (garden.NetIn: ``host_port``, ``container_port``, uint32)."""
    return [PortMapping(_uint(m.get("host_port"), f"portMappings[{i}].host_port", 32),
                        _uint(m.get("container_port"), f"portMappings[{i}].container_port", 32))
            for i, m in enumerate(_objects(raw, "runtimeConfig.portMappings"))]
