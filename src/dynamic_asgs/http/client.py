"""JSON over HTTPS with timeouts, bounded retries, bounded answers and schema validation.

The one boundary where ``requests`` errors become :class:`~dynamic_asgs.errors.UpstreamError`,
shared by the Cloud Controller/UAA client and the policy server's agent client:

* every request has a connect and a read timeout (the read timeout is the longest wait
  for the next bytes);
* connection errors (refused, reset, timed out), 429 and 5xx are retried with jittered
  exponential backoff (tenacity), bounded by a number of attempts and a total time;
  other statuses are answered at once (4xx are never retried);
* **no redirect is followed**, off the configured origin or on it: Cloud Controller, UAA
  and the policy server never redirect these requests, so a 3xx the caller did not ask
  for is a misconfiguration or an attack (followed, a redirect to another host or to
  plain HTTP made an unauthenticated answer the ASG dataset, issue 13). It is refused
  naming where it pointed, so the operator can fix the configured URL;
* a body is streamed and refused past ``max_bytes`` (a larger declared Content-Length is
  refused before reading); of an error answer only a snippet is read;
* a :class:`~dynamic_asgs.http.deadline.Deadline` bounds a whole request, retries included:
  backoff never sleeps past it, connect and read timeouts are capped at the time left, and
  a session whose TLS context went through :func:`dynamic_asgs.http.deadline.enforce` lets no
  drip of bytes hold the handshake, headers or body past it;
* a body is parsed and validated against a JSON schema before anyone uses it, so callers
  only ever see documents of the expected shape.

A broken bound (redirect, size, deadline) raises :class:`~dynamic_asgs.errors.RefusedAnswer`
and is never retried: the peer answered, and answered wrongly. Its URL is shown without
credentials or (for a redirect's target) query.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from dynamic_asgs.config import json_path
from dynamic_asgs.errors import Refusal, RefusedAnswer, RefusedRequest, UpstreamError
from dynamic_asgs.http.deadline import Deadline, scope

__all__ = ["JsonHttp", "Reply", "RetryPolicy", "Timeouts", "public_url", "validator"]

#: Called after every attempt with (endpoint, status or "error", seconds).
Observer = Callable[[str, str, float], None]

_CHUNK = 64 * 1024
#: Of an answer that is not a 200, only this much is read (for the error message).
_SNIPPET_BYTES = 4096


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


@dataclass(frozen=True, slots=True)
class _Call:
    """One request's parameters, shared by its attempts."""

    method: str
    path: str
    schema: Draft202012Validator | None
    endpoint: str
    accept: Collection[int]
    read_timeout: float
    max_bytes: int | None
    deadline: Deadline | None
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Transient(UpstreamError):
    """A failure worth retrying; surfaces to callers as a plain UpstreamError."""


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator for ``schema``."""
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def public_url(url: str, *, base: str = "", keep_query: bool = True) -> str:
    """``url`` (resolved against ``base``) fit for logs: no credentials, no query unless ``keep_query``."""
    try:
        parts = urlsplit(urljoin(base, url) if base else url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an unparsable URL)"
    netloc = (f"[{host}]" if ":" in host else host) + ("" if port is None else f":{port}")
    query = f"?{parts.query}" if keep_query and parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"[:300]


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
        accept: Collection[int] = (200,), read_timeout: float | None = None, max_bytes: int | None = None,
        deadline: Deadline | None = None, **kwargs: Any,
    ) -> Reply:
        """Send ``method path`` (retrying transient failures); return a validated :class:`Reply`.

        ``accept`` lists the statuses the caller handles; only a 200's body is parsed and validated,
        and only up to ``max_bytes``. Any other status, an unparsable body or a schema violation
        raises UpstreamError; a redirect, a body past ``max_bytes`` or a passed ``deadline`` raises
        RefusedAnswer.
        """
        backoff = wait_random_exponential(multiplier=self.retry.initial, max=self.retry.maximum)

        def wait(state: RetryCallState) -> float:
            pause: float = backoff(state)
            return pause if deadline is None else max(0.0, min(pause, deadline.left()))

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.deadline),
            wait=wait, retry=retry_if_exception_type(_Transient), reraise=True,
        )
        call = _Call(method, path, schema, endpoint, accept, read_timeout or self.timeouts.read, max_bytes,
                     deadline, kwargs)
        try:
            reply: Reply = retrying(self._once, call)
        except _Transient as exc:
            raise UpstreamError(str(exc)) from exc.__cause__
        return reply

    def _once(self, call: _Call) -> Reply:
        what = f"{self.service}: {call.method} {call.endpoint}"
        url = self.base_url + call.path
        timeout = (self.timeouts.connect, call.read_timeout)
        if call.deadline is not None:
            left = call.deadline.left()
            if left <= 0:
                raise _late(what, url, call.deadline)
            timeout = (min(timeout[0], left), min(timeout[1], left))
        start = time.monotonic()
        status = 0
        try:
            with scope(call.deadline), self.session.request(
                call.method, url, timeout=timeout, allow_redirects=False, stream=True, **call.kwargs,
            ) as response:
                status = response.status_code
                self._note(call.endpoint, str(status), start)
                if status not in call.accept and 300 <= status < 400:
                    raise _redirect(what, url, status, response.headers.get("Location", ""))
                whole = status == 200 and status in call.accept
                limit = call.max_bytes if whole else _SNIPPET_BYTES
                content = _read(response, limit, whole=whole, what=what, url=url)
        except requests.RequestException as exc:
            if not status:
                self._note(call.endpoint, "error", start)
            if call.deadline is not None and call.deadline.left() <= 0:
                raise _late(what, url, call.deadline) from exc
            raise _Transient(f"{what}: {_describe(exc)}") from exc
        if status not in call.accept:
            detail = _snippet(content)
            message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
            if status == 429 or status >= 500:
                raise _Transient(message)
            if 400 <= status < 500:  # the request itself is refused: the agent sets such spaces aside
                raise RefusedRequest(message, status=status)
            raise UpstreamError(message)
        body = self._parse(what, content, call.schema) if status == 200 else None
        return Reply(status, response.headers, body)

    def _parse(self, what: str, content: bytes | bytearray, schema: Draft202012Validator | None) -> Any:
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"{what}: response is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise UpstreamError(f"{what}: response is nested too deeply to parse") from exc
        if schema is not None:
            error = best_match(schema.iter_errors(body))
            if error is not None:
                raise UpstreamError(f"{what}: unexpected response at {json_path(error)}: {error.message[:200]}")
        return body

    def _note(self, endpoint: str, status: str, start: float) -> None:
        if self._observe is not None:
            self._observe(endpoint, status, time.monotonic() - start)


def _read(response: requests.Response, limit: int | None, *, whole: bool, what: str, url: str) -> bytearray:
    """The body, streamed; past ``limit`` a ``whole`` body is refused, a snippet is cut."""
    declared = response.headers.get("Content-Length", "")
    if whole and limit is not None and declared.isdigit() and len(declared) < 20 and int(declared) > limit:
        raise _too_large(what, url, limit)
    body = bytearray()
    for chunk in response.iter_content(_CHUNK):
        body += chunk
        if limit is not None and len(body) > limit:
            if not whole:
                return body[:limit]
            raise _too_large(what, url, limit)
    return body


def _too_large(what: str, url: str, limit: int) -> RefusedAnswer:
    return RefusedAnswer(f"{what}: response larger than {limit} bytes; stopped reading",
                         reason=Refusal.RESPONSE_SIZE, url=public_url(url), limit=limit)


def _late(what: str, url: str, deadline: Deadline) -> RefusedAnswer:
    return RefusedAnswer(f"{what}: not answered completely within the {deadline.seconds:g} s deadline",
                         reason=Refusal.DEADLINE, url=public_url(url), limit=deadline.seconds)


def _redirect(what: str, url: str, status: int, location: str) -> RefusedAnswer:
    target = public_url(location, base=url, keep_query=False) if location else "no Location"
    return RefusedAnswer(f"{what}: HTTP {status} redirect to {target} refused: redirects are never followed",
                         reason=Refusal.REDIRECT, url=public_url(url))


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


def _snippet(content: bytes | bytearray) -> str:
    text = content[:300].decode("utf-8", "replace").strip()
    return " ".join(text.split())
