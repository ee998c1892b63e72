"""Render a container's chains as ``iptables-restore`` lines, with a content hash.

The hash covers every line the container's chains hold in one family. It is
carried in an iptables comment on the first rule of the ASG chain and on the
parent chain's jump, so that a reader of ``iptables-save`` can tell, from chain
names and comments alone, whether a container's chains are exactly what we
would write (Felix's "hashed chains"; DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
import re

from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.translate import FamilyChains

__all__ = [
    "HASH_COMMENT_PREFIX",
    "HASH_RE",
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


def content_hash(family: FamilyChains) -> str:
    """A 16-hex-digit digest of everything ``family`` writes (names and rules)."""
    digest = hashlib.sha256()
    for chain in family.chains:
        digest.update(chain.name.encode())
        digest.update(b"\0")
        for argv in chain.rules:
            digest.update("\x1f".join(argv).encode())
            digest.update(b"\n")
    return digest.hexdigest()[:16]


def chain_lines(family: FamilyChains, digest: str | None = None) -> dict[str, list[str]]:
    """The rule lines of each of ``family``'s chains, hash comments included."""
    digest = digest or content_hash(family)
    comment = HASH_COMMENT_PREFIX + digest
    out: dict[str, list[str]] = {}
    for chain in family.chains:
        lines = []
        for i, argv in enumerate(chain.rules):
            tagged = i == 0 and chain.name in (family.asg.name, family.parent.name)
            lines.append(rule_line(chain.name, argv, comment if tagged else None))
        out[chain.name] = lines
    return out


def family_lines(family: FamilyChains, digest: str | None = None) -> list[str]:
    """Declarations then rules: a self-contained restore fragment for one family."""
    lines = chain_lines(family, digest)
    return [declare(name) for name in lines] + [line for body in lines.values() for line in body]
