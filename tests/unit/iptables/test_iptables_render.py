"""The shared renderer: same hash and lines as the one-off functions, work shared, no token leaves its place."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.translate import Chain, ChainSettings, ConnLimit, FamilyChains, GroupIndex
from dynamic_asgs.cni.netout import transaction
from dynamic_asgs.errors import UnsafeToken, ValidationError
from dynamic_asgs.iptables.render import (
    MAX_LINE,
    Renderer,
    chain_lines,
    content_hash,
    declare,
    delete_chain,
    delete_saved_rule,
    family_lines,
    flush,
    insert_line,
    quote,
    remark,
    rule_line,
)
from support.plans import container, groups_for, plan

GROUPS = groups_for({"s": [{"protocol": "tcp", "destination": "10.0.0.0/24", "ports": "80,443", "log": True},
                           {"protocol": "icmp", "destination": "10.1.0.1", "type": 8, "code": -1},
                           {"protocol": "udp", "destination": "fd00::1", "ports": "53"}]})


def test_renderer_matches_the_one_off_functions() -> None:
    settings = ChainSettings(asg_logging=True, conn_limit=ConnLimit(10, 20, logging=True))
    p = plan(container("h-1", "s"), GROUPS, settings)
    renderer = Renderer()
    for family in p.families:
        digest = renderer.digest(family)
        assert digest == content_hash(family)
        assert list(renderer.rules(family, digest)) == [x for lines in chain_lines(family).values() for x in lines]
        assert next(iter(renderer.rules(family, digest))).startswith(f"-A asg-h1 -m comment --comment dasg:{digest} ")


def test_containers_of_one_space_share_the_rendering_of_their_rules() -> None:
    index = GroupIndex(groups_for({"s": [{"protocol": "tcp", "destination": f"10.0.{i}.0/24", "ports": "80"}
                                         for i in range(20)]}))
    a, b = plan(container("a", "s"), index), plan(container("b", "s"), index)
    renderer = Renderer()
    list(renderer.rules(a.v4, renderer.digest(a.v4)))
    bodies = len(renderer._bodies)
    list(renderer.rules(b.v4, renderer.digest(b.v4)))
    assert len(b.v4.asg.rules) > 20 and len(renderer._bodies) - bodies <= 3  # b's jump and REJECTs only
    assert renderer.digest(a.v4) != renderer.digest(b.v4)  # names are part of the content


# -- no token leaves its place (issue 13, class 1) ----------------------------------------------

SAFE_TOKEN = st.from_regex(r"[A-Za-z0-9_.:/,!+=@%-]{1,24}", fullmatch=True)
HOSTILE = st.sampled_from([
    "x\n-A FORWARD -j ACCEPT", "x\r\n-A FORWARD -j ACCEPT", "x\x00y", "x\ty", "x y", '"', 'x" -j ACCEPT "', "x\\",
    "\\\"", "#x", "x#", "'x'", "COMMIT", "*nat", ":INPUT", "-j", "", " ", "x  ", "é", "x\u2028y", "x\x85y",
    "x\x0by", "x\x1e", "x" * 300, "DENY_x ", "ok ", "a" * 256, "a" * 257,
])
# Mostly well-formed, so that both outcomes (refusal, exact lines) are exercised often.
TOKEN = st.one_of(SAFE_TOKEN, SAFE_TOKEN, SAFE_TOKEN, SAFE_TOKEN.map(lambda t: t + " "), HOSTILE,
                  st.text(max_size=30))
SAFE_CHAIN = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,27}", fullmatch=True)
CHAIN_NAME = st.one_of(SAFE_CHAIN, SAFE_CHAIN, SAFE_CHAIN, HOSTILE, st.text(max_size=40))
ARGV = st.lists(TOKEN, min_size=1, max_size=6).map(tuple)


def restore_tokens(line: str) -> list[str]:
    """Split a line as iptables-restore does: spaces, tabs and newlines separate outside double quotes,
    a backslash escapes inside them, and C strings end at NUL."""
    line = line.split("\0", 1)[0]
    tokens: list[str] = []
    current, quoted, escaped, started = "", False, False, False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted, started = not quoted, True
        elif not quoted and char in " \t\n":
            if started or current:
                tokens.append(current)
            current, started = "", False
        else:
            current += char
    if started or current:
        tokens.append(current)
    return tokens


def assert_one_clean_line(line: str) -> None:
    assert line.isascii() and line.isprintable(), repr(line)  # no line break, NUL, control or non-ASCII
    assert len(line) <= MAX_LINE
    assert not line.startswith(("*", "COMMIT", "#")), line


@st.composite
def families(draw: st.DrawFn) -> FamilyChains:
    """A well-formed family of chains in which, half of the time, one field (a chain name or any
    argv token) holds any string at all."""
    names = [draw(SAFE_CHAIN) for _ in range(3)]
    rules = [list(draw(st.lists(st.lists(SAFE_TOKEN, min_size=1, max_size=6), min_size=1, max_size=3)))
             for _ in range(3)]
    if draw(st.booleans()):
        anything = draw(st.one_of(HOSTILE, st.text(max_size=40), SAFE_TOKEN.map(lambda t: t + " ")))
        chain = draw(st.integers(0, 2))
        if draw(st.booleans()):
            names[chain] = anything
        else:
            argv = draw(st.sampled_from(rules[chain]))
            argv[draw(st.integers(0, len(argv) - 1))] = anything
    asg, helper, parent = (Chain(n, tuple(tuple(a) for a in r)) for n, r in zip(names, rules, strict=True))
    return FamilyChains(4, asg, parent, (helper,))


@given(family=families())
def test_any_string_in_any_field_is_refused_or_renders_exactly_the_expected_lines(family: FamilyChains) -> None:
    try:
        lines = family_lines(family)
    except UnsafeToken as exc:
        assert exc.reason and str(exc).startswith("refused token")
        event("refused")
        return
    event("rendered")
    names = dict.fromkeys(c.name for c in family.chains)
    expected = {name: [argv for c in family.chains if c.name == name for argv in c.rules] for name in names}
    payload = "\n".join(transaction(lines)) + "\n"
    parsed = payload.splitlines()
    assert len(parsed) == len(names) + sum(len(v) for v in expected.values()) + 2
    assert [p for p in parsed if p.startswith("*")] == ["*filter"] and parsed.count("COMMIT") == 1
    assert parsed[0] == "*filter" and parsed[-1] == "COMMIT"
    body = parsed[1:-1]
    assert body[: len(names)] == [f":{name} - [0:0]" for name in names]
    got: dict[str, list[tuple[str, ...]]] = {name: [] for name in names}
    for line in body[len(names):]:
        assert_one_clean_line(line)
        tokens = restore_tokens(line)
        assert tokens[0] == "-A" and tokens[1] in names
        if tokens[2:4] == ["-m", "comment"] and tokens[4] == "--comment" and tokens[5].startswith("dasg:"):
            tokens = tokens[:2] + tokens[6:]
        got[tokens[1]].append(tuple(tokens[2:]))
    assert got == {name: list(v) for name, v in expected.items()}


@given(chain=CHAIN_NAME, argv=ARGV, comment=st.one_of(st.none(), TOKEN))
def test_single_lines_are_refused_or_round_trip(chain: str, argv: Argv, comment: str | None) -> None:
    makers: dict[str, Callable[[], str]] = {
        "rule": lambda: rule_line(chain, argv, comment),
        "insert": lambda: insert_line(chain, argv),
        "declare": lambda: declare(chain),
        "flush": lambda: flush(chain),
        "delete": lambda: delete_chain(chain),
    }
    for kind, make in makers.items():
        try:
            line = make()
        except UnsafeToken:
            continue
        assert_one_clean_line(line)
        tokens = restore_tokens(line)
        if kind == "rule":
            head = ["-A", chain] + (["-m", "comment", "--comment", comment] if comment is not None else [])
            assert tokens == [*head, *argv]
        elif kind == "insert":
            assert tokens == ["-I", chain, "1", *argv]
        elif kind == "declare":
            assert tokens == [f":{chain}", "-", "[0:0]"]
        else:
            assert tokens == ["-F" if kind == "flush" else "-X", chain]


@given(text=st.text(max_size=60))
def test_comment_lines_and_saved_rules_never_break_their_line(text: str) -> None:
    makers: list[Callable[[], str]] = [lambda: remark(text),
                                       lambda: delete_saved_rule(f"-A FORWARD -s 10.0.0.1/32 {text}")]
    for make in makers:
        try:
            line = make()
        except UnsafeToken:
            continue
        assert "\n" not in line and "\r" not in line and line.isprintable()


@pytest.mark.parametrize(("token", "reason"), [
    ("x\n-A FORWARD -j ACCEPT", "contains a line break"), ("x\ry", "contains a line break"),
    ("x\x00y", "contains the control character '\\x00'"), ("x\ty", "contains whitespace"),
    ("x y", "contains whitespace"), ('x"y', "contains '\"'"), ("x\\y", "contains '\\\\'"), ("#x", "contains '#'"),
    ("é", "contains the non-ASCII character 'é'"), ("", "empty"), ("a" * 257, "longer than 256 characters"),
    ("x  ", "contains whitespace"),
])
def test_a_refused_token_names_itself_and_the_reason(token: str, reason: str) -> None:
    with pytest.raises(UnsafeToken) as info:
        quote(token)
    assert info.value.token == token and info.value.reason == reason
    assert isinstance(info.value, ValidationError)


@pytest.mark.parametrize(("name", "reason"), [
    ("-j", "starts with a letter or a digit"), (":INPUT", "starts with a letter or a digit"),
    ("*nat", "starts with a letter or a digit"), ("!x", "starts with a letter or a digit"),
    ("a" * 29, "1 to 28 characters"), ("", "1 to 28 characters"), ("a b", "only letters, digits"),
    ("a\nb", "only letters, digits"),
])
def test_chain_names_that_could_be_read_as_something_else_are_refused(name: str, reason: str) -> None:
    with pytest.raises(UnsafeToken, match=reason):
        declare(name)


def test_silks_log_prefix_keeps_its_trailing_space_quoted_and_long_lines_are_refused() -> None:
    assert quote("DENY_abc ") == '"DENY_abc "' and quote("10.0.0.1-10.0.0.9") == "10.0.0.1-10.0.0.9"
    with pytest.raises(UnsafeToken, match="a rule longer than"):
        Renderer().body(tuple(["x" * 200] * 50))  # iptables-restore would cut it at 10 KiB into two lines
    with pytest.raises(UnsafeToken, match="16 hex digits"):
        list(Renderer().rules(plan(container("h-1", "s"), GROUPS).v4, "0" * 15 + "\n"))


def test_each_distinct_token_is_checked_once_per_renderer() -> None:
    index = GroupIndex(groups_for({"s": [{"protocol": "tcp", "destination": "10.0.0.0/24", "ports": "80"}]}))
    renderer = Renderer()
    for handle in ("a", "b", "c"):
        family = plan(container(handle, "s"), index).v4
        list(renderer.rules(family, renderer.digest(family)))
    quoted = dict(renderer._quoted)
    family = plan(container("d", "s"), index).v4
    list(renderer.rules(family, renderer.digest(family)))
    assert set(renderer._quoted) - set(quoted) <= {"asg-d"}  # only the new container's own names are new
