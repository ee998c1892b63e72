"""A cell's two filter tables as fakes (dynamic_asgs.iptables.fake), with the CNI's part."""

from __future__ import annotations

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ContainerChains, FamilyChains
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.iptables.render import chain_lines


class FakeCell:
    """Fake iptables and ip6tables; :meth:`create` / :meth:`delete` do what the CNI does."""

    def __init__(self) -> None:
        self.runners = {4: FakeRunner(4, record=True), 6: FakeRunner(6, record=True)}
        self.created: set[str] = set()

    def create(self, handle: str, ip: str = "10.255.0.2") -> None:
        parent = chains.netout_chain_name(handle)
        for version, runner in self.runners.items():
            reject = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
            runner.table.create_chain(parent, [f"-j REJECT --reject-with {reject}"])
            runner.table.load([f"-A FORWARD -s {ip if version == 4 else 'fd00::2'} -j {parent}"])
        self.created.add(parent)

    def delete(self, handle: str) -> None:
        for runner in self.runners.values():
            runner.table.delete_chain(chains.netout_chain_name(handle))

    def rules(self, version: int, chain: str) -> list[str]:
        table = self.runners[version].table
        return table.rules(chain) if table.exists(chain) else []

    def restores(self) -> int:
        return sum(r.restores for r in self.runners.values())

    def saves(self) -> int:
        return sum(r.saves for r in self.runners.values())

    def holds(self, plan: ContainerChains) -> bool:
        """Whether the tables hold exactly ``plan``'s chains (as the fake stores restore lines)."""
        return all(self.holds_family(f) for f in plan.families)

    def holds_family(self, family: FamilyChains) -> bool:
        table = self.runners[family.version].table
        expected = chain_lines(family)
        return all(table.exists(name) and [_plain(r) for r in table.rules(name)] == [_plain(r) for r in lines]
                   for name, lines in expected.items())

    def owned(self, version: int) -> list[str]:
        return [c for c in self.runners[version].table.user_chains() if chains.is_owned_chain(c)]

    def dangling_jumps(self) -> list[str]:
        """Rules whose jump target is neither a built-in target nor an existing chain."""
        out = []
        for runner in self.runners.values():
            table = runner.table
            for name in [*table.user_chains(), "FORWARD"]:
                for rule in table.rules(name):
                    words = rule.split()
                    for i, word in enumerate(words[:-1]):
                        if word in ("-j", "-g") and not words[i + 1].isupper() and not table.exists(words[i + 1]):
                            out.append(rule)
        return out


def _plain(rule: str) -> str:
    """A rule as the fake stores it and as rendered, compared without quoting differences."""
    return rule.replace('"', "").replace("--jump", "-j").replace("--goto", "-g")
