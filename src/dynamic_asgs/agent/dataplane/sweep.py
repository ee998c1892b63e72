"""Which chains a transaction deletes, and which parent chains it closes.

Goals and the mechanism serving each:

* **No leftovers** — an ASG chain (``asg-``, or a Go agent's candidate ``casg-``)
  that no wanted container owns is an orphan and is deleted. So are our dependent
  chains — helper log chains (``netout--…--log``, ``netout--…--rl-log``) and shared
  chains (``asgs-``) — that a deleted or rewritten ASG chain used to reference and
  that nothing references any more (the Go agent deletes its ASG chain's jump
  targets the same way): a shared chain goes in the commit that moves its last
  user away. A chain a write of this commit jumps to is never deleted.
* **Never leave a container's egress open** — ``-X`` needs every reference gone
  in the same commit. A reference from a parent ``netout--`` chain whose container
  is not written in this transaction is removed by setting that parent to a lone
  ``REJECT`` (fail closed: e.g. the store lost the entry while the container
  lives). A parent whose container is wanted but not written this time (skipped,
  failed) is never closed: its orphan waits for a later cycle.
* **Touch nothing we do not own** — an orphan referenced from any other chain is
  left in place and reported (``deferred``) rather than unlinked blindly.

Which chains are ASG chains, parents or helpers is :mod:`dynamic_asgs.asg.chains`'s call.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from dynamic_asgs.asg.chains import is_dependent_chain, is_owned_chain, is_parent_chain

from .payload import Write
from .table import KernelTable, family_targets

__all__ = ["Sweep", "plan_sweep"]


@dataclass
class Sweep:
    """The deletions and closed parents of one transaction, and the orphans left for later."""

    closes: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.closes or self.deletes)


def plan_sweep(
    kernel: KernelTable,
    *,
    candidates: Iterable[str],
    writes: Sequence[Write],
    protected: Collection[str],
    exclude: Collection[str] = (),
) -> Sweep:
    """Plan the deletion of the orphan ``candidates`` and of stale helper chains.

    ``writes`` are the containers this transaction rewrites (their new content
    replaces their old references); ``protected`` are parents that must not be
    closed; ``exclude`` are chains not to touch in this transaction.
    """
    rewritten = {name: t for w in writes for name, t in family_targets(w.family).items()}
    needed = {t for targets in rewritten.values() for t in targets}
    out = Sweep()
    deletes = {c for c in candidates
               if c in kernel.info and c not in exclude and c not in rewritten and c not in needed}
    closes: set[str] = set()

    def unlinked(chain: str, referrer: str) -> bool:
        return referrer in deletes or (referrer in rewritten and chain not in rewritten[referrer])

    changed = True
    while changed:  # an orphan kept because of its referrer keeps what it references too
        changed = False
        closes.clear()
        for orphan in sorted(deletes):
            for referrer in sorted(kernel.referrers.get(orphan, ())):
                if unlinked(orphan, referrer):
                    continue
                if is_parent_chain(referrer) and referrer not in protected and referrer not in exclude:
                    closes.add(referrer)
                    continue
                why = ("its container is wanted but not written this cycle" if is_parent_chain(referrer)
                       else "its container keeps it until written" if is_owned_chain(referrer) else "not ours")
                out.deferred[orphan] = f"referenced by {referrer} ({why})"
                deletes.discard(orphan)
                changed = True
                break
    helpers: set[str] = set()
    for orphan in deletes:
        helpers.update(t for t in kernel.info[orphan].targets if is_dependent_chain(t))
    for name, new_targets in rewritten.items():
        old = kernel.info.get(name)
        if old is not None:
            helpers.update(t for t in old.targets if is_dependent_chain(t) and t not in new_targets)
    for helper in sorted(helpers):
        if helper in rewritten or helper in needed or helper in exclude or helper not in kernel.info:
            continue
        refs = kernel.referrers.get(helper, set())
        if all(r in closes or unlinked(helper, r) for r in refs):
            deletes.add(helper)
    out.closes = sorted(closes)
    out.deletes = sorted(deletes)
    return out
