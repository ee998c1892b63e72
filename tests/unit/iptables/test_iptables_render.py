"""The shared renderer: same hash and lines as the one-off functions, work shared between containers."""

from __future__ import annotations

from dynamic_asgs.asg.translate import ChainSettings, ConnLimit, GroupIndex
from dynamic_asgs.iptables.render import Renderer, chain_lines, content_hash
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
