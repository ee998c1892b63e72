"""Walk a packet through a filter table as the kernel would, for the rules our renderer writes.

Used to prove that two layouts of the same plans (:class:`~dynamic_asgs.asg.translate.ChainLayout`)
give every packet the same verdict, and to count the rules a packet traverses (``bench/layouts.py``).

Goals and the mechanism serving each:

* **Strict** — a rule is compiled from its text (as :class:`~dynamic_asgs.iptables.fake.FakeTable`
  stores it) by a grammar of exactly what :mod:`dynamic_asgs.asg.chains` emits, in the restore or the
  ``iptables-save`` spelling: ``-p``, ``-d``, ``-m comment|state|conntrack|iprange|tcp|udp|icmp|icmp6|
  limit|hashlimit`` with their options, ``!`` before ``-p``, ``-d`` and the value matches, and the
  targets ACCEPT, DROP, REJECT, RETURN, LOG, ``-j <chain>`` and ``-g <chain>``. Anything else (an
  unknown match, option or target, an option before its ``-m``, a protocol match without its ``-p``,
  addresses of two families) raises :class:`WalkError` naming the chain and the rule: a walker that
  guessed could prove a wrong table right.
* **Kernel semantics** — ``-j`` returns to the next rule of its caller, ``-g`` to its caller's
  caller; RETURN or the end of a chain returns. ICMP type 255 matches any type (``ip_tables``);
  ICMPv6 has no such wildcard (``ip6_tables``). A type without a code matches every code.
* **One packet, not a flow** — rate and connection limits are decided as for a lone packet:
  ``limit`` always matches (its burst is never spent) and ``hashlimit --hashlimit-above`` never
  does (one packet is never above a rate). Both layouts hold these rules in the container's own
  chain, so the choice cannot make them differ.
* **Never hangs** — a jump or goto to a chain already on the way (a loop, which the kernel refuses
  to load) or more than :data:`MAX_ENTRIES` chain entries in one walk raise :class:`WalkError`.
* **Cheap over many packets** — compiled rules are memoised by text.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, assert_never

__all__ = ["MAX_ENTRIES", "Packet", "Proto", "State", "Table", "Verdict", "Walk", "WalkError", "walk"]

#: The most chains one walk may enter (the entry chain included).
MAX_ENTRIES = 10_000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Proto(enum.StrEnum):
    """An IP protocol; ``ALL`` only in rules (``-p all``): a packet has a concrete one."""

    ALL = "all"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"


class State(enum.StrEnum):
    """A packet's conntrack state, spelled as ``--state`` / ``--ctstate`` lists do."""

    NEW = "NEW"
    ESTABLISHED = "ESTABLISHED"
    RELATED = "RELATED"
    INVALID = "INVALID"


class Verdict(enum.StrEnum):
    """How a walk ends. ``FALLTHROUGH``: the entry chain returned (RETURN or its end); the packet
    goes on after the rule that jumped to it, or to a built-in chain's policy."""

    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"
    FALLTHROUGH = "FALLTHROUGH"


class WalkError(ValueError):
    """A rule outside the grammar, a jump to a missing chain, a loop or too many chain entries."""

    def __init__(self, chain: str, rule: str | None, reason: str) -> None:
        where = f"chain {chain!r}" + (f", rule {rule!r}" if rule is not None else "")
        super().__init__(f"{where}: {reason}")
        self.chain = chain
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of an egress flow, as far as our rules look at it.

    tcp and udp packets have a ``port`` (the destination port); icmp (IPv4) and icmpv6 (IPv6)
    packets an ``icmp_type`` and an ``icmp_code``. Anything else raises ValueError.
    """

    dst: IPAddress
    protocol: Proto
    port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    state: State = State.NEW

    def __post_init__(self) -> None:
        proto = self.protocol
        if proto is Proto.ALL:
            raise ValueError("a packet has a concrete protocol, not 'all'")
        ported = proto in (Proto.TCP, Proto.UDP)
        if ported != (self.port is not None) or ported == (self.icmp_type is not None or self.icmp_code is not None):
            fields = "a port and no icmp type or code" if ported else "an icmp type and code and no port"
            raise ValueError(f"a {proto} packet has {fields}")
        if ported:
            assert self.port is not None
            if not 0 <= self.port <= 65535:
                raise ValueError(f"port {self.port} is outside 0-65535")
            return
        if self.icmp_type is None or self.icmp_code is None or not (
                0 <= self.icmp_type <= 255 and 0 <= self.icmp_code <= 255):
            raise ValueError(f"an {proto} packet has an icmp type and code in 0-255")
        version = 4 if proto is Proto.ICMP else 6
        if self.dst.version != version:
            raise ValueError(f"an {proto} packet goes to an IPv{version} address")


@dataclass(frozen=True, slots=True)
class Walk:
    """A walk's verdict, the rules it evaluated (jumps and the rules of jumped-to chains included)
    and the chains it entered, in order (the entry chain first)."""

    verdict: Verdict
    traversed: int
    path: tuple[str, ...]


class Table(Protocol):
    """What a walk reads of a table (:class:`~dynamic_asgs.iptables.fake.FakeTable` is one)."""

    def exists(self, chain: str) -> bool: ...

    def rules(self, chain: str) -> list[str]: ...


class _Action(enum.Enum):
    VERDICT = "verdict"
    RETURN = "return"
    LOG = "log"
    JUMP = "jump"
    GOTO = "goto"


_Test = Callable[[Packet], bool]


@dataclass(frozen=True, slots=True)
class _Rule:
    tests: tuple[_Test, ...]
    action: _Action
    target: str
    family: int | None


class _Refused(Exception):
    """A rule outside the grammar (the walk adds the chain and the rule)."""


_PROTOCOLS = {"all": Proto.ALL, "tcp": Proto.TCP, "udp": Proto.UDP, "icmp": Proto.ICMP,
              "ipv6-icmp": Proto.ICMPV6, "icmpv6": Proto.ICMPV6}
_PORTS = ("--dport", "--destination-port")
#: Each match module and its options (all take one value).
_MODULES: dict[str, tuple[str, ...]] = {
    "comment": ("--comment",),
    "state": ("--state",),
    "conntrack": ("--ctstate",),
    "iprange": ("--dst-range",),
    "tcp": _PORTS,
    "udp": _PORTS,
    "icmp": ("--icmp-type",),
    "icmp6": ("--icmpv6-type",),
    "limit": ("--limit", "--limit-burst"),
    "hashlimit": ("--hashlimit-above", "--hashlimit-burst", "--hashlimit-mode", "--hashlimit-name",
                  "--hashlimit-htable-expire"),
}
#: The protocol a module needs a (positive) ``-p`` for, as the kernel checks it.
_NEEDS = {"tcp": Proto.TCP, "udp": Proto.UDP, "icmp": Proto.ICMP, "icmp6": Proto.ICMPV6}
_NEGATABLE = frozenset({"-p", "--protocol", "-d", "--destination", "--dst-range", "--state", "--ctstate",
                        "--icmp-type", "--icmpv6-type", *_PORTS})
_STATES = {"--state": frozenset({"INVALID", "ESTABLISHED", "NEW", "RELATED", "UNTRACKED"}),
           "--ctstate": frozenset({"INVALID", "ESTABLISHED", "NEW", "RELATED", "UNTRACKED", "SNAT", "DNAT"})}
_VERDICTS = {"ACCEPT": Verdict.ACCEPT, "DROP": Verdict.DROP, "REJECT": Verdict.REJECT}
_REJECT_WITH = {"icmp-port-unreachable": 4, "icmp6-port-unreachable": 6}
_RATE = re.compile(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)")
_NUMBER = re.compile(r"0|[1-9][0-9]*")
_CHAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,27}")


def _negated(test: _Test) -> _Test:
    return lambda p: not test(p)


def _number(text: str, most: int) -> int:
    if not _NUMBER.fullmatch(text) or int(text) > most:
        raise _Refused(f"{text!r} is not a number in 0-{most}")
    return int(text)


def _address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Refused(f"{text!r} is not an address") from None


def _span(lo: IPAddress, hi: IPAddress, text: str) -> _Test:
    first, last = int(lo), int(hi)  # the walk checks a rule's family against the packet's first
    if lo.version != hi.version or first > last:
        raise _Refused(f"{text!r} is not a range of one family, first to last")
    return lambda p: first <= int(p.dst) <= last


def _ports(text: str) -> _Test:
    first, colon, last = text.partition(":")
    lo = _number(first, 65535)
    hi = _number(last, 65535) if colon else lo
    if lo > hi:
        raise _Refused(f"port range {text!r} starts after it ends")
    return lambda p: p.port is not None and lo <= p.port <= hi


def _icmp(text: str, wildcard: bool) -> _Test:
    """``T`` (every code) or ``T/C``; with ``wildcard`` (IPv4), type 255 matches any type and code."""
    kind, slash, code = text.partition("/")
    icmp_type = _number(kind, 255)
    codes = (_number(code, 255),) * 2 if slash else (0, 255)
    if wildcard and icmp_type == 255:
        return lambda p: True
    return lambda p: p.icmp_type == icmp_type and p.icmp_code is not None and codes[0] <= p.icmp_code <= codes[1]


def _states(option: str, text: str) -> _Test:
    names = frozenset(text.split(","))
    if not names or not names <= _STATES[option]:
        raise _Refused(f"{option} {text!r} names a state outside {sorted(_STATES[option])}")
    return lambda p: p.state.value in names


def _protocol(text: str, negated: bool) -> tuple[Proto, _Test]:
    proto = _PROTOCOLS.get(text)
    if proto is None or (negated and proto is Proto.ALL):
        raise _Refused(f"protocol {text!r} is not one of {sorted(_PROTOCOLS)}")
    return proto, (lambda p: True) if proto is Proto.ALL else (lambda p: p.protocol is proto)


class _Compiler:
    """One rule's tokens into a :class:`_Rule`."""

    def __init__(self) -> None:
        self.tests: list[_Test] = []
        self.modules: dict[str, int] = {}  # loaded module -> options given
        self.protocol: Proto | None = None
        self.action: _Action | None = None
        self.target = ""
        self.families: set[int] = set()
        self.seen: set[str] = set()

    def option(self, option: str, value: str, negated: bool) -> None:
        if negated and option not in _NEGATABLE:
            raise _Refused(f"'!' before {option}")
        if self.action is not None and option not in ("--reject-with", "--log-prefix"):
            raise _Refused(f"{option} after the target")
        if option in self.seen and option not in ("-m", "--match"):
            raise _Refused(f"{option} given twice")
        self.seen.add(option)
        test: _Test | None = None
        match option:
            case "-m" | "--match":
                self.load(value)
            case "-p" | "--protocol":
                proto, test = _protocol(value, negated)
                if not negated:
                    self.protocol = proto
            case "-d" | "--destination":
                test = self.network(value)
            case "-j" | "--jump" | "-g" | "--goto":
                self.jump(value, goto=option in ("-g", "--goto"))
            case "--reject-with":
                if self.target != "REJECT" or value not in _REJECT_WITH:
                    raise _Refused(f"--reject-with {value} (only {sorted(_REJECT_WITH)}, after -j REJECT)")
                self.families.add(_REJECT_WITH[value])
            case "--log-prefix":
                if self.target != "LOG":
                    raise _Refused("--log-prefix without -j LOG")
            case _:
                test = self.module_option(option, value)
        if test is not None:
            self.tests.append(_negated(test) if negated else test)

    def load(self, module: str) -> None:
        if module not in _MODULES:
            raise _Refused(f"unknown match -m {module}")
        if module in self.modules:
            raise _Refused(f"-m {module} given twice")
        needed = _NEEDS.get(module)
        if needed is not None and self.protocol is not needed:
            raise _Refused(f"-m {module} needs -p {needed} before it")
        self.modules[module] = 0

    def network(self, text: str) -> _Test:
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            raise _Refused(f"-d {text!r} is not a network") from None
        self.families.add(net.version)
        return _span(net.network_address, net.broadcast_address, text)

    def jump(self, target: str, *, goto: bool) -> None:
        self.target = target
        if goto:
            self.action = _Action.GOTO
        elif target in _VERDICTS:
            self.action = _Action.VERDICT
        elif target == "RETURN":
            self.action = _Action.RETURN
        elif target == "LOG":
            self.action = _Action.LOG
        else:
            self.action = _Action.JUMP
        if self.action in (_Action.JUMP, _Action.GOTO) and (target.isupper() or not _CHAIN.fullmatch(target)):
            raise _Refused(f"unknown target {target!r}")

    def module_option(self, option: str, value: str) -> _Test | None:
        module = next((m for m in self.modules if option in _MODULES[m]), None)
        if module is None:
            raise _Refused(f"unknown option {option}, or given before its -m")
        self.modules[module] += 1
        match option:
            case "--state" | "--ctstate":
                return _states(option, value)
            case "--dst-range":
                first, dash, last = value.partition("-")
                lo, hi = _address(first), _address(last if dash else first)
                self.families.add(lo.version)
                return _span(lo, hi, value)
            case "--dport" | "--destination-port":
                return _ports(value)
            case "--icmp-type" | "--icmpv6-type":
                return _icmp(value, wildcard=option == "--icmp-type")
            case "--hashlimit-above":
                if not _RATE.fullmatch(value):
                    raise _Refused(f"{option} {value!r} is not a rate")
                return lambda p: False  # one packet is never above a rate
            case "--limit":
                if not _RATE.fullmatch(value):
                    raise _Refused(f"{option} {value!r} is not a rate")
            case "--limit-burst" | "--hashlimit-burst" | "--hashlimit-htable-expire":
                _number(value, 2**32 - 1)
        return None  # --comment, the hashlimit mode and name: no effect on a match

    def rule(self) -> _Rule:
        if self.action is None:
            raise _Refused("no target")
        if bare := [m for m, given in self.modules.items() if not given]:
            raise _Refused(f"-m {bare[0]} without its options")
        if "hashlimit" in self.modules and "--hashlimit-above" not in self.seen:
            raise _Refused("hashlimit without --hashlimit-above")
        if len(self.families) > 1:
            raise _Refused("addresses of two families")
        family = next(iter(self.families), None)
        return _Rule(tuple(self.tests), self.action, self.target, family)


@functools.lru_cache(maxsize=1 << 16)
def _compile(body: str) -> _Rule:
    try:
        tokens = shlex.split(body)
    except ValueError as exc:
        raise _Refused(f"cannot split: {exc}") from None
    compiler = _Compiler()
    i = 0
    while i < len(tokens):
        negated = tokens[i] == "!"
        i += negated
        if i + 1 >= len(tokens):
            raise _Refused(f"{tokens[i] if i < len(tokens) else '!'} without a value")
        compiler.option(tokens[i], tokens[i + 1], negated)
        i += 2
    return compiler.rule()


@dataclass(slots=True)
class _Frame:
    chain: str
    rules: list[tuple[str, _Rule]]
    at: int
    #: The chains on the way to this one (its callers, and the chains it was gone to from).
    way: frozenset[str]


def _rules(table: Table, chain: str) -> list[tuple[str, _Rule]]:
    out = []
    head = f"-A {chain} "
    for line in table.rules(chain):
        if not line.startswith(head):
            raise WalkError(chain, line, f"does not start with {head!r}")
        try:
            out.append((line, _compile(line[len(head):])))
        except _Refused as exc:
            raise WalkError(chain, line, str(exc)) from None
    return out


def walk(table: Table, chain: str, packet: Packet) -> Walk:
    """Walk ``packet`` from ``chain`` until a verdict, or until ``chain`` returns (FALLTHROUGH)."""
    if not table.exists(chain):
        raise WalkError(chain, None, "no such chain")
    frame = _Frame(chain, _rules(table, chain), 0, frozenset({chain}))
    stack: list[_Frame] = []
    path = [chain]
    traversed = 0
    while True:
        if frame.at == len(frame.rules):
            if not stack:
                return Walk(Verdict.FALLTHROUGH, traversed, tuple(path))
            frame = stack.pop()
            continue
        line, rule = frame.rules[frame.at]
        frame.at += 1
        traversed += 1
        if rule.family is not None and rule.family != packet.dst.version:
            raise WalkError(frame.chain, line, f"an IPv{rule.family} rule met an IPv{packet.dst.version} packet")
        if not all(test(packet) for test in rule.tests):
            continue
        match rule.action:
            case _Action.VERDICT:
                return Walk(_VERDICTS[rule.target], traversed, tuple(path))
            case _Action.LOG:
                continue
            case _Action.RETURN:
                frame.at = len(frame.rules)
            case _Action.JUMP | _Action.GOTO:
                target = rule.target
                if target in frame.way:
                    raise WalkError(frame.chain, line, f"a loop: {target} is already on the way")
                if not table.exists(target):
                    raise WalkError(frame.chain, line, f"no chain {target!r}")
                if len(path) >= MAX_ENTRIES:
                    raise WalkError(frame.chain, line, f"more than {MAX_ENTRIES} chain entries")
                path.append(target)
                if rule.action is _Action.JUMP:
                    stack.append(frame)
                frame = _Frame(target, _rules(table, target), 0, frame.way | {target})
            case _:
                assert_never(rule.action)
