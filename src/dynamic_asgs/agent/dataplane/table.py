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
  :meth:`KernelTable.commit` after a successful restore. :class:`KernelCache` holds
  it; the dataplane drops it with :meth:`KernelCache.invalidate`, which logs why, and
  reads the table again, on every failure that may mean it is wrong (a parent it
  believed in, a deletion, an unattributed refusal, a tool that died); a refused
  rule of a container's own chain and a lock timeout leave it, since the restore
  committed nothing and nothing the cache holds was involved (:mod:`.cycle`).
* **Deciding is a query** — :func:`classify` reads the tables and returns what it
  found (:class:`Classified`), the adoptions, learned fingerprints and settling
  included; the cycle records them (:meth:`Classified.record`).
* **Parents belong to the CNI** — a parent is :class:`Parent` ``ABSENT``, ``BARE``
  (as a CNI creates it: REJECT, maybe a log rule), ``STATIC`` (holding the static
  rules a CNI inserts when the agent does not answer it), ``OURS`` (our hash
  comment) or ``UNKNOWN`` (not looked at since it may have changed). What a cycle
  knows comes from a whole-table read (``fresh``) or a targeted read of the chains
  it must decide on (:meth:`KernelTable.observe`). New containers are written when
  :mod:`.settle` says their CNI is done; known ones whose parent is unknown are
  written optimistically, guarded by ``-F`` (see :mod:`.payload`), because a
  restore that succeeds is cheaper than any check, and a refused one costs what a
  per-chain check would (``bench/dataplane.py --probe`` measures both).
* **Drift is repaired** — a whole-table read gives each tracked chain a fingerprint
  of its saved text. The first one read after our write is learned (or taken from
  the fingerprints kept across restarts, see :mod:`.fingerprints`); a chain whose
  fingerprint changes later was edited behind our back, and is rewritten.
* **Shared chains are content, not state** (issue 16) — a shared chain's name is the
  hash of its rules, so it is never changed in place: a container whose groups change
  jumps to a new chain, created in the same restore if the kernel lacks it
  (:attr:`Classified.shared`), and the old one goes when its last user does
  (:mod:`.sweep`). A container is intact only if the shared chains it jumps to are
  (:meth:`KernelTable.matches`); their fingerprints are part of each user's, so an edit
  of one is found in every container it serves, and repaired by rewriting it with them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum

from dynamic_asgs.asg.chains import is_owned_chain, is_shared_chain, shared_chain_digest
from dynamic_asgs.asg.translate import Chain, FamilyChains
from dynamic_asgs.iptables.render import Renderer
from dynamic_asgs.iptables.saved import ChainInfo, SavedTable
from dynamic_asgs.lager import Logger

from .payload import Write
from .settle import Settler

__all__ = ["Applied", "Classified", "KernelCache", "KernelTable", "Parent", "chain_digest", "classify",
           "family_targets", "same_content"]

Fingerprints = dict[str, str]


class Parent(Enum):
    """What a container's parent chain holds, as far as this cycle knows."""

    UNKNOWN = "unknown"
    ABSENT = "absent"
    BARE = "bare"
    STATIC = "static"
    OURS = "ours"


@dataclass(slots=True)
class Applied:
    """A container's chains as last written or adopted in one family.

    ``fingerprints`` (chain -> fingerprint of its saved text) are None until a
    whole-table read after the write shows them; ``verified_at`` is when a
    whole-table read last showed the chains exactly as written.
    """

    family: FamilyChains
    digest: str
    at: float
    adopted: bool
    fingerprints: Fingerprints | None = None
    verified_at: float | None = None


def family_targets(family: FamilyChains) -> dict[str, tuple[str, ...]]:
    """Each chain ``family`` owns -> the tracked chains it jumps or goes to.

    Read from the plan's structure rather than from its million argv: the parent
    jumps to the ASG chain, the ASG chain to its helpers (``plan_container`` adds a
    helper exactly when a rule of the ASG chain goes to it) and its shared chains,
    helpers to nothing.
    """
    out = {family.asg.name: (*(h.name for h in family.helpers), *(c.name for c in family.shared)),
           family.parent.name: (family.asg.name,)}
    out.update((h.name, ()) for h in family.helpers)
    return out


def chain_digest(name: str, digest: str) -> str:
    """The content hash chain ``name`` of a container whose chains hash to ``digest`` was taken with.

    A shared chain's is its own (its name), whichever container it serves."""
    return shared_chain_digest(name) if is_shared_chain(name) else digest


class KernelTable:
    """One family's filter table as far as the agent knows it (see the module docstring)."""

    def __init__(self, saved: SavedTable) -> None:
        self.chains = saved.chains
        self.info = saved.info
        self.referrers = saved.referrers
        #: Read whole during the current cycle: every chain is known, fingerprints included.
        self.fresh = True
        #: Chains read by a targeted look during the current cycle.
        self.observed: set[str] = set()

    def parent(self, name: str) -> Parent:
        """What the parent chain ``name`` holds, if this cycle knows."""
        if name not in self.chains:
            return Parent.ABSENT if self.fresh or name in self.observed else Parent.UNKNOWN
        if not (self.fresh or name in self.observed):
            return Parent.UNKNOWN
        info = self.info.get(name)
        if info is None or info.rules == 0:
            return Parent.BARE
        if info.digest is not None:
            return Parent.OURS
        return Parent.STATIC if info.established else Parent.BARE

    def exists(self, name: str) -> bool | None:
        """True if the chain exists, False if this cycle knows it does not, None if unknown."""
        if name in self.chains:
            return True
        return False if self.fresh or name in self.observed else None

    def mark_missing(self, name: str) -> None:
        """A restore showed that ``name`` does not exist."""
        self._unlink(name)
        self.info.pop(name, None)
        self.chains.discard(name)
        self.observed.add(name)

    def observe(self, names: Collection[str], part: SavedTable) -> None:
        """Record a targeted read of ``names`` (``part`` holds those of them that exist)."""
        for name in names:
            if name in part.chains:
                self.chains.add(name)
                found = part.info.get(name)
                if found is not None:
                    self._set(name, found)
            else:
                self.mark_missing(name)
            self.observed.add(name)

    def end_cycle(self) -> None:
        """What this cycle saw may change before the next one."""
        self.fresh = False
        self.observed.clear()

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
        return all(self.holds(chain) for chain in family.shared)

    def holds(self, shared: Chain) -> bool:
        """Whether the kernel holds shared chain ``shared`` (its hash comment and rule count)."""
        found = self.info.get(shared.name)
        return (found is not None and found.rules == len(shared.rules)
                and found.digest == shared_chain_digest(shared.name))

    def fingerprints(self, family: FamilyChains) -> Fingerprints | None:
        """The fingerprints of the chains ``family`` traverses as last read whole (None if any is unknown)."""
        out: Fingerprints = {}
        for chain in family.enforcing:
            found = self.info.get(chain.name)
            if found is None or found.fingerprint is None:
                return None
            out[chain.name] = found.fingerprint
        return out

    def owned(self) -> list[str]:
        """Every ASG chain in the table (ours, ``asg-``, and Go candidates, ``casg-``)."""
        return [name for name in self.info if is_owned_chain(name)]

    def commit(self, writes: Collection[Write], closes: Collection[str], deletes: Collection[str],
               shared: Collection[Chain] = ()) -> None:
        """Record what a successful restore did."""
        for chain in shared:
            self._set(chain.name, ChainInfo(shared_chain_digest(chain.name), len(chain.rules), ()))
        for w in writes:
            targets = family_targets(w.family)
            for chain in w.family.chains:
                digest = w.digest if chain is w.family.asg or chain is w.family.parent else None
                self._set(chain.name, ChainInfo(digest, len(chain.rules), targets[chain.name]))
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


class KernelCache:
    """One family's :class:`KernelTable` between calls: read on first need, dropped on suspicion."""

    def __init__(self, version: int, logger: Logger) -> None:
        self._version = version
        self._log = logger
        self._table: KernelTable | None = None

    @property
    def table(self) -> KernelTable | None:
        """The cached table; None until read, and after :meth:`invalidate`."""
        return self._table

    def fill(self, saved: SavedTable) -> KernelTable:
        """Cache a whole-table read."""
        self._table = KernelTable(saved)
        return self._table

    def invalidate(self, reason: str) -> None:
        """Forget the table, logging ``reason``: the next cycle reads it again (nothing cached, nothing logged)."""
        if self._table is None:
            return
        self._table = None
        self._log.info("kernel-cache-invalidated", {"version": self._version, "reason": reason})


def same_content(a: FamilyChains, b: FamilyChains) -> bool:
    """Whether two plans write the same chains (identity short-cuts make shared plans cheap)."""
    return a is b or (
        a.asg.name == b.asg.name
        and a.asg.rules == b.asg.rules
        and a.parent.name == b.parent.name
        and a.parent.rules == b.parent.rules
        and a.helpers == b.helpers
        and a.shared == b.shared
    )


@dataclass(frozen=True, slots=True)
class Classified:
    """Where each wanted container of one family stands against the kernel, and what that taught.

    The first fields decide the transaction; ``records`` and the settling fields are
    what the classification learned (adoptions, fingerprints, waits), written to the
    dataplane's state by :meth:`record`.
    """

    writes: tuple[Write, ...] = ()
    #: Shared chains the writes need that the kernel lacks (or that are rewritten with a drifted user).
    shared: tuple[Chain, ...] = ()
    adopted: tuple[str, ...] = ()
    unchanged: int = 0
    #: Handles waiting for their parent chain, with the reason.
    skipped: Mapping[str, str] = field(default_factory=dict)
    pending: tuple[str, ...] = ()
    #: Handles whose chains were edited behind our back (rewritten), with what differed.
    drifted: Mapping[str, str] = field(default_factory=dict)
    #: Written handles to look at again: True until the watch deadline, False once.
    watch: Mapping[str, bool] = field(default_factory=dict)
    #: Handles whose fingerprints were learned in this classification.
    learned: tuple[str, ...] = ()
    #: Containers found in the kernel (adopted, or kept with a new plan object or new fingerprints), as they stand.
    records: Mapping[str, Applied] = field(default_factory=dict)
    #: Handles that need no more looks (adopted, or forced).
    settled: frozenset[str] = frozenset()
    #: Handles a look found intact.
    verified: frozenset[str] = frozenset()
    #: Skipped handles whose next look is to be scheduled (the others were not due).
    waits: frozenset[str] = frozenset()
    #: Handles seen with a bare parent: the settle time counts from their first sighting.
    seen: frozenset[str] = frozenset()

    def record(self, applied: dict[str, Applied], settler: Settler, now: float) -> None:
        """Write what this classification learned into the dataplane's state."""
        applied.update(self.records)
        for handle in self.seen:
            settler.seen(handle, now)
        for handle in self.waits:
            settler.wait(handle, now, self.skipped[handle])
        for handle in self.settled:
            settler.settled(handle)
        for handle in self.verified:
            settler.verified(handle, now)


@dataclass(slots=True)
class _Found:
    """What :func:`classify` collects before freezing it into a :class:`Classified`."""

    writes: list[Write] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    drifted: dict[str, str] = field(default_factory=dict)
    watch: dict[str, bool] = field(default_factory=dict)
    learned: list[str] = field(default_factory=list)
    records: dict[str, Applied] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    verified: set[str] = field(default_factory=set)
    waits: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)

    def wait(self, handle: str, reason: str) -> None:
        self.skipped[handle] = reason
        self.waits.add(handle)

    def freeze(self, kernel: KernelTable) -> Classified:
        return Classified(
            tuple(self.writes), self._shared(kernel), tuple(self.adopted), self.unchanged, self.skipped,
            tuple(self.pending), self.drifted, self.watch, tuple(self.learned), self.records,
            frozenset(self.settled), frozenset(self.verified), frozenset(self.waits), frozenset(self.seen))

    def _shared(self, kernel: KernelTable) -> tuple[Chain, ...]:
        """The shared chains to write: those the writes jump to that the kernel lacks, or drifted users'."""
        out: dict[str, Chain] = {}
        for w in self.writes:
            for chain in w.family.shared:
                if chain.name not in out and (w.handle in self.drifted or not kernel.holds(chain)):
                    out[chain.name] = chain
        return tuple(out.values())


@dataclass(frozen=True, slots=True)
class Context:
    """What :func:`classify` needs besides the tables."""

    renderer: Renderer
    now: float
    settler: Settler
    baseline: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    scope: Collection[str] | None = None
    force: Collection[str] = ()
    exclude: Collection[str] = ()
    #: Handles that may be adopted but never written (their chain names are contested).
    adopt_only: Collection[str] = ()


def _drift(family: FamilyChains, kernel: KernelTable, known: Fingerprints | None) -> str | None:
    """Which chain of ``family`` differs from the fingerprints ``known``; None if none (or nothing to compare)."""
    if known is None or not kernel.fresh:
        return None
    for chain in family.enforcing:
        found = kernel.info.get(chain.name)
        if found is not None and found.fingerprint is not None and known.get(chain.name) not in (
                None, found.fingerprint):
            return f"chain {chain.name} was edited in place"
    return None


def _baseline(family: FamilyChains, digest: str, baseline: Mapping[str, tuple[str, str]]) -> Fingerprints | None:
    """Fingerprints kept across restarts for ``family``, when they were taken of the same content."""
    out: Fingerprints = {}
    for chain in family.enforcing:
        kept = baseline.get(chain.name)
        if kept is None or kept[0] != chain_digest(chain.name, digest):
            return None
        out[chain.name] = kept[1]
    return out


def classify(
    kernel: KernelTable, applied: Mapping[str, Applied], wanted: Mapping[str, FamilyChains], ctx: Context
) -> Classified:
    """Sort ``wanted`` into writes, adopted, unchanged, waiting (parent not ready) and drifted.

    Containers in ``ctx.force`` are written even when they look right (the CNI just
    recreated their parent); containers outside ``ctx.scope`` (when given) are left
    ``pending``; ``ctx.exclude``d ones are not looked at. Nothing is changed: adoption,
    learned fingerprints and settling are returned, for :meth:`Classified.record`.
    """
    out = _Found()
    settler, now = ctx.settler, ctx.now
    for handle, family in wanted.items():
        if handle in ctx.exclude:
            continue
        forced = handle in ctx.force
        if not forced and not kernel.fresh and handle in settler.waiting and not settler.due(handle, now):
            out.skipped[handle] = settler.reason(handle)
            continue
        prev = applied.get(handle)
        known = prev is not None and same_content(prev.family, family)
        digest: str | None
        if known and prev is not None:
            digest = prev.digest
        elif not forced and family.asg.name in kernel.info:
            digest = ctx.renderer.digest(family)  # something to compare with: hash now
        else:
            digest = None  # it will be written: the payload hashes it while the restore streams
        if digest is not None and not forced and kernel.matches(family, digest):
            if _keep(handle, family, digest, prev, kernel, ctx, out):
                continue
        elif (known and kernel.fresh and handle not in settler.watched
              and kernel.exists(family.parent.name) and family.asg.name in kernel.chains):
            out.drifted[handle] = "its chains no longer hold what was written"
        if handle in ctx.adopt_only:
            continue
        if _decide(handle, family, prev, kernel, ctx, out):
            if ctx.scope is not None and handle not in ctx.scope:
                out.pending.append(handle)
            else:
                out.writes.append(Write(handle, family, digest))
    return out.freeze(kernel)


def _keep(
    handle: str, family: FamilyChains, digest: str, prev: Applied | None, kernel: KernelTable, ctx: Context,
    out: _Found,
) -> bool:
    """The kernel holds ``family``: adopt or keep it, unless its fingerprints show drift (then False)."""
    current = kernel.fingerprints(family) if kernel.fresh else None
    if prev is None or prev.digest != digest:
        drift = _drift(family, kernel, _baseline(family, digest, ctx.baseline))
        if drift is not None:
            out.drifted[handle] = drift
            return False
        out.records[handle] = Applied(family, digest, ctx.now, adopted=True, fingerprints=current,
                                      verified_at=ctx.now if current is not None else None)
        out.adopted.append(handle)
        if current is not None:
            out.learned.append(handle)
        out.settled.add(handle)
        return True
    drift = _drift(family, kernel, prev.fingerprints)
    if drift is not None:
        out.drifted[handle] = drift
        return False
    if current is not None:
        out.records[handle] = Applied(family, digest, prev.at, prev.adopted, fingerprints=current, verified_at=ctx.now)
        if prev.fingerprints != current:
            out.learned.append(handle)
    elif prev.family is not family:  # keep the plan object the caller now shares (and its argv tuples)
        out.records[handle] = Applied(family, digest, prev.at, prev.adopted, prev.fingerprints, prev.verified_at)
    out.unchanged += 1
    if kernel.fresh or family.parent.name in kernel.observed:
        out.verified.add(handle)
    return True


def _decide(
    handle: str, family: FamilyChains, prev: Applied | None, kernel: KernelTable, ctx: Context, out: _Found,
) -> bool:
    """Whether to write ``handle`` now (its CNI is done with the parent); records waits and watches."""
    parent_name = family.parent.name
    parent = kernel.parent(parent_name)
    settler, now = ctx.settler, ctx.now
    if handle in ctx.force and parent is not Parent.ABSENT:
        out.settled.add(handle)
        return True
    if parent is Parent.ABSENT:
        out.wait(handle, f"parent chain {parent_name} does not exist (the CNI creates it): looked at again")
        return False
    watched = handle in settler.watched
    if prev is None or watched:
        if parent is Parent.BARE and prev is None:
            out.seen.add(handle)
            if settler.age(handle, now) < settler.settings.settle_seconds:
                out.wait(handle, f"the CNI is still setting up parent chain {parent_name}")
                return False
        if parent is Parent.STATIC or (watched and parent is not Parent.OURS):
            out.watch[handle] = False  # the CNI is done (or has just inserted above us): look once more
        elif parent is Parent.BARE and prev is None:
            out.watch[handle] = True  # written before the CNI showed it is done: watch for late rules
    return True
