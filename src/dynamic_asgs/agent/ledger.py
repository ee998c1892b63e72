"""The agent's enforcement ledger: which dataset version each container enforces, since when.

Goals and the mechanism serving each:

* **Provable enforcement** — after every dataplane call the converger records, per container
  it planned and the dataplane wrote or found in place, the dataset version of that plan
  (:meth:`Ledger.record`); a container that failed, waits or was refused keeps its old
  record. ``/asg-status``, the fleet audit and ``asg_containers_lagging`` read it.
* **Only live containers** — a complete cycle drops the records of containers it did not
  plan; a cleanup drops those no longer in the store (:meth:`Ledger.keep_only`).
* **Drift on the record** — containers found edited behind the agent's back are counted,
  the last one kept (:meth:`Ledger.drifted`).

The ledger is owned by the converger and changed under its lock only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dynamic_asgs.agent.dataplane.report import ApplyReport

__all__ = ["Enforced", "Ledger", "Repair"]


@dataclass(frozen=True, slots=True)
class Enforced:
    """Which dataset version a container enforces, and since when (UNIX time)."""

    dataset_version: int | None
    since: float


@dataclass(frozen=True, slots=True)
class Repair:
    """A container whose chains were found edited and rewritten: why, and when (UNIX time)."""

    handle: str
    reason: str
    at: float


class Ledger:
    """Per container, the dataset version it enforces; and the drift repaired so far."""

    def __init__(self) -> None:
        self._enforced: dict[str, Enforced] = {}
        self.repaired = 0
        self.last_repair: Repair | None = None

    def record(self, report: ApplyReport, planned: Collection[str], version: int | None, now: float, *,
               partial: bool) -> None:
        """Containers of ``planned`` that ``report`` did not fail, skip or refuse enforce ``version`` (from ``now``
        if that is a new version for them); unless ``partial``, containers not planned are forgotten."""
        for handle, reason in report.drifted.items():
            self.repaired += 1
            self.last_repair = Repair(handle, reason, now)
        for handle in planned:
            if handle in report.failed or handle in report.skipped or handle in report.refused:
                continue
            current = self._enforced.get(handle)
            if current is None or current.dataset_version != version:
                self._enforced[handle] = Enforced(version, now)
        if not partial:
            self.keep_only(planned)

    def keep_only(self, live: Collection[str]) -> None:
        """Forget the containers not in ``live``."""
        for gone in set(self._enforced) - set(live):
            del self._enforced[gone]

    def lagging(self, enforced: Collection[str], version: int | None) -> int:
        """How many of the ``enforced`` containers have a record of a version other than ``version``."""
        return sum(1 for h, r in self._enforced.items() if h in enforced and r.dataset_version != version)

    def snapshot(self) -> Mapping[str, Enforced]:
        """A read-only copy of the records."""
        return MappingProxyType(dict(self._enforced))
