"""The restore transaction of one cycle for one family: one ``*filter`` ... ``COMMIT`` section.

Layout, in the order iptables needs it::

    *filter
    :asgs-<hash> - [0:0]        shared chains the writes need that the kernel lacks
    :asg-<h> - [0:0]            ASG and helper (log) chains of every written container:
    :netout--<h>--log - [0:0]   declared, hence created or flushed, in this commit
    :casg-<o> - [0:0]           every chain to delete (flushed, so that -X is legal)
    -A asgs-<hash> ...          the shared chains' rules
    -F netout--<h>              the CNI's parent chain: flushed, never created
    -A asg-<h> ... / helpers / parent (jump + REJECT)     for every written container
    -F netout--<o>              a parent left without its ASG chain: lone REJECT (fail closed)
    -A netout--<o> -j REJECT ...
    -X casg-<o>                 deletions last
    COMMIT

Goals and the mechanism serving each:

* **Never create a parent chain** (they belong to the CNI) — parents are flushed
  with ``-F``, which fails the restore when the chain is missing; a declaration
  would silently create it.
* **Map a refusal to its owner** — the line ranges of every part are computed up
  front from chain lengths, so :meth:`Payload.owner_of` tells which container,
  parent guard, closed parent or deletion a failing line belongs to without
  keeping the text.
* **Stream** — lines are generated each time the payload is iterated (the runner
  iterates once to write and, on a refusal, once more for the numbered context);
  the payload holds references to the plans, never their rendered lines.
* **Hash while the kernel works** — writes without a digest get it computed as
  their lines are generated (:meth:`Payload.resolved` returns them with it).
* **Never an empty transaction** — building one with nothing to do is an error;
  callers check :attr:`Step.empty` first.
* **A refused token fails one container** — when the renderer refuses a token of a
  container's chains (:class:`~dynamic_asgs.errors.ValidationError`), iteration
  stops with :class:`~dynamic_asgs.errors.RenderRefused` naming the container; the
  runner kills the tool before its input ends, so nothing is committed, and the
  cycle retries without it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import Chain, FamilyChains
from dynamic_asgs.errors import RenderRefused, ValidationError
from dynamic_asgs.iptables.render import Renderer, declare

__all__ = ["FRAME", "Owner", "OwnerKind", "Payload", "RenderRefused", "Write"]


@dataclass(frozen=True, slots=True)
class Write:
    """One container's chains to write in this family, with their content hash.

    ``digest`` is None when nothing had to be compared with it (no chain of that name
    in the kernel): the payload then hashes the container while the restore streams,
    so hashing overlaps the kernel's work instead of preceding it.
    """

    handle: str
    family: FamilyChains
    digest: str | None


class OwnerKind(StrEnum):
    """Which part of the transaction a payload line belongs to (its value is logged as ``owner``)."""

    #: A written container's chains; the owner's ``name`` is its handle.
    WRITE = "write"
    #: The ``-F`` of a written container's parent chain; ``name`` is the handle.
    GUARD = "guard"
    #: The ``-F`` of a parent set to a lone REJECT; ``name`` is the parent.
    CLOSE_GUARD = "close-guard"
    #: The lone REJECT of a closed parent; ``name`` is the parent.
    CLOSE = "close"
    #: The declaration or ``-X`` of a chain to delete; ``name`` is the chain.
    DELETE = "delete"
    #: The declaration or a rule of a shared chain created (or rewritten); ``name`` is the chain.
    SHARED = "shared"
    #: A written container's jump to a shared chain (refused if the chain is missing); ``name`` is the handle.
    LINK = "link"
    #: ``*filter`` or ``COMMIT``; ``name`` is empty.
    FRAME = "frame"


@dataclass(frozen=True, slots=True)
class Owner:
    """What a payload line belongs to: a part of the transaction (``kind``) and whose it is (``name``)."""

    kind: OwnerKind
    name: str


#: The owner of ``*filter`` and ``COMMIT``, and of a refusal no line is named for.
FRAME = Owner(OwnerKind.FRAME, "")


class Payload:
    """A lazily rendered, re-iterable restore payload with a line -> owner map."""

    def __init__(
        self,
        version: int,
        writes: Sequence[Write],
        closes: Sequence[str] = (),
        deletes: Sequence[str] = (),
        renderer: Renderer | None = None,
        shared: Sequence[Chain] = (),
    ) -> None:
        if not (writes or closes or deletes or shared):
            raise ValueError("an empty restore transaction")
        self.version = version
        self.shared = tuple(shared)
        self.writes = tuple(writes)
        self.closes = tuple(closes)
        self.deletes = tuple(deletes)
        self._renderer = renderer or Renderer()
        self._digests: dict[str, str] = {}
        self._starts: list[int] = []
        self._owners: list[Owner] = []
        self._lines = self._layout()

    def _mark(self, line: int, owner: Owner) -> None:
        if not self._owners or self._owners[-1] != owner:
            self._starts.append(line)
            self._owners.append(owner)

    def _layout(self) -> int:
        line = 1
        self._mark(line, FRAME)
        for chain in self.shared:
            self._mark(line + 1, Owner(OwnerKind.SHARED, chain.name))
            line += 1
        for w in self.writes:
            self._mark(line + 1, Owner(OwnerKind.WRITE, w.handle))
            line += 1 + len(w.family.helpers)
        for name in self.deletes:
            self._mark(line + 1, Owner(OwnerKind.DELETE, name))
            line += 1
        for chain in self.shared:
            self._mark(line + 1, Owner(OwnerKind.SHARED, chain.name))
            line += len(chain.rules)
        for w in self.writes:
            family = w.family
            self._mark(line + 1, Owner(OwnerKind.GUARD, w.handle))
            self._mark(line + 2, Owner(OwnerKind.WRITE, w.handle))
            if family.shared:
                self._mark(line + 2 + family.shared_at, Owner(OwnerKind.LINK, w.handle))
                self._mark(line + 2 + family.shared_at + len(family.shared), Owner(OwnerKind.WRITE, w.handle))
            line += 1 + sum(len(c.rules) for c in family.chains)
        for name in self.closes:
            self._mark(line + 1, Owner(OwnerKind.CLOSE_GUARD, name))
            self._mark(line + 2, Owner(OwnerKind.CLOSE, name))
            line += 2
        for name in self.deletes:
            self._mark(line + 1, Owner(OwnerKind.DELETE, name))
            line += 1
        self._mark(line + 1, FRAME)
        return line + 1

    def __len__(self) -> int:
        return self._lines

    def owner_of(self, line: int | None) -> Owner | None:
        """The owner of 1-based ``line``; None when out of range or unknown."""
        if line is None or not 1 <= line <= self._lines:
            return None
        return self._owners[bisect.bisect_right(self._starts, line) - 1]

    def digest(self, w: Write) -> str:
        """``w``'s content hash (computed once, on first need)."""
        if w.digest is not None:
            return w.digest
        found = self._digests.get(w.handle)
        if found is None:
            found = self._digests[w.handle] = self._renderer.digest(w.family)
        return found

    def resolved(self) -> list[Write]:
        """The writes, each with its digest."""
        return [w if w.digest is not None else Write(w.handle, w.family, self.digest(w)) for w in self.writes]

    def __iter__(self) -> Iterator[str]:
        yield "*filter"
        for chain in self.shared:
            try:
                yield declare(chain.name)
            except ValidationError as exc:
                raise RenderRefused("", exc, chain=chain.name) from exc
        for w in self.writes:
            try:
                yield declare(w.family.asg.name)
                for helper in w.family.helpers:
                    yield declare(helper.name)
            except ValidationError as exc:
                raise RenderRefused(w.handle, exc) from exc
        for name in self.deletes:
            yield declare(name)
        for chain in self.shared:
            try:
                yield from self._renderer.shared_rules(chain)
            except ValidationError as exc:
                raise RenderRefused("", exc, chain=chain.name) from exc
        rules = self._renderer.rules
        for w in self.writes:
            try:
                yield f"-F {w.family.parent.name}"
                yield from rules(w.family, self.digest(w))
            except ValidationError as exc:
                raise RenderRefused(w.handle, exc) from exc
        reject = " ".join(chains.reject(self.version))
        for name in self.closes:
            yield f"-F {name}"
            yield f"-A {name} {reject}"
        for name in self.deletes:
            yield f"-X {name}"
        yield "COMMIT"
