"""Timestamps in the documents that cross process boundaries (status, audit report)."""

from __future__ import annotations

import time

__all__ = ["iso_utc"]


def iso_utc(ts: float | None) -> str | None:
    """UNIX time ``ts`` as ISO 8601 UTC with milliseconds (``2026-01-01T00:00:00.000Z``); None stays None."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
