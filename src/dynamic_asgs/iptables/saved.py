"""Read back a filter table from ``iptables-save``: chain names, our hash comments, jumps.

``iptables-save`` does not round-trip rule text (extensions reorder and normalise
their arguments), so nothing here compares rules. It reads only what identifies
our chains and what links them:

* every chain name (so the agent knows which CNI parent chains exist);
* for the chains we track (``asg-``, ``casg-``, ``netout--``:
  :func:`~dynamic_asgs.asg.chains.is_tracked_chain`): the number of rules,
  the ``dasg:<hash>`` comment on the first rule (see :mod:`.render`), whether a rule
  accepts RELATED,ESTABLISHED traffic (the mark of the static rules a CNI inserts into
  a parent chain; our own parents never hold one), and a fingerprint of the rules'
  text exactly as saved (drift detection: a chain edited in place keeps its first
  rule and its count, never its fingerprint);
* which chains jump (``-j``) or go (``-g``) to a tracked chain, so that a chain is
  deleted only together with every reference to it.

The parser streams: it takes any iterable of lines (a pipe from ``iptables-save``)
and keeps nothing per rule, so reading a million-rule table costs a few MB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from dynamic_asgs.asg.chains import TRACKED_PREFIXES
from dynamic_asgs.iptables.render import HASH_RE

__all__ = ["ChainInfo", "SavedTable", "count_listing_lines", "jump_target", "parse_chain_listing", "parse_save"]

_ESTABLISHED = "RELATED,ESTABLISHED"


@dataclass(slots=True)
class ChainInfo:
    """What a tracked chain holds, as far as identification needs."""

    digest: str | None = None
    rules: int = 0
    targets: tuple[str, ...] = ()
    #: A rule accepts RELATED,ESTABLISHED traffic (static rules a CNI inserted; never in our parents).
    established: bool = False
    #: Hash of the chain's rule lines as saved; None when not read from a whole-table save.
    fingerprint: str | None = None

    def add_target(self, name: str) -> None:
        if name not in self.targets:
            self.targets = (*self.targets, name)


@dataclass
class SavedTable:
    """One family's filter table: every chain name, tracked chains' details, references."""

    chains: set[str] = field(default_factory=set)
    info: dict[str, ChainInfo] = field(default_factory=dict)
    referrers: dict[str, set[str]] = field(default_factory=dict)
    #: Rule lines (``-A ...``) of untracked chains (e.g. FORWARD) that jump to a tracked chain, by
    #: target: the CNI's hooks, which it deletes by turning ``-A`` into ``-D``.
    hooks: dict[str, list[str]] = field(default_factory=dict)


def jump_target(line: str) -> str | None:
    """The chain or target a save-format rule line jumps or goes to (the last ``-j``/``-g``)."""
    at = max(line.rfind(" -j "), line.rfind(" -g "))
    if at < 0:
        return None
    start = at + 4
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]


def parse_save(lines: Iterable[str], *, fingerprints: bool = True) -> SavedTable:
    """Parse the ``*filter`` section of ``iptables-save`` output (other tables are ignored).

    With ``fingerprints`` every tracked chain gets :attr:`ChainInfo.fingerprint`.
    """
    table = SavedTable()
    chains, info, referrers = table.chains, table.info, table.referrers
    hashers: dict[str, hashlib.blake2b] = {}
    inside = False
    for raw in lines:
        if not inside:
            inside = raw.startswith("*filter")
            continue
        line = raw.rstrip("\n")
        if line.startswith("-A "):
            end = line.find(" ", 3)
            chain = line[3:end] if end > 0 else line[3:]
            target = jump_target(line)
            tracked = info.get(chain)
            if tracked is not None:
                tracked.rules += 1
                if tracked.rules == 1:
                    found = HASH_RE.search(line)
                    tracked.digest = found.group(1) if found else None
                if target is not None and target.startswith(TRACKED_PREFIXES):
                    tracked.add_target(target)
                if _ESTABLISHED in line:
                    tracked.established = True
                hasher = hashers.get(chain)
                if hasher is not None:
                    hasher.update(line.encode())
                    hasher.update(b"\n")
            if target is not None and target.startswith(TRACKED_PREFIXES):
                referrers.setdefault(target, set()).add(chain)
                if tracked is None:
                    table.hooks.setdefault(target, []).append(line)
        elif line.startswith(":"):
            name = line[1 : line.index(" ")] if " " in line else line[1:]
            chains.add(name)
            if name.startswith(TRACKED_PREFIXES):
                info[name] = ChainInfo()
                if fingerprints:
                    hashers[name] = hashlib.blake2b(digest_size=8)
        elif line.startswith("COMMIT"):
            break
    for name, hasher in hashers.items():
        info[name].fingerprint = hasher.hexdigest()
    return table


def parse_chain_listing(name: str, lines: Iterable[str]) -> SavedTable:
    """One chain as ``iptables -S <name>`` prints it, as a table holding only that chain.

    The listing's ``-A`` lines are those of a save; ``-N``/``-P`` lines declare the chain.
    No fingerprint: only whole-table saves are compared with each other.
    """
    rules = [line.rstrip("\n") for line in lines if line.startswith("-A ")]
    return parse_save(["*filter", f":{name} - [0:0]", *rules, "COMMIT"], fingerprints=False)


def count_listing_lines(lines: Iterable[str]) -> dict[str, int]:
    """Per table, the number of lines ``iptables -t <table> -S`` prints, from one ``iptables-save`` of all tables.

    ``-S`` prints one ``-P`` line per builtin chain, one ``-N`` per user chain and one
    ``-A`` per rule; the save prints one ``:chain`` line per chain of either kind and the
    same ``-A`` lines. So a table's count is its ``:`` lines plus its ``-A`` lines. Only
    the first characters of each line are looked at: this is netmon's cheap count (no
    per-rule parsing). Tables absent from the save are absent from the result.
    """
    counts: dict[str, int] = {}
    table: str | None = None
    n = 0
    for line in lines:
        if line.startswith(("-A ", ":")):
            n += 1
        elif line.startswith("*"):
            table, n = line[1:].strip(), 0
        elif line.startswith("COMMIT") and table is not None:
            counts[table] = counts.get(table, 0) + n
            table, n = None, 0
    return counts
