"""The Cloud Controller client against the stand-in: tokens, last_update, stable listings."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.cc.client import normalize_timestamp
from dynamic_asgs.errors import UnstableListing, UpstreamError
from support.daemons import InProcessStub, cc_client

LATEST = "/internal/v4/asg_latest_update"
GROUPS = "/v3/security_groups"


def test_token_is_fetched_once_and_reused(stub: InProcessStub) -> None:
    cc = cc_client(stub)
    cc.last_update()
    cc.security_groups()
    cc.last_update()
    assert stub.state.stats["/oauth/token"] == 1


def test_a_refused_token_is_replaced_once(stub: InProcessStub) -> None:
    cc = cc_client(stub)
    cc.security_groups()
    stub.state.revoke_tokens()
    assert len(cc.security_groups().resources) == 7
    assert stub.state.stats["/oauth/token"] == 2


def test_wrong_client_credentials_are_an_upstream_error(stub: InProcessStub) -> None:
    with pytest.raises(UpstreamError, match="uaa: POST /oauth/token: HTTP 401"):
        cc_client(stub, secret="wrong").last_update()


def test_last_update_is_normalised(stub: InProcessStub) -> None:
    value = cc_client(stub).last_update()
    assert value == normalize_timestamp(stub.state.last_update)
    assert value is not None and value.endswith("Z") and len(value) == len("2024-01-01T00:00:00.000000000Z")


def test_listing_pages_and_checks_last_update_after_every_page(stub: InProcessStub) -> None:
    listing = cc_client(stub, page_size=3).security_groups()
    assert [r["name"] for r in listing.resources] == [f"asg-{i:03d}" for i in range(7)]
    assert (listing.pages, listing.attempts) == (3, 1)
    assert stub.state.stats[GROUPS] == 3 and stub.state.stats[LATEST] == 4


def test_a_change_during_paging_restarts_the_listing(stub: InProcessStub) -> None:
    stub.state.set_faults({"change_during_paging": 1})
    listing = cc_client(stub, page_size=3).security_groups()
    assert len(listing.resources) == 7 and listing.attempts == 2
    assert listing.last_update == normalize_timestamp(stub.state.last_update)


def test_a_listing_that_never_settles_is_unstable(stub: InProcessStub) -> None:
    stub.state.set_faults({"change_during_paging": -1})
    with pytest.raises(UnstableListing, match="changed while being listed"):
        cc_client(stub).security_groups()


def test_a_malformed_page_is_an_upstream_error(stub: InProcessStub) -> None:
    stub.state.set_faults({"malformed_next": 1, "paths": [GROUPS]})
    with pytest.raises(UpstreamError, match="not valid JSON"):
        cc_client(stub).security_groups()


@given(st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9998, 12, 30),
                    timezones=st.timezones()), st.integers(0, 999_999_999), st.integers(0, 9))
def test_normalize_timestamp_keeps_the_instant_and_nanoseconds(moment: dt.datetime, nanos: int, digits: int) -> None:
    offset = moment.utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds() // 60)
    if offset.total_seconds() % 60:
        return  # RFC 3339 offsets have whole minutes
    sign = "+" if minutes >= 0 else "-"
    zone = "Z" if minutes == 0 else f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    fraction = f"{nanos:09d}"[:digits]
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + zone
    utc = (moment.replace(tzinfo=None) - offset).strftime("%Y-%m-%dT%H:%M:%S")
    assert normalize_timestamp(text) == f"{utc}.{fraction.ljust(9, '0')}Z"
