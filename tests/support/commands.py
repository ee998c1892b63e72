"""Stand-ins for external commands (iptables-save, iptables-restore, ...), written per test."""

from __future__ import annotations

from pathlib import Path

__all__ = ["shim"]


def shim(directory: Path, name: str, body: str) -> str:
    """An executable ``/bin/sh`` script ``directory/name`` running ``body``; its path."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)
