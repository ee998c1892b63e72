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
* **Nothing from outside leaves its token** (issue 13) — this is the one place
  restore text is made, and every token passes a strict grammar before it is
  written: an argument is printable ASCII from a fixed set (no whitespace, no
  control character, no quote, backslash or ``#``), at most :data:`MAX_TOKEN`
  characters; the one exception is a single trailing space (silk's log prefixes),
  printed quoted. A chain name is at most 28 characters and starts with a letter or
  digit (no ``-``, ``:``, ``*`` or ``!`` that the tool would read as an option, a
  declaration or a table). A rule line stays under :data:`MAX_LINE` characters
  (``iptables-restore`` reads 10 KiB lines and would parse the rest as a new line).
  Anything else raises :class:`~dynamic_asgs.errors.UnsafeToken`. The check runs
  when a token is first quoted, inside the per-token memo, so repeated tokens
  cost nothing more.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from dynamic_asgs.asg.chains import MAX_CHAIN_NAME, Argv, shared_chain_digest
from dynamic_asgs.asg.translate import Chain, FamilyChains
from dynamic_asgs.errors import UnsafeToken

__all__ = [
    "HASH_COMMENT_PREFIX",
    "HASH_RE",
    "MAX_LINE",
    "MAX_TOKEN",
    "Renderer",
    "chain_lines",
    "content_hash",
    "declare",
    "delete_chain",
    "delete_saved_rule",
    "family_lines",
    "flush",
    "insert_line",
    "quote",
    "remark",
    "rule_line",
]

HASH_COMMENT_PREFIX = "dasg:"
#: Finds our hash comment in an ``iptables-save`` rule line.
HASH_RE = re.compile(r'--comment "?' + re.escape(HASH_COMMENT_PREFIX) + r'([0-9a-f]{16})"?')
#: The longest argument written (``iptables-restore`` refuses 1024 and more).
MAX_TOKEN = 256
#: The longest line written (``iptables-restore`` reads 10240-byte lines and parses the rest as another line).
MAX_LINE = 8192
_CHARS = r"[A-Za-z0-9_.:/,!+=@%-]"
_BARE = re.compile(_CHARS + "+")
_PADDED = re.compile(_CHARS + "+ ")  # silk's log prefixes end in one space
_CHAIN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_CHAIN_NAME - 1}}}")
_DIGEST = re.compile(r"[0-9a-f]{16}")
_MAX_BODY = MAX_LINE - 128  # room for "-A <chain>" and the hash comment
_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _why(token: str) -> str:
    """The reason ``token`` is not a safe argument (it is not one)."""
    if not token:
        return "empty"
    if len(token) > MAX_TOKEN:
        return f"longer than {MAX_TOKEN} characters"
    body = token[:-1] if len(token) > 1 and token.endswith(" ") else token  # one trailing space is allowed
    char = next(c for c in body if not _BARE.fullmatch(c))
    if char in _BREAKS:
        return "contains a line break"
    if char.isspace():
        return "contains whitespace"
    if not char.isascii():
        return f"contains the non-ASCII character {char!r}"
    if not char.isprintable():
        return f"contains the control character {char!r}"
    return f"contains {char!r}"


def quote(arg: str) -> str:
    """One argument as written in a restore line; :class:`UnsafeToken` unless it is safe."""
    if len(arg) <= MAX_TOKEN:
        if _BARE.fullmatch(arg):
            return arg
        if _PADDED.fullmatch(arg):
            return f'"{arg}"'
    raise UnsafeToken(arg, _why(arg))


def _chain(name: str) -> str:
    if _CHAIN.fullmatch(name):
        return name
    if not name or len(name) > MAX_CHAIN_NAME:
        raise UnsafeToken(name, f"a chain name has 1 to {MAX_CHAIN_NAME} characters")
    if not _CHAIN.fullmatch(name[0]):
        raise UnsafeToken(name, "a chain name starts with a letter or a digit")
    raise UnsafeToken(name, "a chain name holds only letters, digits, '_', '.' and '-'")


def _line(text: str) -> str:
    if len(text) > MAX_LINE:
        raise UnsafeToken(text, f"a line longer than {MAX_LINE} characters")
    return text


def rule_line(chain: str, argv: Argv, comment: str | None = None) -> str:
    """``-A <chain> [-m comment --comment <comment>] <argv>``."""
    head = f"-A {_chain(chain)}"
    if comment is not None:
        head += f" -m comment --comment {quote(comment)}"
    return _line(head + " " + " ".join(quote(a) for a in argv))


def insert_line(chain: str, argv: Argv, position: int = 1) -> str:
    """``-I <chain> <position> <argv>``."""
    return _line(f"-I {_chain(chain)} {int(position)} " + " ".join(quote(a) for a in argv))


def declare(chain: str) -> str:
    """A chain declaration; in a ``--noflush`` restore it creates or flushes the chain."""
    return f":{_chain(chain)} - [0:0]"


def flush(chain: str) -> str:
    """``-F <chain>``: fails the restore when the chain is missing (never creates it)."""
    return f"-F {_chain(chain)}"


def delete_chain(chain: str) -> str:
    """``-X <chain>`` (legal once the chain is empty and nothing refers to it)."""
    return f"-X {_chain(chain)}"


def delete_saved_rule(saved: str) -> str:
    """The deletion of a rule as ``iptables-save`` printed it (``-A <chain> ...`` -> ``-D <chain> ...``).

    The saved text is the kernel's own and is written back as it is, provided it is one
    ``-A`` line of printable ASCII.
    """
    if not (saved.startswith("-A ") and saved.isascii() and saved.isprintable()):
        raise UnsafeToken(saved, "not one saved -A rule line")
    chain, _, _ = saved[3:].partition(" ")
    _chain(chain)
    return _line(f"-D {saved[3:]}")


def remark(text: str) -> str:
    """A ``#`` comment line (restore and save text ignore it); refused if it holds a line break or control character."""
    if not text.isprintable():
        raise UnsafeToken(text, "a comment line holds no line break or control character")
    return _line(f"# {text}")


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
            text = " ".join(parts)
            if len(text) > _MAX_BODY:
                raise UnsafeToken(text, f"a rule longer than {_MAX_BODY} characters")
            entry = (argv, text)
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
        """Every ``-A`` line of ``family``'s own chains (ASG, helpers, then parent), hash comments included."""
        if not _DIGEST.fullmatch(digest):
            raise UnsafeToken(digest, "a content hash is 16 hex digits")
        tagged = (family.asg.name, family.parent.name)
        for chain in family.chains:
            yield from self._lines(chain, digest if chain.name in tagged else None)

    def shared_rules(self, chain: Chain) -> Iterator[str]:
        """Every ``-A`` line of a shared chain; its first carries the hash its name holds."""
        digest = shared_chain_digest(chain.name)
        if not _DIGEST.fullmatch(digest):
            raise UnsafeToken(chain.name, "a shared chain's name ends in 16 hex digits")
        return self._lines(chain, digest)

    def _lines(self, chain: Chain, digest: str | None) -> Iterator[str]:
        """``chain``'s ``-A`` lines; with ``digest``, the first carries it as a hash comment."""
        head = f"-A {_chain(chain.name)} "
        rules = iter(chain.rules)
        if digest is not None:
            for argv in rules:  # the first rule only
                yield f"{head}-m comment --comment {HASH_COMMENT_PREFIX}{digest} {self.body(argv)}"
                break
        bodies, body = self._bodies, self.body
        for argv in rules:
            entry = bodies.get(id(argv))
            yield head + (entry[1] if entry is not None else body(argv))


def content_hash(family: FamilyChains) -> str:
    """A 16-hex-digit digest of everything ``family`` writes (names and rules)."""
    return Renderer().digest(family)


def chain_lines(family: FamilyChains, digest: str | None = None) -> dict[str, list[str]]:
    """The rule lines of each of ``family``'s chains, hash comments included: shared chains first."""
    renderer = Renderer()
    digest = digest or renderer.digest(family)
    out: dict[str, list[str]] = {chain.name: list(renderer.shared_rules(chain)) for chain in family.shared}
    out.update((chain.name, []) for chain in family.chains)
    for line in renderer.rules(family, digest):
        out[line[3 : line.index(" ", 3)]].append(line)
    return out


def family_lines(family: FamilyChains, digest: str | None = None) -> list[str]:
    """Declarations then rules: a self-contained restore fragment for one family."""
    lines = chain_lines(family, digest)
    return [declare(name) for name in lines] + [line for body in lines.values() for line in body]
