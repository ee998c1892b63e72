"""JSON over HTTPS with timeouts, bounded retries and schema validation.

The one boundary where ``requests`` errors become :class:`~dynamic_asgs.errors.UpstreamError`,
shared by the Cloud Controller/UAA client and the policy server's agent client:

* every request has a connect and a read timeout;
* connection errors (refused, reset, timed out), 429 and 5xx are retried with jittered
  exponential backoff (tenacity), bounded by a number of attempts and a total time;
  other statuses are answered at once (4xx are never retried);
* a body is parsed and validated against a JSON schema before anyone uses it, so callers
  only ever see documents of the expected shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_random_exponential

from dynamic_asgs.errors import UpstreamError

__all__ = ["JsonHttp", "Reply", "RetryPolicy", "Timeouts", "validator"]

#: Called after every attempt with (endpoint, status or "error", seconds).
Observer = Callable[[str, str, float], None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to establish a connection and to wait for each read."""

    connect: float = 5.0
    read: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on connection errors, 429 and 5xx: at most ``attempts`` tries within ``deadline`` s."""

    attempts: int = 4
    deadline: float = 30.0
    initial: float = 0.2
    maximum: float = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    """A validated answer: status, headers and the parsed body (``None`` when empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any


class _Transient(UpstreamError):
    """A failure worth retrying; surfaces to callers as a plain UpstreamError."""


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator for ``schema``."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _where(error: Any) -> str:
    parts = ["$"]
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts)


class JsonHttp:
    """A JSON API at ``base_url`` reached through ``session`` (see :mod:`dynamic_asgs.tls`)."""

    def __init__(
        self, base_url: str, session: requests.Session, *, service: str,
        timeouts: Timeouts = Timeouts(), retry: RetryPolicy = RetryPolicy(), observe: Observer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.service = service
        self.timeouts = timeouts
        self.retry = retry
        self._observe = observe

    def request(
        self, method: str, path: str, *, schema: Draft202012Validator | None, endpoint: str,
        accept: Collection[int] = (200,), read_timeout: float | None = None, **kwargs: Any,
    ) -> Reply:
        """Send ``method path`` (retrying transient failures); return a validated :class:`Reply`.

        ``accept`` lists the statuses the caller handles; only a 200's body is parsed and validated.
        Any other status, an unparsable body or a schema violation raises UpstreamError.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.deadline),
            wait=wait_random_exponential(multiplier=self.retry.initial, max=self.retry.maximum),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        timeout = (self.timeouts.connect, read_timeout or self.timeouts.read)
        try:
            reply: Reply = retrying(self._once, method, path, schema, endpoint, accept, timeout, kwargs)
        except _Transient as exc:
            raise UpstreamError(str(exc)) from exc.__cause__
        return reply

    def _once(
        self, method: str, path: str, schema: Draft202012Validator | None, endpoint: str,
        accept: Collection[int], timeout: tuple[float, float], kwargs: dict[str, Any],
    ) -> Reply:
        what = f"{self.service}: {method} {endpoint}"
        start = time.monotonic()
        try:
            response = self.session.request(method, self.base_url + path, timeout=timeout, **kwargs)
            content = response.content
        except requests.RequestException as exc:
            self._note(endpoint, "error", start)
            raise _Transient(f"{what}: {_describe(exc)}") from exc
        self._note(endpoint, str(response.status_code), start)
        status = response.status_code
        if status not in accept:
            detail = _snippet(content)
            message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
            if status == 429 or status >= 500:
                raise _Transient(message)
            raise UpstreamError(message)
        body = self._parse(what, content, schema) if status == 200 else None
        return Reply(status, response.headers, body)

    def _parse(self, what: str, content: bytes, schema: Draft202012Validator | None) -> Any:
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"{what}: response is not valid JSON: {exc}") from exc
        if schema is not None:
            error = best_match(schema.iter_errors(body))
            if error is not None:
                raise UpstreamError(f"{what}: unexpected response at {_where(error)}: {error.message[:200]}")
        return body

    def _note(self, endpoint: str, status: str, start: float) -> None:
        if self._observe is not None:
            self._observe(endpoint, status, time.monotonic() - start)


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failure: {exc}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "read timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else exc
        text = str(getattr(reason, "reason", reason))
        return f"connection failed: {text[text.find('[Errno'):] if '[Errno' in text else text}"
    return f"request failed: {exc}"


def _snippet(content: bytes) -> str:
    text = content[:300].decode("utf-8", "replace").strip()
    return " ".join(text.split())
