"""Render a container's chains as ``iptables-restore`` lines, with a content hash.

The hash covers every line the container's chains hold in one family. It is
carried in an iptables comment on the first rule of the ASG chain and on the
parent chain's jump, so that a reader of ``iptables-save`` can tell, from chain
names and comments alone, whether a container's chains are exactly what we
would write (Felix's "hashed chains"; DESIGN.md §4).

Goals and the mechanism serving each:

* **One definition** — :func:`content_hash` and :func:`chain_lines` are what the
  ``translate`` tool prints and what the agent's dataplane writes.
* **Cheap at a million rules** — a :class:`Renderer` memoises, for one cycle,
  the hash input and the rendered text of each argv tuple. Containers of one
  space share their accept argv tuples (``GroupIndex``), so each distinct rule is
  quoted and encoded once per cycle instead of once per container. The memo is
  keyed by object identity and keeps the tuples alive, so an id is never reused
  while the renderer lives; drop the renderer after the cycle.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.translate import FamilyChains

__all__ = [
    "HASH_COMMENT_PREFIX",
    "HASH_RE",
    "Renderer",
    "chain_lines",
    "content_hash",
    "declare",
    "family_lines",
    "quote",
    "rule_line",
]

HASH_COMMENT_PREFIX = "dasg:"
#: Finds our hash comment in an ``iptables-save`` rule line.
HASH_RE = re.compile(r'--comment "?' + re.escape(HASH_COMMENT_PREFIX) + r'([0-9a-f]{16})"?')
_SAFE = re.compile(r"^[A-Za-z0-9_.:/,!+=@%-]+$")


def quote(arg: str) -> str:
    """Quote one argument for an ``iptables-restore`` line when it needs it."""
    if _SAFE.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_line(chain: str, argv: Argv, comment: str | None = None) -> str:
    """``-A <chain> [-m comment --comment <comment>] <argv>``."""
    head = f"-A {chain}"
    if comment is not None:
        head += f" -m comment --comment {quote(comment)}"
    return head + " " + " ".join(quote(a) for a in argv)


def declare(chain: str) -> str:
    """A chain declaration; in a ``--noflush`` restore it creates or flushes the chain."""
    return f":{chain} - [0:0]"


class Renderer:
    """Hashes and renders many containers' chains, sharing the work for shared argv tuples."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[Argv, bytes]] = {}
        self._bodies: dict[int, tuple[Argv, str]] = {}
        self._quoted: dict[str, str] = {}

    def _key(self, argv: Argv) -> bytes:
        entry = self._keys.get(id(argv))
        if entry is None:
            entry = (argv, ("\x1f".join(argv) + "\n").encode())
            self._keys[id(argv)] = entry
        return entry[1]

    def body(self, argv: Argv) -> str:
        """The quoted argv of one rule, as it follows ``-A <chain>``."""
        entry = self._bodies.get(id(argv))
        if entry is None:
            quoted = self._quoted
            parts = []
            for arg in argv:
                text = quoted.get(arg)
                if text is None:
                    text = quoted[arg] = quote(arg)
                parts.append(text)
            entry = (argv, " ".join(parts))
            self._bodies[id(argv)] = entry
        return entry[1]

    def digest(self, family: FamilyChains) -> str:
        """:func:`content_hash` of ``family``."""
        parts: list[bytes] = []
        key = self._key
        for chain in family.chains:
            parts.append(chain.name.encode() + b"\0")
            parts.extend([key(argv) for argv in chain.rules])
        return hashlib.sha256(b"".join(parts)).hexdigest()[:16]

    def rules(self, family: FamilyChains, digest: str) -> Iterator[str]:
        """Every ``-A`` line of ``family`` (ASG, helpers, then parent), hash comments included."""
        tag = f" -m comment --comment {HASH_COMMENT_PREFIX}{digest} "
        tagged = (family.asg.name, family.parent.name)
        bodies, body = self._bodies, self.body
        for chain in family.chains:
            head = f"-A {chain.name} "
            rules = iter(chain.rules)
            if chain.name in tagged:
                for argv in rules:  # the first rule only
                    yield f"-A {chain.name}{tag}{body(argv)}"
                    break
            for argv in rules:
                entry = bodies.get(id(argv))
                yield head + (entry[1] if entry is not None else body(argv))


def content_hash(family: FamilyChains) -> str:
    """A 16-hex-digit digest of everything ``family`` writes (names and rules)."""
    return Renderer().digest(family)


def chain_lines(family: FamilyChains, digest: str | None = None) -> dict[str, list[str]]:
    """The rule lines of each of ``family``'s chains, hash comments included."""
    renderer = Renderer()
    digest = digest or renderer.digest(family)
    out: dict[str, list[str]] = {chain.name: [] for chain in family.chains}
    for line in renderer.rules(family, digest):
        out[line[3 : line.index(" ", 3)]].append(line)
    return out


def family_lines(family: FamilyChains, digest: str | None = None) -> list[str]:
    """Declarations then rules: a self-contained restore fragment for one family."""
    lines = chain_lines(family, digest)
    return [declare(name) for name in lines] + [line for body in lines.values() for line in body]
