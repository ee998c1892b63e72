"""The agent's iptables dataplane: desired chains in, one atomic restore per family out.

Goals and the mechanism serving each (DESIGN.md §4, §5):

* **A cycle costs about one kernel commit, whatever the cell size** — every changed
  container's ASG chain (declared, hence flushed, and refilled), its parent's
  content (jump + final REJECT) and the removal of orphaned ``asg-*``/``casg-*``
  chains go into one ``iptables-restore --noflush -w`` per family
  (:mod:`.cycle`, :mod:`.payload`). A container is never seen half-written: the
  restore is atomic, so the chain is replaced in place: no candidate chain, no
  rename dance, no candidate name to collide with a live chain (Go's ``casg-``
  leftovers are simply swept).
* **Nothing changed, nothing written; a restart writes nothing** — content hashes
  (:mod:`.table`). The first call reads the table once (``iptables-save``) and
  adopts matching chains; afterwards the kernel state lives in memory and is read
  again only on suspicion: a refusal that implicates what we believed, a parent
  that vanished, or :meth:`Dataplane.invalidate` (the daemon may call it
  periodically to catch outside edits).
* **Two phases** — constructing a Dataplane touches nothing; only ``apply``,
  ``apply_one`` and ``remove_orphans`` read or write the kernel.
* **Parents belong to the CNI** — never created (``-F`` guard). A new container is
  written once its CNI is done with the parent (:mod:`.settle`): at once when the
  CNI forces a sync (``apply_one``), else when the parent holds the CNI's static
  rules, or after a settle time; until then it waits and is looked at again by
  :meth:`Dataplane.settle` calls (one targeted read of the parents concerned).
* **One container per chain name** — chain names keep only a handle's first
  characters, so two handles can share them; the container enforced first keeps
  them, any other is refused and reported, never written (:func:`_collisions`).
* **Drift is found and repaired** — each whole-table read compares the saved text
  of every chain we wrote with its fingerprint (:mod:`.table`); an edited chain is
  rewritten in the same cycle and reported. With a fingerprint file
  (:mod:`.fingerprints`) this holds across restarts.
* **Orphans only on complete data** — ``apply(..., complete=False)`` writes what
  it is given and deletes nothing; ``remove_orphans`` sweeps against the handles
  the caller knows to be alive.
* **Memory at a million rules** — no rendered lines are kept (payloads stream);
  per container the dataplane keeps its plan object (whose argv tuples a
  ``GroupIndex`` shares) and its hash.

Calls are not thread-safe: the caller serialises them (the agent's converger holds its
one lock around every call, whether from the poll loop or a CNI's force call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from pathlib import Path
from typing import assert_never

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ContainerChains, FamilyChains
from dynamic_asgs.iptables.render import Renderer
from dynamic_asgs.iptables.runner import Runner
from dynamic_asgs.lager import Logger

from .cycle import FamilyCycle, FamilyResult, FamilyState, Outcome, SweepSpec
from .fingerprints import FingerprintFile
from .report import AppliedContainer, AppliedFamily, ApplyReport, CallKind
from .settle import Settler, SettleSettings
from .table import KernelCache, KernelTable

__all__ = ["Dataplane"]


class _Note(Enum):
    """A per-container or per-chain condition logged once per reason, not every cycle."""

    SKIPPED = "skipped"
    DEFERRED = "deferred"
    REFUSED = "refused"


def _family(plan: ContainerChains, version: int) -> FamilyChains | None:
    return plan.v4 if version == 4 else plan.v6


def _orphans_except(keep: Collection[str]) -> Callable[[KernelTable], list[str]]:
    """Every owned chain of the table not in ``keep``; shared chains only when nothing refers to them.

    A shared chain still referred to goes with its last user (:mod:`.sweep`), never before."""
    return lambda kernel: [c for c in kernel.owned() if c not in keep
                           and not (chains.is_shared_chain(c) and kernel.referrers.get(c))]


def _present(names: Collection[str]) -> Callable[[KernelTable], list[str]]:
    """Those of ``names`` the table holds."""
    return lambda kernel: [c for c in names if c in kernel.info]


def _collisions(desired: Mapping[str, ContainerChains],
                incumbent: Callable[[str], bool]) -> tuple[dict[str, str], set[str]]:
    """Handles refused because their chain names are an enforced container's, and those only adoptable.

    A container's names are those its plan uses (:attr:`ContainerChains.chain_names`).
    Incumbents (containers already enforced) keep their names; any other handle
    sharing one is refused. Colliding handles none of which is enforced (after a
    restart) are all only adoptable: none is written, and the one whose chains the
    kernel holds exactly is adopted, which makes it the incumbent from then on.
    """
    owner: dict[str, str] = {}
    for handle, plan in desired.items():
        if incumbent(handle):
            owner.update(dict.fromkeys(plan.chain_names, handle))
    refused: dict[str, str] = {}
    by_name: dict[str, set[str]] = {}
    for handle, plan in desired.items():
        names = plan.chain_names
        rivals = sorted({owner[n] for n in names if n in owner} - {handle})
        if rivals:
            refused[handle] = (f"its chain names are those of container {', '.join(rivals)}: refused, "
                               "the other is left as it is")
        elif not incumbent(handle):
            for name in names:
                by_name.setdefault(name, set()).add(handle)
    adopt_only = {h for group in by_name.values() if len(group) > 1 for h in group}
    return refused, adopt_only


class Dataplane:
    """Brings the filter table of each family to the desired chains of the cell's containers."""

    def __init__(
        self,
        *,
        runners: Mapping[int, Runner],
        logger: Logger,
        clock: Callable[[], float] = time.time,
        max_restores: int = 16,
        settle: SettleSettings | None = None,
        fingerprint_file: str | Path | None = None,
    ) -> None:
        if not runners or set(runners) - {4, 6}:
            raise ValueError("runners must map 4 (and optionally 6) to iptables runners")
        self._log = logger.session("dataplane")
        self._fingerprints = FingerprintFile(fingerprint_file, logger) if fingerprint_file else None
        kept = self._fingerprints.load() if self._fingerprints else {}
        self._states = {v: FamilyState(runners[v], KernelCache(v, self._log),
                                       settler=Settler(settle or SettleSettings()), baseline=kept.get(v, {}))
                        for v in sorted(runners)}
        self._clock = clock
        self._max_restores = max_restores
        self._logged: dict[tuple[_Note, str], str] = {}

    def apply(self, desired: Mapping[str, ContainerChains], *, complete: bool = True,
              keep: Mapping[str, str] | None = None) -> ApplyReport:
        """A full cycle: write changed containers; with ``complete``, sweep orphans too.

        With ``complete=False`` only the given containers are looked at (a settle pass
        or a partial plan) and nothing is deleted. ``keep`` names live containers (with
        the reason) whose chains are left exactly as they are: neither written nor swept.
        """
        keep = keep or {}
        started = time.monotonic()
        renderer, now = Renderer(), self._clock()
        refused, adopt_only = _collisions(desired, self._incumbent)
        kept_names = {n for h in keep for n in (*chains.chain_names(h), chains.candidate_chain_name(h))}
        protected = frozenset(chains.netout_chain_name(h) for h in keep)
        runs = {}
        for version, state in self._states.items():
            wanted = {h: f for h, p in desired.items() if (f := _family(p, version)) is not None
                      and h not in refused}
            names = {f.asg.name for f in wanted.values()} | {c.name for f in wanted.values() for c in f.shared}
            names |= kept_names
            spec = SweepSpec(_orphans_except(names), protected) if complete else None
            runs[version] = self._run(state, wanted, renderer, now, spec, adopt_only=adopt_only)
            if complete:
                state.prune(set(wanted).union(keep).__contains__)
        refused |= {h: "its chain names are shared with another container not enforced yet: neither is "
                       "written until one is found in the kernel" for h in adopt_only if not self._incumbent(h)}
        return self._finish(CallKind.FULL if complete else CallKind.PARTIAL, runs, len(desired), started,
                            prune_logged=complete, refused={**refused, **keep})

    def apply_one(self, plan: ContainerChains) -> ApplyReport:
        """A forced sync of one container: writes its chains (only them), whatever the cache says."""
        handle = plan.container.handle
        asg, candidate = chains.asg_chain_name(handle), chains.candidate_chain_name(handle)
        started = time.monotonic()
        rivals = sorted(h for h, names in self._enforced_names().items()
                        if h != handle and names & plan.chain_names)
        if rivals:
            reason = (f"its chain names are those of container {', '.join(rivals)}: refused, "
                      "the other is left as it is")
            return self._finish(CallKind.ONE, {}, 1, started, prune_logged=False, refused={handle: reason})
        renderer, now = Renderer(), self._clock()
        runs = {}
        for version, state in self._states.items():
            family = _family(plan, version)
            own = {candidate} if family is not None else {asg, candidate}
            spec = SweepSpec(_present(own))
            wanted = {handle: family} if family is not None else {}
            runs[version] = self._run(state, wanted, renderer, now, spec, force={handle})
            if family is None:
                state.prune(lambda h: h != handle)
        return self._finish(CallKind.ONE, runs, 1, started, prune_logged=False)

    def settle(self, desired: Mapping[str, ContainerChains]) -> ApplyReport:
        """Look again at waiting and watched containers (``desired`` holds their plans); write those ready.

        Those due without a plan in ``desired`` are looked at a recheck later, so a container
        the caller cannot plan now never keeps its look due (the poll loop would spin).
        """
        report = self.apply(desired, complete=False)
        now = self._clock()
        for state in self._states.values():
            for handle in state.settler.handles() - set(desired):
                if state.settler.due(handle, now):
                    state.settler.postpone(handle, now)
        return report

    def next_look(self) -> float | None:
        """When (clock time) the next waiting or watched container is due a look; None if there is none."""
        times = [t for s in self._states.values() if (t := s.settler.next_look()) is not None]
        return min(times) if times else None

    def looking(self) -> set[str]:
        """Handles waiting for their CNI or watched after a write."""
        return {h for s in self._states.values() for h in s.settler.handles()}

    def remove_orphans(self, live_handles: Collection[str]) -> ApplyReport:
        """Delete the ASG chains of every container not in ``live_handles`` (closing their parents)."""
        live = set(live_handles)
        keep = {name for h in live for name in (chains.asg_chain_name(h), chains.candidate_chain_name(h))}
        protected = frozenset(chains.netout_chain_name(h) for h in live)
        started = time.monotonic()
        renderer, now = Renderer(), self._clock()
        runs = {}
        for version, state in self._states.items():
            runs[version] = self._run(state, {}, renderer, now, SweepSpec(_orphans_except(keep), protected))
            state.prune(live.__contains__)
        return self._finish(CallKind.ORPHANS, runs, 0, started, prune_logged=False)

    def _incumbent(self, handle: str) -> bool:
        return any(handle in state.applied for state in self._states.values())

    def _enforced_names(self) -> dict[str, set[str]]:
        """Per enforced container, the chain names its applied plans use."""
        names: dict[str, set[str]] = {}
        for state in self._states.values():
            for handle, applied in state.applied.items():
                names.setdefault(handle, set()).update(applied.family.chain_names)
        return names

    def state(self) -> Mapping[str, AppliedContainer]:
        """Per container: the hash, rule count and time of what the kernel enforces, per family."""
        families: dict[str, dict[int, AppliedFamily]] = {}
        for version, state in self._states.items():
            for handle, a in state.applied.items():
                families.setdefault(handle, {})[version] = AppliedFamily(
                    a.digest, a.family.accept_count, a.at, a.adopted, a.verified_at)
        return {h: AppliedContainer(h, f) for h, f in families.items()}

    def invalidate(self, reason: str = "a whole-table read was asked for") -> None:
        """Forget what the kernel holds (``reason`` is logged): the next call reads the table again."""
        for state in self._states.values():
            state.cache.invalidate(reason)

    def kernel(self, version: int) -> KernelTable | None:
        """The cached view of one family's table (None until read); for status pages and tests."""
        return self._states[version].cache.table

    # -- internals ---------------------------------------------------------------------

    def _run(
        self,
        state: FamilyState,
        wanted: Mapping[str, FamilyChains],
        renderer: Renderer,
        now: float,
        spec: SweepSpec | None,
        force: Collection[str] = (),
        adopt_only: Collection[str] = (),
    ) -> FamilyResult:
        cycle = FamilyCycle(state, wanted=wanted, renderer=renderer, logger=self._log, now=now,
                            max_restores=self._max_restores, sweep=spec, force=force, adopt_only=adopt_only)
        return cycle.run()

    def _finish(
        self, kind: CallKind, runs: Mapping[int, FamilyResult], total: int, started: float, *, prune_logged: bool,
        refused: Mapping[str, str] | None = None,
    ) -> ApplyReport:
        touched: set[str] = set()
        adopted: set[str] = set()
        skipped: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        for version, run in runs.items():
            touched.update(run.outcomes)
            for handle, outcome in run.outcomes.items():
                match outcome:
                    case Outcome.ADOPTED:
                        adopted.add(handle)
                    case Outcome.CHANGED:
                        pass  # reported through run.changes
                    case Outcome.SKIPPED:
                        skipped.setdefault(handle, []).append(f"IPv{version}: {run.reasons[handle]}")
                    case Outcome.FAILED:
                        failed.setdefault(handle, []).append(f"IPv{version}: {run.reasons[handle]}")
                    case _:
                        assert_never(outcome)
        report = ApplyReport(
            kind=kind,
            changes=tuple(c for run in runs.values() for c in run.changes),
            adopted=tuple(sorted(adopted)),
            unchanged=max(0, total - len(touched)),
            skipped={h: "; ".join(r) for h, r in skipped.items()},
            failed={h: "; ".join(r) for h, r in failed.items()},
            deleted={v: tuple(run.deleted) for v, run in runs.items() if run.deleted},
            closed={v: tuple(run.closed) for v, run in runs.items() if run.closed},
            deferred={c: r for run in runs.values() for c, r in run.deferred.items()},
            refused=dict(refused or {}),
            drifted={h: f"IPv{v}: {r}" for v, run in runs.items() for h, r in run.drifted.items()},
            families={v: run.report for v, run in runs.items()},
            seconds=time.monotonic() - started,
        )
        self._log_report(report, prune_logged)
        if self._fingerprints is not None and (report.changes or any(f.learned for f in report.families.values())):
            self._fingerprints.save({v: s.applied for v, s in self._states.items()})
        return report

    def _log_report(self, report: ApplyReport, prune: bool) -> None:
        notes = {**{(_Note.SKIPPED, h): r for h, r in report.skipped.items()},
                 **{(_Note.DEFERRED, c): r for c, r in report.deferred.items()},
                 **{(_Note.REFUSED, h): r for h, r in report.refused.items()}}
        for key, reason in notes.items():
            if self._logged.get(key) != reason:  # once per reason, not every cycle
                note, name = key
                match note:
                    case _Note.SKIPPED:
                        self._log.info("container-skipped", {"handle": name, "reason": reason})
                    case _Note.DEFERRED:
                        self._log.info("orphan-deferred", {"chain": name, "reason": reason})
                    case _Note.REFUSED:
                        self._log.error("container-refused", reason, {"handle": name})
                    case _:
                        assert_never(note)
                self._logged[key] = reason
        for handle, reason in report.drifted.items():
            self._log.error("chain-drift-repaired", reason, {"handle": handle})
        if prune:
            for key in [k for k in self._logged if k not in notes]:
                del self._logged[key]
        for change in report.changes:
            self._log.debug("container-written", {"handle": change.handle, "version": change.version,
                                                  "old_digest": change.old_digest, "new_digest": change.new_digest,
                                                  "old_rules": change.old_rules, "new_rules": change.new_rules})
        for handle, reason in report.failed.items():
            self._log.error("container-failed", reason, {"handle": handle})
        self._log.info("cycle-done", report.summary())
