"""While 200 random rule changes are applied, no reader ever sees a container half-written.

A sampler runs ``iptables-save`` in a loop, without the lock, concurrently with the
dataplane's restores, and checks every container in every sample: its ASG chain
holds exactly the rules of one of the rulesets the test produced (found by the
hash comment), and its parent jumps to it with the same hash, then REJECTs.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ContainerChains, GroupIndex
from dynamic_asgs.iptables.render import content_hash
from support.cell import Cell, cell
from support.env import IPTABLES_BACKENDS, require_backend
from support.netns import ns_run
from support.plans import chains_in_save, container, dataplane, digest_of, groups_for, plan, random_rules

HANDLES = [f"c{i:02d}" for i in range(12)]
CHANGES = 200


@pytest.fixture(params=IPTABLES_BACKENDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cell]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c:
        for handle in HANDLES:  # parents only: the CNI's part, no traffic needed here
            parent = chains.netout_chain_name(handle)
            c.restore(4, [f":{parent} - [0:0]", f"-A {parent} -j REJECT --reject-with icmp-port-unreachable"])
            c.restore(6, [f":{parent} - [0:0]", f"-A {parent} -j REJECT --reject-with icmp6-port-unreachable"])
        yield c


def _check(text: str, version: int, expected: dict[str, int], problems: list[str]) -> None:
    table = chains_in_save(text)
    for handle in HANDLES:
        asg, parent = chains.asg_chain_name(handle), chains.netout_chain_name(handle)
        rules, jump = table.get(asg), table.get(parent, [])
        if rules is None:
            if version == 6 and len(jump) == 1 and "REJECT" in jump[0]:
                continue  # a ruleset without IPv6 rules: the parent alone rejects everything
            problems.append(f"IPv{version} {handle}: no ASG chain, parent {jump}")
            continue
        digest = digest_of(rules[0]) if rules else None
        if digest not in expected:
            problems.append(f"IPv{version} {handle}: first rule carries no known ruleset hash: {rules[:1]}")
        elif len(rules) != expected[digest]:
            problems.append(f"IPv{version} {handle}: {len(rules)} rules, ruleset {digest} has {expected[digest]}")
        if len(jump) != 2 or digest_of(jump[0]) != digest or not jump[0].endswith(f"-j {asg}") \
                or "REJECT" not in jump[1]:
            problems.append(f"IPv{version} {handle}: parent {jump} does not match ruleset {digest}")


def test_readers_never_see_a_partial_ruleset(table: Cell) -> None:
    rulesets = {f"s{i}": random_rules(i) for i in range(30)}
    index = GroupIndex(groups_for(rulesets))
    plans = {h: {s: plan(container(h, s, index=i + 1), index) for s in rulesets} for i, h in enumerate(HANDLES)}
    expected: dict[int, dict[str, int]] = {4: {}, 6: {}}
    for by_space in plans.values():
        for p in by_space.values():
            for fam in p.families:
                expected[fam.version][content_hash(fam)] = len(fam.asg.rules)
    rnd = random.Random(2024)
    desired: dict[str, ContainerChains] = {h: plans[h]["s0"] for h in HANDLES}
    dp, _ = dataplane(table.runners())
    assert dp.apply(desired).ok

    done = threading.Event()
    problems: list[str] = []
    samples = [0]
    seen: set[str] = set()

    def sample() -> None:
        while not done.is_set():
            for version in (4, 6):
                text = ns_run(table.ns, [table.tool(version, "save"), "-t", "filter"]).stdout
                _check(text, version, expected[version], problems)
                seen.update(d for line in text.splitlines() if (d := digest_of(line)))
            samples[0] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(CHANGES):
            handle = rnd.choice(HANDLES)
            desired[handle] = plans[handle][rnd.choice(list(rulesets))]
            report = dp.apply(desired)
            assert report.ok, report.failed
    finally:
        done.set()
        sampler.join()

    assert not problems, problems[:5]
    assert samples[0] >= 20 and len(seen) > 2 * len(HANDLES)  # the sampler really ran alongside the changes
    final = chains_in_save(ns_run(table.ns, [table.tool(4, "save")]).stdout)
    assert all(digest_of(final[chains.asg_chain_name(h)][0]) == content_hash(desired[h].v4) for h in HANDLES)

