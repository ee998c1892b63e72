"""What one dataplane call did, and what the dataplane enforces per container.

:class:`ApplyReport` carries what the agent logs and exports as metrics:
changed, adopted, unchanged, skipped (with reasons) and failed containers,
deleted chains and closed parents, payload lines, restores and their durations
per family, and whether the kernel table was read. :class:`AppliedContainer`
is the per-container view for ``/asg-status`` and audits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["AppliedContainer", "AppliedFamily", "ApplyReport", "CallKind", "ContainerChange", "FamilyReport"]


class CallKind(StrEnum):
    """Which dataplane call a report is of (its value is logged as ``kind``)."""

    #: :meth:`Dataplane.apply` with complete data: orphans swept.
    FULL = "full"
    #: :meth:`Dataplane.apply` with ``complete=False``, or a settle pass: nothing deleted.
    PARTIAL = "partial"
    #: :meth:`Dataplane.apply_one`: a forced sync of one container.
    ONE = "one"
    #: :meth:`Dataplane.remove_orphans`.
    ORPHANS = "orphans"


@dataclass(frozen=True, slots=True)
class ContainerChange:
    """One container's chains rewritten in one family.

    ``old_*`` are None when this process never enforced the container before
    (a new container, or the first write after a restart).
    """

    handle: str
    version: int
    new_digest: str
    new_rules: int
    old_digest: str | None = None
    old_rules: int | None = None


@dataclass(frozen=True, slots=True)
class FamilyReport:
    """One family's share of a call: restores (refused ones included), lines committed, time spent.

    ``lock_wait_seconds`` is the time the successful restores waited for the iptables lock
    file (held by the CNI or netmon), not counted in ``restore_seconds``.
    """

    version: int
    restores: int = 0
    commits: int = 0
    payload_lines: int = 0
    restore_seconds: float = 0.0
    lock_wait_seconds: float = 0.0
    read_seconds: float | None = None
    error: str | None = None
    #: Chains read by targeted looks (parents of new, waiting or watched containers).
    looked: int = 0
    #: Containers whose fingerprints were learned (kept across restarts when configured).
    learned: int = 0


@dataclass(frozen=True)
class ApplyReport:
    """What :meth:`Dataplane.apply`, ``apply_one`` or ``remove_orphans`` did.

    ``skipped``, ``failed``, ``refused`` and ``drifted`` map handles to reasons
    (prefixed ``IPv4:``/``IPv6:`` where per family): a skipped container waits for
    its parent chain (its CNI is not done), a failed one keeps its previous rules and
    is retried next cycle, a refused one is not written at all (its chain names
    collide with another container's), a drifted one was edited behind our back and
    has been rewritten. ``deferred`` maps orphan chains left in place to the reason.
    """

    kind: CallKind
    changes: tuple[ContainerChange, ...] = ()
    adopted: tuple[str, ...] = ()
    unchanged: int = 0
    skipped: Mapping[str, str] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    deleted: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    closed: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    deferred: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    drifted: Mapping[str, str] = field(default_factory=dict)
    families: Mapping[int, FamilyReport] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def changed(self) -> tuple[str, ...]:
        """Handles whose chains were rewritten (in any family), sorted."""
        return tuple(sorted({c.handle for c in self.changes}))

    @property
    def commits(self) -> int:
        """Successful restores (kernel commits) across families."""
        return sum(f.commits for f in self.families.values())

    @property
    def reread(self) -> bool:
        """Whether the kernel table was read (``iptables-save``) in this call."""
        return any(f.read_seconds is not None for f in self.families.values())

    @property
    def ok(self) -> bool:
        """No container failed and no family hit an error."""
        return not self.failed and all(f.error is None for f in self.families.values())

    def summary(self) -> dict[str, object]:
        """Key/value data for the cycle's log line."""
        return {
            "kind": self.kind,
            "changed": len(self.changed),
            "adopted": len(self.adopted),
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "deleted": sum(len(v) for v in self.deleted.values()),
            "closed": sum(len(v) for v in self.closed.values()),
            "deferred": len(self.deferred),
            "refused": len(self.refused),
            "drifted": len(self.drifted),
            "commits": self.commits,
            "payload_lines": {str(v): f.payload_lines for v, f in self.families.items()},
            "restores": {str(v): f.restores for v, f in self.families.items()},
            "reread": self.reread,
            "duration_seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True, slots=True)
class AppliedFamily:
    """What the kernel holds for a container in one family."""

    digest: str
    accept_rules: int
    applied_at: float
    adopted: bool
    verified_at: float | None = None


@dataclass(frozen=True, slots=True)
class AppliedContainer:
    """What the dataplane enforces for one container."""

    handle: str
    families: Mapping[int, AppliedFamily]

    @property
    def digests(self) -> dict[int, str]:
        return {v: f.digest for v, f in self.families.items()}

    @property
    def rule_count(self) -> int:
        """Accept rules across families (what operators call the container's rules)."""
        return sum(f.accept_rules for f in self.families.values())

    @property
    def applied_at(self) -> float:
        """When the most recent of its families was written or adopted (UNIX time)."""
        return max(f.applied_at for f in self.families.values())

    @property
    def verified_at(self) -> float | None:
        """When a whole-table read last showed every family exactly as written (None: not yet since the write)."""
        times = [f.verified_at for f in self.families.values()]
        return None if any(t is None for t in times) else min(t for t in times if t is not None)
