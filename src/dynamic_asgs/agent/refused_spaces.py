"""Spaces the policy server refuses, found and set aside so that they cannot freeze a cell.

The agent asks for the groups of every space on its cell in one request. If the server
refuses that request (HTTP 4xx: a space guid it will not take), one bad store entry
would otherwise stop ASG updates for every container on the cell. Goals and mechanism:

* **Isolate** — on a refusal, the space list is bisected (each half asked on its own)
  until the refused spaces are alone: about ``k * log2(n)`` requests for ``k`` bad spaces
  out of ``n``, bounded by ``max_probes``; past the bound the refusal stands as it was.
* **Set aside, not forgotten** — refused spaces are left out of later requests; their
  containers keep the rules they have (neither rewritten nor swept) and are reported.
  Each refused space is asked again after ``retry_seconds``; a space no container uses
  any more is dropped from the list.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from dynamic_asgs.errors import RefusedRequest

__all__ = ["RefusedSpaces"]


@dataclass(frozen=True, slots=True)
class _Refusal:
    reason: str
    at: float


class RefusedSpaces:
    """Which spaces the policy server refused, and since when."""

    def __init__(self, *, retry_seconds: float = 300.0, max_probes: int = 64) -> None:
        self.retry_seconds = retry_seconds
        self.max_probes = max_probes
        self._refused: dict[str, _Refusal] = {}

    def __contains__(self, space: object) -> bool:
        return space in self._refused

    def reasons(self) -> dict[str, str]:
        """Each refused space and the server's answer."""
        return {s: r.reason for s, r in sorted(self._refused.items())}

    def askable(self, spaces: Collection[str], now: float) -> frozenset[str]:
        """``spaces`` without those refused recently; forgets refused spaces no longer in use."""
        for space in [s for s in self._refused if s not in spaces]:
            del self._refused[space]
        return frozenset(s for s in spaces
                         if s not in self._refused or now - self._refused[s].at >= self.retry_seconds)

    def accepted(self, spaces: Collection[str]) -> None:
        """The server answered for ``spaces``: none of them is refused any more."""
        for space in spaces:
            self._refused.pop(space, None)

    def isolate(self, spaces: Collection[str], probe: Callable[[frozenset[str]], object], now: float,
                refusal: RefusedRequest) -> frozenset[str]:
        """The refused spaces among ``spaces``, found by asking halves through ``probe``.

        ``probe(spaces)`` raises :class:`RefusedRequest` when the server refuses them; any
        other error stops the search and propagates. Raises ``refusal`` when no space
        could be isolated within the probe budget.
        """
        found: dict[str, str] = {}
        budget = [self.max_probes]

        def search(group: list[str], known: RefusedRequest | None) -> None:
            if known is None:
                if budget[0] <= 0:
                    raise refusal
                budget[0] -= 1
                try:
                    probe(frozenset(group))
                    return
                except RefusedRequest as exc:
                    known = exc
            if len(group) == 1:
                found[group[0]] = str(known)
                return
            half = len(group) // 2
            search(group[:half], None)
            search(group[half:], None)

        search(sorted(spaces), refusal)
        if not found:
            raise refusal
        for space, reason in found.items():
            self._refused[space] = _Refusal(reason, now)
        return frozenset(found)
