"""How every long-running command stops: SIGTERM (monit, BOSH) or SIGINT (Ctrl-C) sets events."""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["stop_on_signals"]


def stop_on_signals(*events: threading.Event) -> None:
    """Set each of ``events`` on SIGTERM or SIGINT.

    The handler only sets events: it must not log, since the logger's lock may be held by
    the interrupted thread."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        for event in events:
            event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
