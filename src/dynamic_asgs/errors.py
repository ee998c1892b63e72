"""The project's exception tree.

Every error the project raises on purpose derives from :class:`DynamicASGsError`.
Subprocess, HTTP and database errors are turned into these at one boundary each
(``raise ... from exc``), so callers never match on strings::

    DynamicASGsError
    ├── ConfigError          bad configuration file or flags (daemons exit 2)
    ├── InputError           bad input file given to a tool (exit 2)
    ├── ValidationError      a security group, a store entry or another outside value fails validation
    │   ├── RuleError        one rule: names the group, the rule index, the field, the reason
    │   ├── UnsafeToken      the renderer refused a token, chain name or line that could leave its place
    │   ├── ChainNameCollision  two containers' chain names are the same (names both handles)
    │   └── DocumentError    a document from another process (``/asg-status``) does not match its schema
    ├── RenderRefused        the renderer refused a token of one container's chains (names the container)
    ├── StoreError           the container metadata store is missing, torn or corrupt
    ├── UnknownContainer     a forced sync names a container the metadata store does not hold
    ├── EnforcementFailed    a forced sync or cleanup did not complete (names the container and why)
    ├── UnsafeFile           a file opened by path is a symbolic link (or not a regular file): refused
    ├── IptablesError        iptables-save / iptables-restore failed
    │   ├── LockTimeout      the iptables lock was not acquired within the bound
    │   └── RestoreError     a restore payload was refused (carries the failing line)
    ├── UpstreamError        Cloud Controller, UAA, the policy server or an agent answered badly
    │   ├── RefusedRequest   the peer refused the request itself (HTTP 4xx): repeating it will not help
    │   ├── RefusedAnswer    we refused the peer's answer: it broke a bound (see :class:`Refusal`)
    │   └── UnstableListing  the ASG listing changed while it was being paged
    ├── DatabaseError        the policy DB failed
    └── LeaseLost            this syncer no longer holds the active lease
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ChainNameCollision",
    "ConfigError",
    "DatabaseError",
    "DocumentError",
    "DynamicASGsError",
    "EnforcementFailed",
    "InputError",
    "IptablesError",
    "LeaseLost",
    "LockTimeout",
    "Refusal",
    "RefusedAnswer",
    "RefusedRequest",
    "RenderRefused",
    "RestoreError",
    "RuleError",
    "StoreError",
    "UnknownContainer",
    "UnsafeFile",
    "UnsafeToken",
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
    """A security group (or something in it), a store entry or another value from outside fails validation."""


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


class UnsafeToken(ValidationError):
    """The renderer refused ``token`` (an argument, chain name or whole line) for ``reason``.

    Restore text is line- and space-separated: a token that could end its line, split
    into two arguments or escape its quotes never reaches ``iptables-restore``.
    """

    def __init__(self, token: str, reason: str) -> None:
        self.token = token
        self.reason = reason
        shown = repr(token[:80]) + ("..." if len(token) > 80 else "")
        super().__init__(f"refused token {shown}: {reason}")


class ChainNameCollision(ValidationError):
    """Container ``handle``'s chain names are those of container ``other`` (names keep a handle's first characters)."""

    def __init__(self, handle: str, other: str) -> None:
        self.handle = handle
        self.other = other
        super().__init__(f"container {handle}: its chain names are those of container {other} "
                         "(chain names keep only a handle's first characters): refused, the other is left as it is")


class DocumentError(ValidationError):
    """A document from another process (an agent's ``/asg-status``) does not match its schema.

    The message starts with the path of the offending value (``containers.h1.dataset_version: ...``).
    """


class RenderRefused(DynamicASGsError):
    """The renderer refused a token of one container's chains (``handle``), or of a shared chain (``chain``)."""

    def __init__(self, handle: str, cause: Exception, *, chain: str | None = None) -> None:
        self.handle = handle
        self.chain = chain
        self.cause = cause
        super().__init__(f"shared chain {chain}: {cause}" if chain else f"container {handle!r}: {cause}")


class StoreError(DynamicASGsError):
    """The container metadata store cannot be read."""


class UnknownContainer(DynamicASGsError):
    """A forced sync names container ``handle``, which the container metadata store does not hold."""

    def __init__(self, handle: str) -> None:
        self.handle = handle
        super().__init__(f"container {handle} is not in the container metadata store")


class EnforcementFailed(DynamicASGsError):
    """A forced sync or cleanup of container ``handle`` did not complete; the message says why.

    The container keeps its previous rules (or chains); the next cycle retries.
    """

    def __init__(self, handle: str, reason: str) -> None:
        self.handle = handle
        self.reason = reason
        super().__init__(reason)


class UnsafeFile(DynamicASGsError):
    """A file opened by path is a symbolic link (or not a regular file): refused, its target left untouched."""


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
    """A remote service (Cloud Controller, UAA, policy server, an agent's status endpoint) failed or answered badly."""


class RefusedRequest(UpstreamError):
    """The peer refused the request itself (an HTTP 4xx answer other than 429); ``status`` is the code."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class Refusal(StrEnum):
    """The bound a peer's answer broke (the ``reason`` label of the syncer's refusal metric)."""

    REDIRECT = "redirect"  # a 3xx: no redirect is followed
    RESPONSE_SIZE = "response_size"  # more bytes than a response may have
    PAGES = "pages"  # a listing announcing more pages than allowed
    PAGING = "paging"  # pages that contradict each other (next chain, totals, repeated groups)
    DEADLINE = "deadline"  # not answered completely in time


class RefusedAnswer(UpstreamError):
    """We refused what a peer answered; ``reason`` names the bound, ``url`` what was asked (no secrets).

    ``limit`` is the bound's value where it has one (bytes, pages, seconds).
    """

    def __init__(self, message: str, *, reason: Refusal, url: str, limit: float | None = None) -> None:
        self.reason = reason
        self.url = url
        self.limit = limit
        super().__init__(message)


class UnstableListing(UpstreamError):
    """Cloud Controller's ASGs changed while they were being listed."""


class DatabaseError(DynamicASGsError):
    """The policy database failed."""


class LeaseLost(DynamicASGsError):
    """This syncer instance lost (or never held) the active-syncer lease."""
