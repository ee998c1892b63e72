"""JSON over HTTPS: retries on connection errors, 429 and 5xx only; timeouts; validation."""

from __future__ import annotations

import pytest

from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.http.client import JsonHttp, RetryPolicy, Timeouts, validator
from dynamic_asgs.tls import client_context, session_for
from support.daemons import InProcessStub, stub_http

LATEST = "/internal/v4/asg_latest_update"
SCHEMA = validator({"type": "object", "required": ["last_update"], "properties": {"last_update": {"type": "string"}}})


def get(stub: InProcessStub, **kwargs: object) -> object:
    return stub_http(stub, internal=True, **kwargs).request(  # type: ignore[arg-type]
        "GET", LATEST, schema=SCHEMA, endpoint=LATEST).body


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses_are_retried(stub: InProcessStub, status: int) -> None:
    stub.state.set_faults({"fail_next": 2, "error_status": status})
    assert get(stub) == {"last_update": stub.state.last_update}
    assert stub.state.stats[LATEST] == 3


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(stub: InProcessStub, status: int) -> None:
    stub.state.set_faults({"fail_next": 5, "error_status": status})
    with pytest.raises(UpstreamError, match=f"cloud controller: GET {LATEST}: HTTP {status}: .*injected failure"):
        get(stub)
    assert stub.state.stats[LATEST] == 1


def test_connection_resets_are_retried(stub: InProcessStub) -> None:
    stub.state.set_faults({"reset_next": 2})
    assert get(stub) == {"last_update": stub.state.last_update}


def test_retries_are_bounded(stub: InProcessStub) -> None:
    stub.state.set_faults({"fail_next": -1})
    with pytest.raises(UpstreamError, match="HTTP 500"):
        get(stub, retry=RetryPolicy(attempts=3, deadline=10, initial=0.01, maximum=0.02))
    assert stub.state.stats[LATEST] == 3


def test_a_slow_answer_times_out(stub: InProcessStub) -> None:
    stub.state.set_faults({"latency_ms": 1500})
    with pytest.raises(UpstreamError, match="read timed out"):
        get(stub, timeouts=Timeouts(connect=1, read=0.3), retry=RetryPolicy(attempts=2, initial=0.01))


def test_malformed_json_is_refused(stub: InProcessStub) -> None:
    stub.state.set_faults({"malformed_next": 1})
    with pytest.raises(UpstreamError, match="response is not valid JSON"):
        get(stub)


def test_an_answer_of_the_wrong_shape_is_refused(stub: InProcessStub) -> None:
    schema = validator({"type": "object", "required": ["nope"]})
    with pytest.raises(UpstreamError, match=r"unexpected response at \$: 'nope' is a required property"):
        stub_http(stub, internal=True).request("GET", LATEST, schema=schema, endpoint=LATEST)


def test_the_internal_port_needs_the_client_certificate(stub: InProcessStub) -> None:
    http = JsonHttp(stub.internal_url, session_for(client_context(ca_file=str(stub.pki.ca.cert_path))),
                    service="cloud controller", retry=RetryPolicy(attempts=1))
    with pytest.raises(UpstreamError, match=f"cloud controller: GET {LATEST}: "):
        http.request("GET", LATEST, schema=SCHEMA, endpoint=LATEST)
    assert stub.state.stats[LATEST] == 0
