"""When a new container's chains may be written, and which written ones to look at again.

A CNI that does not call the agent (silk's cni-wrapper-plugin in cf-deployment, where
silk's agent answers 405) builds a container's parent chain ``netout--<h>`` in steps,
after the store entry that announces the container (ANALYSIS.md §2): the chain
appears empty, then holds a lone REJECT, then, when the CNI learns that ASG syncing
is off, Garden's static rules are inserted at position 1 in one restore (they always
end with an INVALID drop and a RELATED,ESTABLISHED accept). Writing before that last
step puts the static rules *above* our jump.

Goals and the mechanism serving each:

* **Write once the CNI is done** — a new container waits while its parent is
  absent or bare (:class:`~.table.Parent`); a parent holding the CNI's static rules
  is written at once and looked at once more afterwards (``verify once more``).
* **Never wait on a CNI that will not insert anything** — a bare parent is written
  after ``settle_seconds``; then it is watched for ``watch_seconds`` and rewritten
  if static rules appear above the jump after all.
* **Never forget a waiting container** — it is looked at again every ``recheck``
  seconds (one targeted read of its parent, :meth:`Runner.read_chains`) during
  ``settle_seconds + watch_seconds``, then with a doubling interval up to
  ``max_recheck``: a store entry whose parent never comes (a failed CNI ADD) costs
  ever less, and one that comes late is still written within ``max_recheck``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SettleSettings", "Settler"]


@dataclass(frozen=True, slots=True)
class SettleSettings:
    """How long new containers wait for their CNI, and how often they are looked at."""

    settle_seconds: float = 0.0
    watch_seconds: float = 0.0
    recheck: float = 0.5
    max_recheck: float = 60.0


@dataclass(slots=True)
class _Wait:
    since: float
    next_check: float
    interval: float
    reason: str


@dataclass
class Settler:
    """One family's waiting and watched containers (handles), with their next look."""

    settings: SettleSettings = field(default_factory=SettleSettings)
    first_seen: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, _Wait] = field(default_factory=dict)
    #: handle -> (watch until, or None: look once more) and the time of the next look.
    watched: dict[str, tuple[float | None, float]] = field(default_factory=dict)

    def age(self, handle: str, now: float) -> float:
        """Seconds since ``handle`` was first :meth:`seen` without its chains written (0 if never)."""
        return now - self.first_seen.get(handle, now)

    def seen(self, handle: str, now: float) -> None:
        """``handle`` was seen without its chains written: its :meth:`age` counts from its first sighting."""
        self.first_seen.setdefault(handle, now)

    def due(self, handle: str, now: float) -> bool:
        """Whether a waiting or watched container should be looked at now."""
        wait = self.waiting.get(handle)
        if wait is not None and wait.next_check > now:
            return False
        watch = self.watched.get(handle)
        return watch is None or watch[1] <= now

    def wait(self, handle: str, now: float, reason: str) -> str:
        """``handle`` could not be written yet (``reason``): schedule its next look; return the reason."""
        s = self.settings
        wait = self.waiting.get(handle)
        if wait is None:
            self.waiting[handle] = _Wait(now, now + s.recheck, s.recheck, reason)
            return reason
        if now - wait.since > s.settle_seconds + s.watch_seconds:
            wait.interval = min(wait.interval * 2, s.max_recheck)
        wait.next_check = now + wait.interval
        wait.reason = reason
        return reason

    def reason(self, handle: str) -> str:
        """Why ``handle`` waits."""
        return self.waiting[handle].reason

    def written(self, handle: str, now: float, *, watch: bool, once: bool) -> None:
        """``handle``'s chains were written: watch it (until a deadline, or ``once``) or forget it."""
        self.waiting.pop(handle, None)
        self.first_seen.pop(handle, None)
        if once:
            self.watched[handle] = (None, now + self.settings.recheck)
        elif watch and self.settings.watch_seconds > 0:
            self.watched[handle] = (now + self.settings.watch_seconds, now + self.settings.recheck)
        else:
            self.watched.pop(handle, None)

    def verified(self, handle: str, now: float) -> None:
        """A look found ``handle``'s chains intact: end a once-watch, or schedule the next look."""
        self.waiting.pop(handle, None)
        self.first_seen.pop(handle, None)
        watch = self.watched.get(handle)
        if watch is None:
            return
        until = watch[0]
        if until is None or until <= now:
            del self.watched[handle]
        else:
            self.watched[handle] = (until, now + self.settings.recheck)

    def settled(self, handle: str) -> None:
        """``handle`` needs no more looks (forced, or adopted as it was)."""
        self.waiting.pop(handle, None)
        self.first_seen.pop(handle, None)
        self.watched.pop(handle, None)

    def postpone(self, handle: str, now: float) -> None:
        """``handle`` was due but had no plan to look with (e.g. its space is set aside): look a recheck later."""
        wait = self.waiting.get(handle)
        if wait is not None:
            wait.next_check = max(wait.next_check, now + self.settings.recheck)
        watch = self.watched.get(handle)
        if watch is not None:
            until = watch[0]
            if until is not None and until <= now:
                del self.watched[handle]
            else:
                self.watched[handle] = (until, max(watch[1], now + self.settings.recheck))

    def looking(self, handle: str) -> bool:
        """Whether ``handle`` is waiting or watched."""
        return handle in self.waiting or handle in self.watched

    def next_look(self) -> float | None:
        """When the earliest waiting or watched container is due (None: nothing to look at)."""
        times = [w.next_check for w in self.waiting.values()] + [t for _, t in self.watched.values()]
        return min(times) if times else None

    def handles(self) -> set[str]:
        """Every waiting or watched handle."""
        return set(self.waiting) | set(self.watched)

    def prune(self, keep: Callable[[str], bool]) -> None:
        """Forget handles not kept."""
        for table in (self.first_seen, self.waiting, self.watched):
            for handle in [h for h in table if not keep(h)]:
                del table[handle]
