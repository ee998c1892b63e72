"""Desired versus kernel state for one family: content hashes, parent chains, the diff.

Goals and the mechanism serving each:

* **Nothing changed, nothing written** — each container's chains carry a content
  hash (:mod:`dynamic_asgs.iptables.render`). A container is left alone when the
  kernel holds its ASG chain and parent with that hash and the expected rule
  counts (and its helper chains with theirs).
* **Cheap when nothing changed** — the hash of the plan last applied is kept with
  the plan object (:class:`Applied`); a new plan that is the same object, or
  equal (tuple comparison, which short-cuts on the argv tuples a ``GroupIndex``
  shares), reuses it, so a no-change cycle hashes nothing and costs a few
  dictionary look-ups per container.
* **An honest cache** — :class:`KernelTable` is what the kernel holds as far as we
  know: it starts from one ``iptables-save`` and changes only through
  :meth:`KernelTable.commit` after a successful restore. The dataplane drops it,
  and reads the table again, on every failure that may mean it is wrong (a parent
  it believed in, a deletion, an unattributed refusal, a tool that died); a
  refused rule of a container's own chain and a lock timeout leave it, since the
  restore committed nothing and nothing the cache holds was involved
  (:mod:`.cycle`).
* **Parents belong to the CNI** — a parent is *present* (seen or written), *missing*
  (absent from a read made in this cycle, or refused by a restore) or *unknown*
  (created since the last read). Missing parents are skipped; unknown ones are
  written optimistically, guarded by ``-F`` (see :mod:`.payload`), because a
  restore that succeeds is cheaper than any check, and a refused one costs what a
  per-chain check would (measured with ``bench/dataplane.py --probe``: at 500k
  rules a per-chain ``iptables -S`` costs 0.7 s on legacy and ~0 on nft, a whole
  ``iptables-save`` 1.1 s and 3.6 s, a refused restore 0.65 s and ~0).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from dynamic_asgs.asg.translate import FamilyChains
from dynamic_asgs.iptables.render import Renderer
from dynamic_asgs.iptables.saved import ChainInfo, SavedTable

from .payload import Write

__all__ = ["Applied", "Classified", "KernelTable", "classify", "family_targets", "same_content"]


@dataclass(slots=True)
class Applied:
    """A container's chains as last written or adopted in one family."""

    family: FamilyChains
    digest: str
    at: float
    adopted: bool


def family_targets(family: FamilyChains) -> dict[str, tuple[str, ...]]:
    """Each chain of ``family`` -> the tracked chains it jumps or goes to.

    Read from the plan's structure rather than from its million argv: the parent
    jumps to the ASG chain, the ASG chain to its helpers (``plan_container`` adds a
    helper exactly when a rule of the ASG chain goes to it), helpers to nothing.
    """
    out = {family.asg.name: tuple(h.name for h in family.helpers), family.parent.name: (family.asg.name,)}
    out.update((h.name, ()) for h in family.helpers)
    return out


class KernelTable:
    """One family's filter table as far as the agent knows it (see the module docstring)."""

    def __init__(self, saved: SavedTable) -> None:
        self.chains = saved.chains
        self.info = saved.info
        self.referrers = saved.referrers
        self.missing: set[str] = set()
        #: Read during the current cycle: a chain absent from ``chains`` is known to be missing.
        self.fresh = True

    def parent_state(self, name: str) -> bool | None:
        """True if the chain exists, False if it is known to be missing, None if unknown."""
        if name in self.chains:
            return True
        if self.fresh or name in self.missing:
            return False
        return None

    def mark_missing(self, name: str) -> None:
        """A restore showed that ``name`` does not exist."""
        self.chains.discard(name)
        self.missing.add(name)

    def matches(self, family: FamilyChains, digest: str) -> bool:
        """Whether the kernel holds exactly ``family`` (by hash and rule counts)."""
        info = self.info
        asg = info.get(family.asg.name)
        if asg is None or asg.digest != digest or asg.rules != len(family.asg.rules):
            return False
        parent = info.get(family.parent.name)
        if parent is None or parent.digest != digest or parent.rules != len(family.parent.rules):
            return False
        for helper in family.helpers:
            found = info.get(helper.name)
            if found is None or found.rules != len(helper.rules):
                return False
        return True

    def owned(self) -> list[str]:
        """Every ASG chain in the table (ours, ``asg-``, and Go candidates, ``casg-``)."""
        return [name for name in self.info if name.startswith(("asg-", "casg-"))]

    def commit(self, writes: Collection[Write], closes: Collection[str], deletes: Collection[str]) -> None:
        """Record what a successful restore did."""
        for w in writes:
            targets = family_targets(w.family)
            for chain in w.family.chains:
                digest = w.digest if chain is w.family.asg or chain is w.family.parent else None
                self._set(chain.name, ChainInfo(digest, len(chain.rules), targets[chain.name]))
            self.missing.discard(w.family.parent.name)
        for name in closes:
            self._set(name, ChainInfo(None, 1, ()))
        for name in deletes:
            self._unlink(name)
            self.info.pop(name, None)
            self.chains.discard(name)

    def _set(self, name: str, info: ChainInfo) -> None:
        self._unlink(name)
        self.info[name] = info
        self.chains.add(name)
        for target in info.targets:
            self.referrers.setdefault(target, set()).add(name)

    def _unlink(self, name: str) -> None:
        old = self.info.get(name)
        if old is None:
            return
        for target in old.targets:
            refs = self.referrers.get(target)
            if refs is not None:
                refs.discard(name)
                if not refs:
                    del self.referrers[target]


def same_content(a: FamilyChains, b: FamilyChains) -> bool:
    """Whether two plans write the same chains (identity short-cuts make shared plans cheap)."""
    return a is b or (
        a.asg.name == b.asg.name
        and a.asg.rules == b.asg.rules
        and a.parent.name == b.parent.name
        and a.parent.rules == b.parent.rules
        and a.helpers == b.helpers
    )


@dataclass
class Classified:
    """Where each wanted container of one family stands against the kernel."""

    writes: list[Write] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)


def classify(
    kernel: KernelTable,
    applied: dict[str, Applied],
    wanted: Mapping[str, FamilyChains],
    *,
    renderer: Renderer,
    now: float,
    scope: Collection[str] | None = None,
    force: Collection[str] = (),
    exclude: Collection[str] = (),
) -> Classified:
    """Sort ``wanted`` into writes, adopted, unchanged and skipped (parent missing).

    Containers in ``force`` are written even when they look right (the CNI just
    recreated their parent); containers outside ``scope`` (when given) are left
    ``pending``; ``exclude``d ones are not looked at. Adoption is recorded in
    ``applied`` at once: it is knowledge about the kernel, not a write.
    """
    out = Classified()
    for handle, family in wanted.items():
        if handle in exclude:
            continue
        prev = applied.get(handle)
        known = prev is not None and same_content(prev.family, family)
        digest: str | None
        if known and prev is not None:
            digest = prev.digest
        elif handle not in force and family.asg.name in kernel.info:
            digest = renderer.digest(family)  # something to compare with: hash now
        else:
            digest = None  # it will be written: the payload hashes it while the restore streams
        if digest is not None and handle not in force and kernel.matches(family, digest):
            if prev is None or prev.digest != digest:
                applied[handle] = Applied(family, digest, now, adopted=True)
                out.adopted.append(handle)
            else:
                prev.family = family
                out.unchanged += 1
            continue
        parent = family.parent.name
        state = kernel.parent_state(parent)
        if state is False and kernel.fresh:
            kernel.missing.add(parent)  # remembered after this cycle: no optimistic attempt next time
        if state is False and not (handle in force and not kernel.fresh):
            out.skipped[handle] = f"parent chain {parent} does not exist (the CNI creates it, then forces a sync)"
            continue
        if scope is not None and handle not in scope:
            out.pending.append(handle)
            continue
        out.writes.append(Write(handle, family, digest))
    return out

