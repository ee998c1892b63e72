"""A fake iptables for one family: interprets restore payloads into a table model.

Shipped in the package so that unit tests and simulated cells (the propagation
benchmark) exercise the same :class:`~dynamic_asgs.iptables.runner.Runner` seam
as the real :class:`~dynamic_asgs.iptables.runner.IptablesRunner`. Tests assert
the resulting table, not lists of calls. It never replaces the tests against real
iptables; it models what the dataplane relies on:

* a restore is atomic: every line applies to a transaction overlay that becomes
  the table only when ``COMMIT`` is reached without error;
* ``:chain - [0:0]`` creates or flushes a chain; ``-A``, ``-I``, ``-D``, ``-F``,
  ``-X``, ``-N`` and ``-E`` behave as in iptables: appending to or flushing a
  missing chain fails, a jump needs an existing target chain, ``-X`` needs an
  empty, unreferenced user chain; a refusal names the 1-based line;
* ``save`` renders the table in ``iptables-save`` format (``-j``/``-g`` spelled
  short, comments quoted) and parses it with the real parser;
* failure injection (:class:`Fault`): refuse at a matching line, at ``COMMIT``
  (nft reports some errors there), without a line number, or time out on the lock.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from dynamic_asgs.errors import LockTimeout, RestoreError
from dynamic_asgs.iptables.render import quote
from dynamic_asgs.iptables.runner import RestoreStats, error_context
from dynamic_asgs.iptables.saved import SavedTable, parse_chain_listing, parse_save

__all__ = ["BUILTIN_CHAINS", "FakeRunner", "FakeTable", "Fault"]

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
_SHORT = {"--jump": "-j", "--goto": "-g", "--append": "-A"}


@dataclass
class Fault:
    """A refusal the fake injects into the next ``times`` restores whose payload matches ``pattern``.

    The refusal names the first matching line, or the ``COMMIT`` line when
    ``at_commit``; ``unnumbered`` drops the line number; ``lock_timeout`` raises
    :class:`LockTimeout` instead. ``times=None`` keeps the fault forever.
    """

    pattern: str | None = None
    message: str = "injected failure"
    at_commit: bool = False
    unnumbered: bool = False
    lock_timeout: bool = False
    times: int | None = 1

    def line(self, lines: list[str]) -> int | None:
        """The 1-based line this fault refuses in ``lines``, or None if it does not apply."""
        if self.pattern is None:
            return len(lines)
        regex = re.compile(self.pattern)
        for number, text in enumerate(lines, 1):
            if regex.search(text):
                return len(lines) if self.at_commit else number
        return None


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _tokens(line: str) -> list[str]:
    """Split a restore line and spell it as ``iptables-save`` does: short jumps, comments quoted."""
    quoted = any(c in line for c in "\"'\\")
    out = [_SHORT.get(t, t) for t in (shlex.split(line) if quoted else line.split())]
    for i in range(1, len(out)):
        if out[i - 1] == "--comment":
            out[i] = '"' + out[i] + '"'
        elif quoted:
            out[i] = quote(out[i])
    return out


def _target(tokens: list[str]) -> str | None:
    for i in range(len(tokens) - 2, -1, -1):
        if tokens[i] in ("-j", "-g"):
            return tokens[i + 1]
    return None


class FakeTable:
    """A filter table: chains of rule lines (in save format), policies, and a reference index."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {name: [] for name in BUILTIN_CHAINS}
        self.policies: dict[str, str] = dict.fromkeys(BUILTIN_CHAINS, "ACCEPT")
        self._refs: dict[str, dict[str, int]] = {}
        #: Packets that reached each chain's final rule since the chain was last written (kernel counters).
        self.final_packets: dict[str, int] = {}

    def exists(self, chain: str) -> bool:
        return chain in self.chains

    def rules(self, chain: str) -> list[str]:
        """The chain's rules as ``iptables -S`` shows them (``-A chain ...``)."""
        return list(self.chains[chain])

    def referrers(self, chain: str) -> set[str]:
        """The chains holding a rule that jumps or goes to ``chain``."""
        return {name for name, count in self._refs.get(chain, {}).items() if count}

    def user_chains(self) -> list[str]:
        return sorted(c for c in self.chains if c not in BUILTIN_CHAINS)

    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.chains.values())

    def create_chain(self, chain: str, rules: Iterable[str] = ()) -> None:
        """Create (or replace) ``chain`` with ``rules`` (argument strings, without ``-A chain``), as the CNI does."""
        self.load([f":{chain} - [0:0]", *(f"-A {chain} {rule}" for rule in rules)])

    def delete_chain(self, chain: str) -> None:
        """Delete ``chain`` and every rule elsewhere that jumps to it (a CNI tearing a container down)."""
        for referrer in self.referrers(chain):
            self._set(referrer, [r for r in self.chains[referrer] if _target(r.split()) != chain])
        self._set(chain, None)
        self.final_packets.pop(chain, None)

    def load(self, lines: Iterable[str]) -> None:
        """Apply restore lines (without ``*filter``/``COMMIT``) directly; raise ValueError if refused."""
        txn = _Transaction(self)
        for number, line in enumerate(lines, 1):
            try:
                txn.apply(line)
            except _Refused as exc:
                raise ValueError(f"line {number}: {exc}") from None
        txn.commit()

    def save_lines(self) -> list[str]:
        """The table in ``iptables-save`` format."""
        names = [*BUILTIN_CHAINS, *self.user_chains()]
        out = ["*filter"]
        out += [f":{name} {self.policies.get(name, '-')} [0:0]" for name in names]
        for name in names:
            out += self.chains[name]
        out.append("COMMIT")
        return out

    def reach_final_rule(self, chain: str, packets: int = 1) -> None:
        """Count ``packets`` as having reached ``chain``'s final rule (traffic the test sends)."""
        self.final_packets[chain] = self.final_packets.get(chain, 0) + packets

    def _set(self, chain: str, rules: list[str] | None) -> None:
        for rule in self.chains.get(chain, ()):
            self._count(chain, rule, -1)
        if rules is None:
            self.chains.pop(chain, None)
            return
        self.chains[chain] = rules
        for rule in rules:
            self._count(chain, rule, 1)

    def _count(self, chain: str, rule: str, delta: int) -> None:
        target = _target(rule.split())
        if target is not None and target not in BUILTIN_CHAINS and not target.isupper():
            refs = self._refs.setdefault(target, {})
            refs[chain] = refs.get(chain, 0) + delta
            if not refs[chain]:
                del refs[chain]
                if not refs:
                    del self._refs[target]


class _Transaction:
    """Changes to a :class:`FakeTable` that become visible only on :meth:`commit`."""

    def __init__(self, table: FakeTable) -> None:
        self.table = table
        self.over: dict[str, list[str] | None] = {}
        self.policies: dict[str, str] = {}

    def get(self, chain: str) -> list[str] | None:
        return self.over[chain] if chain in self.over else self.table.chains.get(chain)

    def need(self, chain: str) -> list[str]:
        rules = self.get(chain)
        if rules is None:
            raise _Refused(0, f"chain '{chain}' does not exist")
        if chain not in self.over:
            rules = self.over[chain] = list(rules)
        return rules

    def apply(self, line: str) -> None:
        line = line.strip()
        if not line or line.startswith("#") or line in ("*filter", "COMMIT"):
            return
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name in BUILTIN_CHAINS:
                self.policies[name] = policy
            else:
                self.over[name] = []
            return
        tokens = _tokens(line)
        command, args = tokens[0], tokens[1:]
        handler = {"-A": self._append, "-I": self._insert, "-D": self._delete, "-F": self._flush,
                   "-N": self._new, "-E": self._rename, "-X": self._delete_chain}.get(command)
        if handler is None or not args:
            raise _Refused(0, f"unsupported command {line!r}")
        handler(args)

    def _check_target(self, args: list[str]) -> None:
        target = _target(args)
        if target is not None and not target.isupper() and self.get(target) is None:
            raise _Refused(0, f"Couldn't load target `{target}':No such file or directory")

    def _append(self, args: list[str]) -> None:
        rules = self.need(args[0])
        self._check_target(args[1:])
        rules.append(" ".join(["-A", *args]))

    def _insert(self, args: list[str]) -> None:
        rules = self.need(args[0])
        rest = args[1:]
        position = int(rest.pop(0)) if rest and rest[0].isdigit() else 1
        self._check_target(rest)
        rules.insert(position - 1, " ".join(["-A", args[0], *rest]))

    def _delete(self, args: list[str]) -> None:
        rules = self.need(args[0])
        text = " ".join(["-A", *args])
        if text not in rules:
            raise _Refused(0, "Bad rule (does a matching rule exist in that chain?)")
        rules.remove(text)

    def _flush(self, args: list[str]) -> None:
        self.need(args[0]).clear()

    def _new(self, args: list[str]) -> None:
        if self.get(args[0]) is not None:
            raise _Refused(0, "Chain already exists")
        self.over[args[0]] = []

    def _rename(self, args: list[str]) -> None:
        old, new = args[0], args[1]
        rules = self.need(old)
        if self.get(new) is not None:
            raise _Refused(0, "File exists")
        self.over[new] = [r.replace(f"-A {old} ", f"-A {new} ", 1) for r in rules]
        self.over[old] = None
        for name in self._referrers(old):
            self.over[name] = [_retarget(r, old, new) for r in self.need(name)]

    def _delete_chain(self, args: list[str]) -> None:
        chain = args[0]
        if chain in BUILTIN_CHAINS:
            raise _Refused(0, "Operation not permitted")
        if self.need(chain):
            raise _Refused(0, "Directory not empty")
        if self._referrers(chain):
            raise _Refused(0, "Too many links")
        self.over[chain] = None

    def _referrers(self, chain: str) -> set[str]:
        names = {n for n in self.table.referrers(chain) if n not in self.over}
        for name, rules in self.over.items():
            if rules and any(_target(r.split()) == chain for r in rules):
                names.add(name)
        return names

    def commit(self) -> None:
        for name, rules in self.over.items():
            self.table._set(name, rules)
            self.table.final_packets.pop(name, None)  # written anew: its counters start from zero
        self.table.policies.update(self.policies)


def _retarget(rule: str, old: str, new: str) -> str:
    tokens = rule.split()
    for i in range(len(tokens) - 1):
        if tokens[i] in ("-j", "-g") and tokens[i + 1] == old:
            tokens[i + 1] = new
    return " ".join(tokens)


class FakeRunner:
    """A :class:`~dynamic_asgs.iptables.runner.Runner` over a :class:`FakeTable`, with fault injection."""

    def __init__(self, version: int = 4, table: FakeTable | None = None, *, record: bool = False) -> None:
        self._version = version
        self.table = table if table is not None else FakeTable()
        self.faults: list[Fault] = []
        self.record = record
        self.payloads: list[list[str]] = []
        self.saves = 0
        self.reads = 0  # targeted reads (read_chains)
        self.restores = 0
        self.commits = 0

    @property
    def version(self) -> int:
        return self._version

    def inject(self, fault: Fault) -> None:
        """Make future restores fail as ``fault`` describes."""
        self.faults.append(fault)

    def save(self) -> SavedTable:
        self.saves += 1
        return parse_save(self.table.save_lines())

    def read_chains(self, names: Collection[str]) -> SavedTable:
        self.reads += 1
        out = SavedTable()
        for name in names:
            if self.table.exists(name):
                one = parse_chain_listing(name, self.table.rules(name))
                out.chains |= one.chains
                out.info.update(one.info)
                for target, refs in one.referrers.items():
                    out.referrers.setdefault(target, set()).update(refs)
        return out

    def final_reject_packets(self, prefix: str) -> dict[str, int]:
        """As :meth:`IptablesRunner.final_reject_packets`, from :attr:`FakeTable.final_packets`."""
        self.saves += 1
        return {name: self.table.final_packets.get(name, 0) for name, rules in self.table.chains.items()
                if name.startswith(prefix) and rules and " -j REJECT" in f" {rules[-1]}"}

    def restore(self, payload: Iterable[str]) -> RestoreStats:
        start = time.monotonic()
        lines = list(payload)
        self.restores += 1
        if self.record:
            self.payloads.append(lines)
        self._injected(lines)
        txn = _Transaction(self.table)
        for number, line in enumerate(lines, 1):
            try:
                txn.apply(line)
            except _Refused as exc:
                raise RestoreError(f"fake-restore refused the payload at line {number}: {exc}", line=number,
                                   context=error_context(lines, number)) from None
        txn.commit()
        self.commits += 1
        return RestoreStats(lines=len(lines), seconds=time.monotonic() - start, lock_wait=0.0)

    def _injected(self, lines: list[str]) -> None:
        for fault in list(self.faults):
            number = fault.line(lines)
            if number is None:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            if fault.lock_timeout:
                raise LockTimeout(f"fake lock: {fault.message}")
            if fault.unnumbered:
                raise RestoreError(f"fake-restore refused the payload: {fault.message}")
            raise RestoreError(f"fake-restore refused the payload at line {number}: {fault.message}",
                               line=number, context=error_context(lines, number))
