"""Security groups and rules: parsing, validation, translation to a container's chains."""

from dynamic_asgs.asg.model import Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.asg.parse import (
    parse_cc_group,
    parse_container,
    parse_groups_document,
    parse_internal_group,
    parse_rule,
)
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex, plan_container

__all__ = [
    "ChainSettings",
    "Container",
    "ContainerChains",
    "GroupIndex",
    "IPRange",
    "PortRange",
    "Protocol",
    "Rule",
    "SecurityGroup",
    "Workload",
    "parse_cc_group",
    "parse_container",
    "parse_groups_document",
    "parse_internal_group",
    "parse_rule",
    "plan_container",
]
