"""The project's exception tree.

Every error the project raises on purpose derives from :class:`DynamicASGsError`.
Subprocess, HTTP and database errors are turned into these at one boundary each
(``raise ... from exc``), so callers never match on strings::

    DynamicASGsError
    ├── ConfigError          bad configuration file or flags (daemons exit 2)
    ├── InputError           bad input file given to a tool (exit 2)
    ├── ValidationError      a security group fails validation
    │   └── RuleError        one rule: names the group, the rule index, the field, the reason
    ├── RenderRefused        the renderer refused a token of one container's chains (names the container)
    ├── StoreError           the container metadata store is missing, torn or corrupt
    ├── IptablesError        iptables-save / iptables-restore failed
    │   ├── LockTimeout      the iptables lock was not acquired within the bound
    │   └── RestoreError     a restore payload was refused (carries the failing line)
    ├── UpstreamError        Cloud Controller, UAA or the policy server answered badly
    │   ├── RefusedRequest   the peer refused the request itself (HTTP 4xx): repeating it will not help
    │   └── UnstableListing  the ASG listing changed while it was being paged
    ├── DatabaseError        the policy DB failed
    └── LeaseLost            this syncer no longer holds the active lease
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseError",
    "DynamicASGsError",
    "InputError",
    "IptablesError",
    "LeaseLost",
    "LockTimeout",
    "RefusedRequest",
    "RenderRefused",
    "RestoreError",
    "RuleError",
    "StoreError",
    "UnstableListing",
    "UpstreamError",
    "ValidationError",
]


class DynamicASGsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(DynamicASGsError):
    """A configuration file or command-line flag is invalid."""


class InputError(DynamicASGsError):
    """An input file given to a tool cannot be used."""


class ValidationError(DynamicASGsError):
    """A security group (or something in it) fails validation."""


class RuleError(ValidationError):
    """One rule of a security group fails validation.

    The message names the group (name and guid), the rule's index within the
    group, the offending field and the reason.
    """

    def __init__(self, group: str, index: int, field: str, reason: str) -> None:
        self.group = group
        self.index = index
        self.field = field
        self.reason = reason
        super().__init__(f"security group {group}: rules[{index}]: {field}: {reason}")


class RenderRefused(DynamicASGsError):
    """The renderer refused a token of one container's chains; ``handle`` names the container."""

    def __init__(self, handle: str, cause: Exception) -> None:
        self.handle = handle
        self.cause = cause
        super().__init__(f"container {handle!r}: {cause}")


class StoreError(DynamicASGsError):
    """The container metadata store cannot be read."""


class IptablesError(DynamicASGsError):
    """An iptables tool failed."""


class LockTimeout(IptablesError):
    """The iptables lock was held by someone else for longer than the bound."""


class RestoreError(IptablesError):
    """iptables-restore refused a payload.

    ``line`` is the 1-based number of the failing line in the payload, when
    iptables-restore named one, and ``context`` the numbered lines around it.
    """

    def __init__(self, message: str, *, line: int | None = None, context: str = "") -> None:
        self.line = line
        self.context = context
        super().__init__(message)


class UpstreamError(DynamicASGsError):
    """A remote service (Cloud Controller, UAA, policy server) failed or answered badly."""


class RefusedRequest(UpstreamError):
    """The peer refused the request itself (an HTTP 4xx answer other than 429); ``status`` is the code."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class UnstableListing(UpstreamError):
    """Cloud Controller's ASGs changed while they were being listed."""


class DatabaseError(DynamicASGsError):
    """The policy database failed."""


class LeaseLost(DynamicASGsError):
    """This syncer instance lost (or never held) the active-syncer lease."""
