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
  :meth:`FamilyCycle._committed`, after a successful restore, and through reads.
* **Decide on what is there now** — before classifying, the parents of containers
  that are new, waiting or watched (and due) are read with one targeted read
  (:meth:`Runner.read_chains`), unless the whole table was just read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from dynamic_asgs.asg.translate import FamilyChains
from dynamic_asgs.errors import IptablesError, LockTimeout, RestoreError
from dynamic_asgs.iptables.render import Renderer
from dynamic_asgs.iptables.runner import Runner
from dynamic_asgs.lager import Logger

from .payload import Payload, RenderRefused, Write
from .report import ContainerChange, FamilyReport
from .settle import Settler
from .sweep import Sweep, plan_sweep
from .table import Applied, Classified, Context, KernelTable, classify

__all__ = ["LOCK_WAIT_LOGGED", "FamilyCycle", "FamilyState", "SweepSpec"]

#: A wait for the iptables lock file at least this long (seconds) is logged; any wait is counted.
LOCK_WAIT_LOGGED = 1.0


@dataclass
class FamilyState:
    """What the dataplane keeps between calls for one family."""

    runner: Runner
    kernel: KernelTable | None = None
    applied: dict[str, Applied] = field(default_factory=dict)
    settler: Settler = field(default_factory=Settler)
    #: Fingerprints kept across restarts: chain -> (content hash, fingerprint).
    baseline: dict[str, tuple[str, str]] = field(default_factory=dict)

    def prune(self, keep: Callable[[str], bool]) -> None:
        """Forget containers not kept whose ASG chain is gone from the kernel, and their settling."""
        self.settler.prune(keep)
        kernel = self.kernel
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
class _Scope:
    handles: frozenset[str] | None  # containers written in this attempt; None: all
    sweep: bool  # whether orphans are deleted in this attempt


class FamilyCycle:
    """Runs one family's transaction(s) for one call and collects what happened."""

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
        self.state = state
        self.adopt_only = adopt_only
        self.version = state.runner.version
        self.wanted = wanted
        self.renderer = renderer
        self.log = logger
        self.now = now
        self.max_restores = max_restores
        self.sweep_spec = sweep
        self.force = force
        self.outcome: dict[str, str] = {}  # handle -> adopted | changed | skipped | failed
        self.reasons: dict[str, str] = {}
        self.drifted: dict[str, str] = {}
        self.learned = 0
        self.looked = 0
        self.changes: list[ContainerChange] = []
        self.deleted: list[str] = []
        self.closed: list[str] = []
        self.deferred: dict[str, str] = {}
        self.restores = 0
        self.commits = 0
        self.payload_lines = 0
        self.restore_seconds = 0.0
        self.lock_wait_seconds = 0.0
        self.read_seconds: float | None = None
        self.error: str | None = None
        self._exclude_chains: set[str] = set()
        self._reread_done = False
        self._parents = {f.parent.name for f in wanted.values()}
        self._last: Classified | None = None

    def report(self) -> FamilyReport:
        """This family's figures for the call's report."""
        return FamilyReport(self.version, restores=self.restores, commits=self.commits,
                            payload_lines=self.payload_lines, restore_seconds=self.restore_seconds,
                            lock_wait_seconds=self.lock_wait_seconds, read_seconds=self.read_seconds, error=self.error,
                            looked=self.looked, learned=self.learned)

    def run(self) -> None:
        """Bring this family's table to the wanted state, as far as it can this call."""
        queue = [_Scope(None, True)]
        while queue:
            if self.restores >= self.max_restores:
                self._abandon(f"gave up after {self.restores} refused restores; retried next cycle")
                self.state.kernel = None
                break
            scope = queue.pop(0)
            kernel = self._kernel()
            if kernel is None or not self._look(kernel):
                break
            cls = self._classify(kernel, scope)
            sweep = self._sweep(kernel, cls, scope)
            if not cls.writes and sweep.empty:
                continue
            payload = Payload(self.version, cls.writes, sweep.closes, sweep.deletes, self.renderer)
            started = time.monotonic()
            try:
                stats = self.state.runner.restore(payload)
            except RestoreError as exc:
                self._count(time.monotonic() - started, committed=0)
                queue[0:0] = self._refused(exc, payload, kernel, cls, sweep, scope)
                continue
            except RenderRefused as exc:
                self._count(time.monotonic() - started, committed=0)
                self._set(exc.handle, "failed", str(exc))
                queue.insert(0, scope)
                continue
            except IptablesError as exc:
                self._count(time.monotonic() - started, committed=0)
                self._error(exc)
                break
            self._count(stats.seconds, committed=stats.lines)
            self._waited(stats.lock_wait)
            self._committed(kernel, payload.resolved(), sweep)
        if self.state.kernel is not None:
            self.state.kernel.end_cycle()

    # -- steps -------------------------------------------------------------------------

    def _kernel(self) -> KernelTable | None:
        if self.state.kernel is None:
            started = time.monotonic()
            try:
                saved = self.state.runner.save()
            except IptablesError as exc:
                self._error(exc)
                return None
            self.state.kernel = KernelTable(saved)
            took = time.monotonic() - started
            self.read_seconds = (self.read_seconds or 0.0) + took
            self.log.info("table-read", {"version": self.version, "chains": len(saved.chains),
                                         "seconds": round(took, 3)})
        return self.state.kernel

    def _look(self, kernel: KernelTable) -> bool:
        """Read the parents of new, waiting and watched (due) containers; False if the read failed."""
        if kernel.fresh:
            return True
        settler, applied, now = self.state.settler, self.state.applied, self.now
        names = {f.parent.name for h, f in self.wanted.items()
                 if h not in self.force and f.parent.name not in kernel.observed
                 and (h not in applied or settler.looking(h)) and settler.due(h, now)}
        if not names:
            return True
        try:
            part = self.state.runner.read_chains(names)
        except IptablesError as exc:
            self._error(exc)
            return False
        kernel.observe(names, part)
        self.looked += len(names)
        return True

    def _classify(self, kernel: KernelTable, scope: _Scope) -> Classified:
        ctx = Context(renderer=self.renderer, now=self.now, settler=self.state.settler, baseline=self.state.baseline,
                      scope=scope.handles, force=self.force, adopt_only=self.adopt_only,
                      exclude={h for h, o in self.outcome.items() if o in ("failed", "skipped")})
        cls = classify(kernel, self.state.applied, self.wanted, ctx)
        for handle in cls.adopted:
            self.outcome.setdefault(handle, "adopted")
        for handle, reason in cls.skipped.items():
            self._set(handle, "skipped", reason)
        self.drifted.update(cls.drifted)
        self.learned += len(cls.learned)
        self._last = cls
        return cls

    def _sweep(self, kernel: KernelTable, cls: Classified, scope: _Scope) -> Sweep:
        spec = self.sweep_spec
        candidates = spec.candidates(kernel) if spec is not None and scope.sweep else ()
        written = {w.family.parent.name for w in cls.writes}
        protected = (self._parents - written) | (spec.protected if spec else frozenset())
        sweep = plan_sweep(kernel, candidates=candidates, writes=cls.writes, protected=protected,
                           exclude=self._exclude_chains)
        if spec is not None and scope.sweep:
            self.deferred = dict(sweep.deferred)
        return sweep

    def _committed(self, kernel: KernelTable, writes: list[Write], sweep: Sweep) -> None:
        applied = self.state.applied
        for w in writes:
            assert w.digest is not None
            prev = applied.get(w.handle)
            old = kernel.info.get(w.family.asg.name)
            self.changes.append(ContainerChange(
                w.handle, self.version, w.digest, w.family.accept_count,
                old_digest=prev.digest if prev else (old.digest if old else None),
                old_rules=prev.family.accept_count if prev else None,
            ))
            applied[w.handle] = Applied(w.family, w.digest, self.now, adopted=False)
            self.outcome[w.handle] = "changed"
            watch = self._last.watch.get(w.handle) if self._last is not None else None
            self.state.settler.written(w.handle, self.now, watch=watch is True, once=watch is False)
        kernel.commit(writes, sweep.closes, sweep.deletes)
        self.deleted += sweep.deletes
        self.closed += sweep.closes

    # -- failures ----------------------------------------------------------------------

    def _refused(
        self, exc: RestoreError, payload: Payload, kernel: KernelTable, cls: Classified, sweep: Sweep, scope: _Scope
    ) -> list[_Scope]:
        owner = payload.owner_of(exc.line)
        kind = owner.kind if owner is not None else "frame"
        name = owner.name if owner is not None else ""
        self.log.error("restore-refused", exc, {"version": self.version, "line": exc.line, "owner": kind,
                                                "name": name, "context": exc.context})
        if kind == "write":
            self._set(name, "failed", str(exc))
            return [scope]
        if kind == "guard":
            parent = self.wanted[name].parent.name
            if kernel.exists(parent) is True:
                self.state.kernel = None  # the cache believed it existed: read the table again
            kernel.mark_missing(parent)
            reason = f"parent chain {parent} does not exist (the CNI creates it): looked at again"
            self._set(name, "skipped", self.state.settler.wait(name, self.now, reason))
            return [scope]
        if kind != "frame":
            self._exclude_chains.add(name)
            self.state.kernel = None
            return [scope]
        if not self._reread_done:
            self._reread_done = True
            self.state.kernel = None
            return [scope]
        return self._bisect(cls, sweep, str(exc))

    def _bisect(self, cls: Classified, sweep: Sweep, reason: str) -> list[_Scope]:
        handles = [w.handle for w in cls.writes]
        scopes: list[_Scope] = []
        if len(handles) > 1:
            half = len(handles) // 2
            scopes += [_Scope(frozenset(handles[:half]), False), _Scope(frozenset(handles[half:]), False)]
        elif handles and sweep.empty:
            self._set(handles[0], "failed", reason)
        elif handles:
            scopes.append(_Scope(frozenset(handles), False))
        if not sweep.empty:
            if handles:
                scopes.append(_Scope(frozenset(), True))
            else:
                self._exclude_chains.update(sweep.deletes)
                self.deferred.update(dict.fromkeys(sweep.deletes, f"deletion refused: {reason}"))
        return scopes

    def _abandon(self, reason: str) -> None:
        last = self._last
        if last is not None:
            for handle in [w.handle for w in last.writes] + last.pending:
                if handle not in self.outcome:
                    self._set(handle, "failed", reason)

    def _error(self, exc: IptablesError) -> None:
        self.log.error("iptables-failed", exc, {"version": self.version})
        self.error = str(exc)
        if not isinstance(exc, LockTimeout):
            self.state.kernel = None  # a tool that died mid-way: trust nothing we believed
        self._abandon(str(exc))

    def _set(self, handle: str, outcome: str, reason: str) -> None:
        if self.outcome.get(handle) != "changed":
            self.outcome[handle] = outcome
            self.reasons[handle] = reason

    def _waited(self, seconds: float) -> None:
        self.lock_wait_seconds += seconds
        if seconds >= LOCK_WAIT_LOGGED:
            self.log.info("iptables-lock-waited", {"version": self.version, "seconds": round(seconds, 3)})

    def _count(self, seconds: float, *, committed: int) -> None:
        self.restores += 1
        self.restore_seconds += seconds
        if committed:
            self.commits += 1
            self.payload_lines += committed
