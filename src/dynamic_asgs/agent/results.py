"""What a converger cycle returns: one frozen result, read by the ledger's caller, the metrics and the status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from dynamic_asgs.agent.dataplane.report import AppliedContainer, ApplyReport

__all__ = ["CycleKind", "CycleResult"]


class CycleKind(StrEnum):
    """What started a full cycle (its ``kind`` label in the metrics, ``last_cycle.kind`` in the status)."""

    FULL = "full"  # the first one, the poll interval, or a whole-table verification due
    POLICY_CHANGE = "policy-change"  # the blocking query saw this cell's groups change
    STORE_CHANGE = "store-change"  # the container metadata store changed


@dataclass(frozen=True, slots=True)
class CycleResult:
    """One full cycle: its kind, duration and end, the dataplane's report and what the cell enforces after it.

    ``report`` is None when nothing could be planned (``error`` says why: the store was never
    read, the policy server never answered); ``error`` is ``"see failed"`` when the dataplane
    ran but a container or a family failed.
    """

    kind: CycleKind
    seconds: float
    finished_at: float  # UNIX time
    report: ApplyReport | None
    error: str | None
    dataset_version: int | None
    dataset_changed_at: float | None  # UNIX time the version appeared at the policy server (or was first seen)
    enforced: Mapping[str, AppliedContainer]  # the dataplane's state after the cycle
    lagging: int  # enforced containers whose recorded dataset version is not ``dataset_version``

    @property
    def ok(self) -> bool:
        """Planned, applied, and nothing failed."""
        return self.error is None
