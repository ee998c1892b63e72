"""A daemon thread of the agent's own: the policy watcher, the denied-egress reader, the fleet reporter."""

from __future__ import annotations

import threading
from typing import Self

__all__ = ["Worker"]


class Worker:
    """Runs :meth:`_run` in a daemon thread named ``name`` until :meth:`stop`; ``_run`` waits on ``_stop``."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` for it."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
