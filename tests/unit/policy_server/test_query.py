"""Parameter validation of the internal API: clear 400s instead of the Go server's 500s."""

from __future__ import annotations

import json

import pytest

from dynamic_asgs.policy_server.query import Query, QueryError, parse_get, parse_post


def test_get_parameters() -> None:
    assert parse_get([]) == Query(spaces=())
    assert parse_get([("space_guids", "b,a,,b"), ("space_guids", "c"), ("from", "10"), ("limit", "5"),
                      ("wait", "30"), ("unknown", "x")]) == Query(("a", "b", "c"), 10, 5, 30.0)
    assert parse_get([("from", "3"), ("from", "999")]).start == 3  # the first value wins, as in Go


@pytest.mark.parametrize(("params", "message"), [
    ([("from", "-1")], "from: '-1' is not a non-negative integer"),
    ([("limit", "ten")], "limit: 'ten' is not a non-negative integer"),
    ([("limit", "99999999")], "limit: 99999999 is above the maximum"),
    ([("wait", "61")], "wait: must be between 0 and 60 seconds"),
    ([("wait", "soon")], "wait: 'soon' is not a number of seconds"),
    ([("space_guids", "a b")], "space_guids: 'a b' is not a valid guid"),
    ([("space_guids", "x" * 300)], "is not a valid guid"),
    ([("from", "1" * 5000)], "from: a 5000-digit number is above the maximum"),
    ([("limit", "0" * 5000 + "9" * 20)], "limit: a 5020-digit number is above the maximum"),
    ([("wait", "9" * 5000)], "wait: must be between 0 and 60 seconds"),
])
def test_bad_get_parameters_are_named(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_get(params)


def test_post_body_takes_long_space_lists() -> None:
    spaces = [f"space-{i:05d}" for i in range(20000)]
    query = parse_post(json.dumps({"space_guids": spaces, "limit": 100}).encode(), [("wait", "5")])
    assert query == Query(tuple(spaces), 0, 100, 5.0)
    assert parse_post(b"", [("space_guids", "a")]) == Query(("a",))


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "body: not valid JSON"),
    (b"[]", "body: must be a JSON object"),
    (b'{"space_guids": "a,b"}', "space_guids: must be a JSON array of strings"),
    (b'{"space_guids": [1]}', "space_guids: must be strings"),
    (b'{"spaces": []}', "body: unknown key"),
    (b'{"from": true}', "from: must be a non-negative integer"),
    (b'{"from": ' + b"1" * 5000 + b"}", "from: a 5000-digit number is outside 0..9223372036854775807"),
    (b'{"limit": -' + b"1" * 5000 + b"}", "limit: a 5000-digit number is outside 0..1000000"),
    (b'{"wait": ' + b"9" * 5000 + b"}", "wait: a 5000-digit number is not between 0 and 60"),
    (b'{"space_guids": [' + b"1" * 5000 + b"]}", "space_guids: must be strings, not number"),
    (b"[" * 100_000, "body: JSON nested too deeply"),
])
def test_bad_post_bodies_are_named(body: bytes, message: str) -> None:
    """Including numbers too long to convert and nesting beyond the decoder: 400, never 500."""
    with pytest.raises(QueryError, match=message):
        parse_post(body, [])
