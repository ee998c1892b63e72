"""One family's part of a dataplane call: classify, build one payload, restore, recover.

Goals and the mechanism serving each:

* **About one kernel commit per cycle** — every container to write, every orphan
  to delete and every parent to close go into one :class:`~.payload.Payload`,
  applied by one ``iptables-restore --noflush``. Nothing to do, nothing run.
* **One bad container must not block the others** — a refusal is mapped to the
  line's owner (:meth:`~.payload.Payload.owner_of`):

  - a container's own rule: that container is dropped (it keeps its previous,
    complete rules; the restore is atomic) and the rest is retried at once; the
    cache stays valid, because a refused restore changed nothing and the line did
    not depend on what we believed about the kernel;
  - a container's jump to a shared chain: the container is dropped and the cache
    too (it believed the shared chain existed);
  - a shared chain's line: every container jumping to it is dropped this cycle;
  - the ``-F`` guard of a parent: the parent is missing; the container waits for
    it (:mod:`.settle`). If the cache believed the parent existed, the cache is
    dropped and the table read again before the retry;
  - a deletion or a closed parent: those chains are left alone this cycle, and the
    cache is dropped (a reference we did not know about is the usual cause);
  - no line, or ``COMMIT`` (nft reports some errors there): the cache is dropped
    and the same transaction retried once after a fresh read; if it is refused
    again, the containers are bisected, each half committed on its own, until the
    culprit is alone.

  Retries are bounded (``max_restores`` per family per call); what is left is
  reported failed and retried next cycle.
* **An honest cache** — :class:`~.table.KernelTable` changes only in
  :meth:`FamilyCycle._committed`, after a successful restore, and through reads; it
  is dropped only through :meth:`~.table.KernelCache.invalidate`, which logs why.
* **One result** — a cycle's outcome per container (:class:`Outcome`), its changes,
  deletions and figures come back as one frozen :class:`FamilyResult`.
* **Decide on what is there now** — before classifying, the parents of containers
  that are new, waiting or watched (and due) are read with one targeted read
  (:meth:`Runner.read_chains`), unless the whole table was just read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import assert_never

from dynamic_asgs.asg.translate import Chain, FamilyChains
from dynamic_asgs.errors import IptablesError, LockTimeout, RestoreError
from dynamic_asgs.iptables.render import Renderer
from dynamic_asgs.iptables.runner import Runner
from dynamic_asgs.lager import Logger

from .payload import FRAME, OwnerKind, Payload, RenderRefused, Write
from .report import ContainerChange, FamilyReport
from .settle import Settler
from .sweep import Sweep, plan_sweep
from .table import Applied, Classified, Context, KernelCache, KernelTable, classify

__all__ = ["LOCK_WAIT_LOGGED", "FamilyCycle", "FamilyResult", "FamilyState", "Outcome", "SweepSpec"]

#: A wait for the iptables lock file at least this long (seconds) is logged; any wait is counted.
LOCK_WAIT_LOGGED = 1.0


class Outcome(Enum):
    """What a call did with a wanted container in one family (containers left as they were have none)."""

    #: The kernel held its chains already: taken as ours, nothing written.
    ADOPTED = "adopted"
    #: Its chains were written.
    CHANGED = "changed"
    #: It waits for its parent chain (its CNI is not done): looked at again.
    SKIPPED = "skipped"
    #: A restore refused it, or the family gave up: it keeps its previous rules, retried next cycle.
    FAILED = "failed"


@dataclass
class FamilyState:
    """What the dataplane keeps between calls for one family."""

    runner: Runner
    cache: KernelCache
    applied: dict[str, Applied] = field(default_factory=dict)
    settler: Settler = field(default_factory=Settler)
    #: Fingerprints kept across restarts: chain -> (content hash, fingerprint).
    baseline: dict[str, tuple[str, str]] = field(default_factory=dict)

    def prune(self, keep: Callable[[str], bool]) -> None:
        """Forget containers not kept whose ASG chain is gone from the kernel, and their settling."""
        self.settler.prune(keep)
        kernel = self.cache.table
        if kernel is None:
            return
        for handle in [h for h, a in self.applied.items() if not keep(h) and a.family.asg.name not in kernel.info]:
            del self.applied[handle]


@dataclass(frozen=True)
class SweepSpec:
    """Which owned chains are orphans (given the kernel), and parents that must not be closed."""

    candidates: Callable[[KernelTable], Iterable[str]]
    protected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FamilyResult:
    """What one family's part of a call did.

    ``reasons`` says why each skipped or failed container was; ``deferred`` maps orphan
    chains left in place to the reason; ``drifted`` maps containers found edited behind
    our back (and rewritten) to what differed.
    """

    outcomes: Mapping[str, Outcome]
    reasons: Mapping[str, str]
    changes: tuple[ContainerChange, ...]
    deleted: tuple[str, ...]
    closed: tuple[str, ...]
    deferred: Mapping[str, str]
    drifted: Mapping[str, str]
    report: FamilyReport


@dataclass(frozen=True)
class _Scope:
    handles: frozenset[str] | None  # containers written in this attempt; None: all
    sweep: bool  # whether orphans are deleted in this attempt


class FamilyCycle:
    """Runs one family's transaction(s) for one call; :meth:`run` returns what happened."""

    def __init__(
        self,
        state: FamilyState,
        *,
        wanted: Mapping[str, FamilyChains],
        renderer: Renderer,
        logger: Logger,
        now: float,
        max_restores: int,
        sweep: SweepSpec | None,
        force: Collection[str] = (),
        adopt_only: Collection[str] = (),
    ) -> None:
        self._state = state
        self._adopt_only = adopt_only
        self._version = state.runner.version
        self._wanted = wanted
        self._renderer = renderer
        self._log = logger
        self._now = now
        self._max_restores = max_restores
        self._sweep_spec = sweep
        self._force = force
        self._outcome: dict[str, Outcome] = {}
        self._reasons: dict[str, str] = {}
        self._drifted: dict[str, str] = {}
        self._learned = 0
        self._looked = 0
        self._changes: list[ContainerChange] = []
        self._deleted: list[str] = []
        self._closed: list[str] = []
        self._deferred: dict[str, str] = {}
        self._restores = 0
        self._commits = 0
        self._payload_lines = 0
        self._restore_seconds = 0.0
        self._lock_wait_seconds = 0.0
        self._read_seconds: float | None = None
        self._error_text: str | None = None
        self._exclude_chains: set[str] = set()
        self._reread_done = False
        self._parents = {f.parent.name for f in wanted.values()}
        self._last: Classified | None = None

    def run(self) -> FamilyResult:
        """Bring this family's table to the wanted state, as far as it can this call."""
        queue = [_Scope(None, True)]
        while queue:
            if self._restores >= self._max_restores:
                reason = f"gave up after {self._restores} refused restores; retried next cycle"
                self._abandon(reason)
                self._state.cache.invalidate(reason)
                break
            scope = queue.pop(0)
            kernel = self._kernel()
            if kernel is None or not self._look(kernel):
                break
            cls = self._classify(kernel, scope)
            sweep = self._sweep(kernel, cls, scope)
            if not cls.writes and not cls.shared and sweep.empty:
                continue
            payload = Payload(self._version, cls.writes, sweep.closes, sweep.deletes, self._renderer, cls.shared)
            started = time.monotonic()
            try:
                stats = self._state.runner.restore(payload)
            except RestoreError as exc:
                self._count(time.monotonic() - started, committed=0)
                queue[0:0] = self._refused(exc, payload, kernel, cls, sweep, scope)
                continue
            except RenderRefused as exc:
                self._count(time.monotonic() - started, committed=0)
                for handle in self._users(cls, exc.chain) if exc.chain else (exc.handle,):
                    self._set(handle, Outcome.FAILED, str(exc))
                queue.insert(0, scope)
                continue
            except IptablesError as exc:
                self._count(time.monotonic() - started, committed=0)
                self._error(exc)
                break
            self._count(stats.seconds, committed=stats.lines)
            self._waited(stats.lock_wait)
            self._committed(kernel, payload.resolved(), sweep, cls.shared)
        if self._state.cache.table is not None:
            self._state.cache.table.end_cycle()
        return self._result()

    def _result(self) -> FamilyResult:
        report = FamilyReport(self._version, restores=self._restores, commits=self._commits,
                              payload_lines=self._payload_lines, restore_seconds=self._restore_seconds,
                              lock_wait_seconds=self._lock_wait_seconds, read_seconds=self._read_seconds,
                              error=self._error_text, looked=self._looked, learned=self._learned)
        return FamilyResult(outcomes=dict(self._outcome), reasons=dict(self._reasons), changes=tuple(self._changes),
                            deleted=tuple(self._deleted), closed=tuple(self._closed), deferred=dict(self._deferred),
                            drifted=dict(self._drifted), report=report)

    # -- steps -------------------------------------------------------------------------

    def _kernel(self) -> KernelTable | None:
        cache = self._state.cache
        if cache.table is None:
            started = time.monotonic()
            try:
                saved = self._state.runner.save()
            except IptablesError as exc:
                self._error(exc)
                return None
            cache.fill(saved)
            took = time.monotonic() - started
            self._read_seconds = (self._read_seconds or 0.0) + took
            self._log.info("table-read", {"version": self._version, "chains": len(saved.chains),
                                          "seconds": round(took, 3)})
        return cache.table

    def _look(self, kernel: KernelTable) -> bool:
        """Read the parents of new, waiting and watched (due) containers; False if the read failed."""
        if kernel.fresh:
            return True
        settler, applied, now = self._state.settler, self._state.applied, self._now
        names = {f.parent.name for h, f in self._wanted.items()
                 if h not in self._force and f.parent.name not in kernel.observed
                 and (h not in applied or settler.looking(h)) and settler.due(h, now)}
        if not names:
            return True
        try:
            part = self._state.runner.read_chains(names)
        except IptablesError as exc:
            self._error(exc)
            return False
        kernel.observe(names, part)
        self._looked += len(names)
        return True

    def _classify(self, kernel: KernelTable, scope: _Scope) -> Classified:
        state = self._state
        ctx = Context(renderer=self._renderer, now=self._now, settler=state.settler, baseline=state.baseline,
                      scope=scope.handles, force=self._force, adopt_only=self._adopt_only,
                      exclude={h for h, o in self._outcome.items() if o in (Outcome.FAILED, Outcome.SKIPPED)})
        cls = classify(kernel, state.applied, self._wanted, ctx)
        cls.record(state.applied, state.settler, self._now)
        for handle in cls.adopted:
            self._outcome.setdefault(handle, Outcome.ADOPTED)
        for handle, reason in cls.skipped.items():
            self._set(handle, Outcome.SKIPPED, reason)
        self._drifted.update(cls.drifted)
        self._learned += len(cls.learned)
        self._last = cls
        return cls

    def _sweep(self, kernel: KernelTable, cls: Classified, scope: _Scope) -> Sweep:
        spec = self._sweep_spec
        candidates = spec.candidates(kernel) if spec is not None and scope.sweep else ()
        written = {w.family.parent.name for w in cls.writes}
        protected = (self._parents - written) | (spec.protected if spec else frozenset())
        sweep = plan_sweep(kernel, candidates=candidates, writes=cls.writes, protected=protected,
                           exclude=self._exclude_chains)
        if spec is not None and scope.sweep:
            self._deferred = dict(sweep.deferred)
        return sweep

    def _committed(self, kernel: KernelTable, writes: list[Write], sweep: Sweep, shared: Iterable[Chain]) -> None:
        applied = self._state.applied
        for w in writes:
            assert w.digest is not None
            prev = applied.get(w.handle)
            old = kernel.info.get(w.family.asg.name)
            self._changes.append(ContainerChange(
                w.handle, self._version, w.digest, w.family.accept_count,
                old_digest=prev.digest if prev else (old.digest if old else None),
                old_rules=prev.family.accept_count if prev else None,
            ))
            applied[w.handle] = Applied(w.family, w.digest, self._now, adopted=False)
            self._outcome[w.handle] = Outcome.CHANGED
            watch = self._last.watch.get(w.handle) if self._last is not None else None
            self._state.settler.written(w.handle, self._now, watch=watch is True, once=watch is False)
        kernel.commit(writes, sweep.closes, sweep.deletes, tuple(shared))
        self._deleted += sweep.deletes
        self._closed += sweep.closes

    # -- failures ----------------------------------------------------------------------

    def _refused(
        self, exc: RestoreError, payload: Payload, kernel: KernelTable, cls: Classified, sweep: Sweep, scope: _Scope
    ) -> list[_Scope]:
        owner = payload.owner_of(exc.line) or FRAME
        kind, name = owner.kind, owner.name
        self._log.error("restore-refused", exc, {"version": self._version, "line": exc.line, "owner": kind,
                                                 "name": name, "context": exc.context})
        cache = self._state.cache
        match kind:
            case OwnerKind.WRITE:
                self._set(name, Outcome.FAILED, str(exc))
                return [scope]
            case OwnerKind.LINK:
                self._set(name, Outcome.FAILED, str(exc))
                cache.invalidate(f"a restore refused container {name}'s jump to a shared chain the cache believed "
                                 "to exist")
                return [scope]
            case OwnerKind.SHARED:
                for handle in self._users(cls, name):
                    self._set(handle, Outcome.FAILED, f"shared chain {name}: {exc}")
                return [scope]
            case OwnerKind.GUARD:
                parent = self._wanted[name].parent.name
                if kernel.exists(parent) is True:  # the cache believed it existed: read the table again
                    cache.invalidate(f"parent chain {parent} was believed to exist; a restore found it missing")
                kernel.mark_missing(parent)
                reason = f"parent chain {parent} does not exist (the CNI creates it): looked at again"
                self._set(name, Outcome.SKIPPED, self._state.settler.wait(name, self._now, reason))
                return [scope]
            case OwnerKind.CLOSE_GUARD | OwnerKind.CLOSE | OwnerKind.DELETE:
                self._exclude_chains.add(name)
                cache.invalidate(f"a restore refused the {kind} line of chain {name}: the table holds what we "
                                 "do not know (often a reference)")
                return [scope]
            case OwnerKind.FRAME:
                if not self._reread_done:
                    self._reread_done = True
                    cache.invalidate("a restore was refused on no line of ours (retried once after a fresh read)")
                    return [scope]
                return self._bisect(cls, sweep, str(exc))
            case _:
                assert_never(kind)

    def _bisect(self, cls: Classified, sweep: Sweep, reason: str) -> list[_Scope]:
        handles = [w.handle for w in cls.writes]
        scopes: list[_Scope] = []
        if len(handles) > 1:
            half = len(handles) // 2
            scopes += [_Scope(frozenset(handles[:half]), False), _Scope(frozenset(handles[half:]), False)]
        elif handles and sweep.empty:
            self._set(handles[0], Outcome.FAILED, reason)
        elif handles:
            scopes.append(_Scope(frozenset(handles), False))
        if not sweep.empty:
            if handles:
                scopes.append(_Scope(frozenset(), True))
            else:
                self._exclude_chains.update(sweep.deletes)
                self._deferred.update(dict.fromkeys(sweep.deletes, f"deletion refused: {reason}"))
        return scopes

    @staticmethod
    def _users(cls: Classified, chain: str) -> list[str]:
        """The written containers that jump to shared chain ``chain``."""
        return [w.handle for w in cls.writes if any(c.name == chain for c in w.family.shared)]

    def _abandon(self, reason: str) -> None:
        last = self._last
        if last is not None:
            for handle in [w.handle for w in last.writes] + list(last.pending):
                if handle not in self._outcome:
                    self._set(handle, Outcome.FAILED, reason)

    def _error(self, exc: IptablesError) -> None:
        self._log.error("iptables-failed", exc, {"version": self._version})
        self._error_text = str(exc)
        if not isinstance(exc, LockTimeout):  # a tool that died mid-way: trust nothing we believed
            self._state.cache.invalidate("an iptables tool failed (see iptables-failed): what it did is unknown")
        self._abandon(str(exc))

    def _set(self, handle: str, outcome: Outcome, reason: str) -> None:
        if self._outcome.get(handle) is not Outcome.CHANGED:
            self._outcome[handle] = outcome
            self._reasons[handle] = reason

    def _waited(self, seconds: float) -> None:
        self._lock_wait_seconds += seconds
        if seconds >= LOCK_WAIT_LOGGED:
            self._log.info("iptables-lock-waited", {"version": self._version, "seconds": round(seconds, 3)})

    def _count(self, seconds: float, *, committed: int) -> None:
        self._restores += 1
        self._restore_seconds += seconds
        if committed:
            self._commits += 1
            self._payload_lines += committed
