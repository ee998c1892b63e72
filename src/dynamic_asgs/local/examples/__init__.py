"""Example inputs shipped with the package: security groups for ``local up`` and ``cc-stub``, and the
input of ``translate`` (a CC listing and one container store entry)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASGS", "CONTAINER", "DIRECTORY", "SECURITY_GROUPS"]

DIRECTORY = Path(__file__).resolve().parent
#: Security groups in the stand-in's human-friendly form (``local up``'s default).
ASGS = DIRECTORY / "asgs.yml"
#: A CC ``/v3/security_groups`` listing.
SECURITY_GROUPS = DIRECTORY / "security-groups.json"
#: One entry of a cell's container metadata store.
CONTAINER = DIRECTORY / "container.json"
