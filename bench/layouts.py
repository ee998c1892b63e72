"""Chain layouts side by side (issue 16): ``per-container`` (silk's) against ``shared``, legacy and nft.

Run through ``bench/dataplane.py --layouts`` (as root). Two cell models, both with 1,500
app containers that each sit in one of 60 spaces and get 3 global groups of 40 rules:

* **realistic** — 60 space groups of 60 rules: 180 rules per container, 270,000 logical rules;
* **1M** — 60 space groups of 547 rules: 667 per container, about 1,000,000 logical rules.

For every (backend, model, layout), in fresh network namespaces and a fresh agent process:
the kernel rules a cell holds (``-A`` lines of ``iptables-save``), a full sync (a new agent
on a cell holding only the CNI's parents), a no-change cycle, a **1% change** (every 100th
container moves to the next space), a **group edit** (one space group's rules change: its
25 containers move to new content), a restart (a new process adopting a correct table: its
writes are counted) and the agent's peak RSS. Full syncs are the median of 3 (1 for nft
per-container: minutes each).

The rules a packet traverses are counted on fake tables (:mod:`dynamic_asgs.iptables.packets`)
holding the same plans for a sample of containers: random packets that hit a space rule, a
global rule or nothing, walked through both layouts, which must agree on every verdict.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataplane import agent_runner, drop_cell, handle, ip, make_cell, peak_rss_mb, timed_apply, tool

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.asg.translate import ChainLayout, ChainSettings, ContainerChains, GroupIndex, plan_container
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.iptables.packets import Packet, Proto, State, walk
from dynamic_asgs.lager import Logger

__all__ = ["MODELS", "Model", "compare", "layout_worker", "plot", "table", "targets"]


@dataclass(frozen=True)
class Model:
    """A cell: containers spread over spaces, each granted the global groups and its space's group."""

    name: str
    containers: int = 1500
    globals: int = 3
    global_rules: int = 40
    spaces: int = 60
    space_rules: int = 60

    @property
    def logical_rules(self) -> int:
        """Accept rules summed over containers: what the per-container layout installs."""
        return self.containers * (self.globals * self.global_rules + self.space_rules)


MODELS = {"realistic": Model("realistic"), "1M": Model("1M", space_rules=547)}


def _range(net: str) -> IPRange:
    n = ipaddress.ip_network(net)
    return IPRange(n.network_address, n.broadcast_address)


def groups(model: Model, *, edited: bool = False) -> list[SecurityGroup]:
    """The cell's groups; ``edited`` changes one rule of space 0's group (the group edit)."""
    out = [SecurityGroup(f"sg-global-{g}", f"global-{g}", tuple(
        Rule(Protocol.UDP if r % 10 == 0 else Protocol.TCP, (_range(f"172.{16 + g}.{r}.0/24"),),
             (PortRange(443, 443),)) for r in range(model.global_rules)), running_default=True)
        for g in range(model.globals)]
    for s in range(model.spaces):
        ports = [1000 + r + (1 if edited and s == 0 and r == 0 else 0) for r in range(model.space_rules)]
        rules = tuple(Rule(Protocol.TCP, (_range(f"10.{s}.{r // 250}.{r % 250}/32"),), (PortRange(p, p),))
                      for r, p in enumerate(ports))
        out.append(SecurityGroup(f"sg-{s}", f"space-{s}", rules, running_spaces=(f"space-{s}",)))
    return out


def desired(model: Model, index: GroupIndex, layout: ChainLayout, *, moved: bool = False,
            only: range | None = None) -> dict[str, ContainerChains]:
    """Every container's plan; with ``moved``, every 100th sits in the next space (the 1% change)."""
    settings = ChainSettings(layout=layout)
    out = {}
    for i in only if only is not None else range(model.containers):
        space = (i + (1 if moved and i % 100 == 0 else 0)) % model.spaces
        plan = plan_container(Container(handle(i), ip(i), "app-guid", f"space-{space}", Workload.APP), index,
                              settings)
        assert plan is not None
        out[plan.container.handle] = plan
    return out


# -- the agent, in its own process -------------------------------------------------------------


def kernel_rules(ns: str, backend: str) -> int:
    """``-A`` lines of the namespace's filter table (what netmon counts, less chain lines)."""
    save = subprocess.run(["ip", "netns", "exec", ns, tool(backend, "save"), "-t", "filter"], check=True,
                          capture_output=True, text=True).stdout
    return sum(line.startswith("-A ") for line in save.splitlines())


def layout_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Inside a fresh process: ``cycles`` (full sync, no change, 1% change, group edit) or ``restart``."""
    model, layout, ns, backend = MODELS[spec["model"]], ChainLayout(spec["layout"]), spec["ns"], spec["backend"]
    index, edited = GroupIndex(groups(model)), GroupIndex(groups(model, edited=True))
    base = desired(model, index, layout)
    dp = Dataplane(runners={4: agent_runner(ns, backend)}, logger=Logger("bench", stream=io.StringIO()))

    cycle = functools.partial(timed_apply, dp)

    out: dict[str, Any] = {}
    if spec["mode"] == "restart":
        out["restart"], out["restart_writes"] = cycle(base)
        out["rss_mb"] = peak_rss_mb()
        return out
    out["full"], _ = cycle(base)
    if spec["mode"] == "cycles":
        out["kernel_rules"] = kernel_rules(ns, backend)
        out["no_change"] = statistics.median(cycle(desired(model, index, layout))[0] for _ in range(3))
        moved = desired(model, index, layout, moved=True)
        out["change"] = statistics.median(cycle(moved if k % 2 == 0 else base)[0] for k in range(spec["samples"]))
        after_edit = desired(model, edited, layout)
        out["edit"] = statistics.median(cycle(after_edit if k % 2 == 0 else base)[0] for k in range(spec["samples"]))
    out["rss_mb"] = peak_rss_mb()
    return out


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("dataplane.py")), "--layout-worker",
                           json.dumps(spec)], check=True, text=True, capture_output=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(backend: str, model: Model, layout: ChainLayout) -> dict[str, Any]:
    """One (backend, model, layout): full syncs on fresh cells, then cycles and a restart on the last."""
    reps = 1 if backend == "nft" and layout is ChainLayout.PER_CONTAINER else 3
    r: dict[str, Any] = {"backend": backend, "model": model.name, "layout": str(layout),
                         "containers": model.containers, "logical_rules": model.logical_rules}
    fulls, rss = [], []
    ns = ""
    try:
        for k in range(reps):
            ns = make_cell(backend, model.containers, 0)
            last = k == reps - 1
            got = run_worker({"mode": "cycles" if last else "full", "model": model.name, "layout": str(layout),
                              "ns": ns, "backend": backend, "samples": 6})
            fulls.append(got.pop("full"))
            rss.append(got.pop("rss_mb"))
            r.update(got)
            if not last:
                drop_cell(ns)
        r["full"] = statistics.median(fulls)
        r.update(run_worker({"mode": "restart", "model": model.name, "layout": str(layout), "ns": ns,
                             "backend": backend}))
        r["rss_mb"] = max(*rss, r["rss_mb"])
    finally:
        drop_cell(ns)
    return r


# -- rules a packet traverses, on fake tables --------------------------------------------------


def traversal(model: Model, *, sample: int = 30, packets: int = 2000, seed: int = 16) -> dict[str, Any]:
    """Rules traversed per packet in each layout, for random packets of a sample of containers."""
    rnd = random.Random(seed)
    group_list = groups(model)
    index = GroupIndex(group_list)
    picked = range(0, model.containers, max(1, model.containers // sample))
    tables = {}
    for layout in ChainLayout:
        runner = FakeRunner(4)
        for i in picked:
            runner.table.create_chain(chains.netout_chain_name(handle(i)),
                                      ["-j REJECT --reject-with icmp-port-unreachable"])
        dp = Dataplane(runners={4: runner}, logger=Logger("bench", stream=io.StringIO()))
        assert dp.apply(desired(model, index, layout, only=picked)).ok
        tables[layout] = runner.table
    counts: dict[ChainLayout, list[int]] = {layout: [] for layout in ChainLayout}
    extra = []
    for _ in range(packets):
        i = rnd.choice(picked)
        packet = _packet(rnd, group_list, model, i)
        walks = {layout: walk(tables[layout], chains.netout_chain_name(handle(i)), packet) for layout in ChainLayout}
        shared, alone = walks[ChainLayout.SHARED], walks[ChainLayout.PER_CONTAINER]
        assert shared.verdict is alone.verdict, (packet, shared, alone)
        for layout, w in walks.items():
            counts[layout].append(w.traversed)
        extra.append(shared.traversed - alone.traversed)
    out: dict[str, Any] = {"model": model.name, "packets": packets, "containers": len(picked)}
    for layout, values in counts.items():
        out[str(layout)] = {"mean": statistics.fmean(values), "median": statistics.median(values),
                            "max": max(values)}
    out["extra_max"] = max(extra)
    out["chains_per_container"] = model.globals + 1
    return out


def _packet(rnd: random.Random, group_list: list[SecurityGroup], model: Model, i: int) -> Packet:
    """A new connection of container ``i`` to a rule of its space's group, of a global one, or anywhere."""
    kind = rnd.choice(("space", "global", "miss"))
    if kind == "miss":
        return Packet(dst=ipaddress.IPv4Address(rnd.getrandbits(32)), protocol=Proto.TCP,
                      port=rnd.randrange(1, 65536), state=State.NEW)
    group = group_list[model.globals + i % model.spaces] if kind == "space" else group_list[
        rnd.randrange(model.globals)]
    rule = rnd.choice(group.rules)
    return Packet(dst=rule.destinations[0].start, protocol=Proto(rule.protocol.value), port=rule.ports[0].start,
                  state=State.NEW)


# -- output ----------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(results: list[dict[str, Any]], walks: list[dict[str, Any]]) -> str:
    head = (f"{'backend':7} {'model':9} {'layout':13} {'kernel rules':>12} {'full sync':>10} {'1% change':>10} "
            f"{'group edit':>10} {'no change':>9} {'restart':>9} {'writes':>6} {'peak RSS':>9}")
    out = [head, "-" * len(head)]
    for r in results:
        out.append(f"{r['backend']:7} {r['model']:9} {r['layout']:13} {r['kernel_rules']:>12,} {_s(r['full']):>10} "
                   f"{_s(r['change']):>10} {_s(r['edit']):>10} {_s(r['no_change']):>9} {_s(r['restart']):>9} "
                   f"{r['restart_writes']:>6} {r['rss_mb']:>6.0f} MB")
    out += ["", "rules traversed per packet (fake tables, same plans; verdicts agree on every packet):"]
    for w in walks:
        per, sh = w["per-container"], w["shared"]
        out.append(f"  {w['model']:9} {w['packets']} packets, {w['containers']} containers: per-container mean "
                   f"{per['mean']:.1f} / median {per['median']:.0f} / max {per['max']}; shared mean "
                   f"{sh['mean']:.1f} / median {sh['median']:.0f} / max {sh['max']}; shared - per-container "
                   f"<= {w['extra_max']} (one jump per group chain entered, {w['chains_per_container']} chains)")
    return "\n".join(out)


def _pair(results: list[dict[str, Any]], backend: str, model: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    found = {r["layout"]: r for r in results if r["backend"] == backend and r["model"] == model}
    if set(found) != {str(layout) for layout in ChainLayout}:
        return None
    return found[str(ChainLayout.SHARED)], found[str(ChainLayout.PER_CONTAINER)]


def targets(results: list[dict[str, Any]], walks: list[dict[str, Any]]) -> str:
    out = []

    def check(ok: bool, text: str) -> None:
        out.append(f"{'PASS' if ok else 'MISS'}  {text}")

    for backend in ("legacy", "nft"):
        for model in MODELS:
            pair = _pair(results, backend, model)
            if pair is None:
                continue
            shared, alone = pair
            tag = f"{backend} {model}"
            share = shared["kernel_rules"] / alone["kernel_rules"]
            if model == "realistic":
                check(share <= 0.15, f"{tag}: kernel rules shared/per-container {share:.1%} (target <= 15%)")
            ratio = shared["change"] / alone["change"]
            if backend == "legacy":
                check(ratio <= 0.25, f"{tag}: 1% change shared/per-container {ratio:.2f}x (target <= 0.25x)")
            else:
                out.append(f"info  {tag}: 1% change shared/per-container {ratio:.2f}x")
            if model == "1M":
                limit = 15.0 if backend == "nft" else 1.0
                check(shared["full"] <= limit, f"{tag}: shared full sync {_s(shared['full'])} (target <= {limit:g} s;"
                                               f" per-container {_s(alone['full'])})")
            for r in pair:
                check(r["restart_writes"] == 0, f"{tag} {r['layout']}: restart wrote {r['restart_writes']} time(s)")
    for w in walks:
        grew = w["shared"]["max"] - w["per-container"]["max"]
        check(w["extra_max"] <= w["chains_per_container"],
              f"{w['model']}: a packet traverses at most {w['extra_max']} more rules shared (the jumps; "
              f"{w['chains_per_container']} chains), worst case {grew:+d}")
    return "\n".join(out)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Bars: full sync, 1% change and kernel rules per layout, for each backend and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(b, m) for b in ("legacy", "nft") for m in MODELS if _pair(results, b, m) is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (title, key, unit) in zip(axes, (("full sync", "full", "seconds"), ("1% change", "change", "seconds"),
                                             ("kernel rules on the cell", "kernel_rules", "rules")), strict=True):
        width = 0.38
        for k, (layout, color) in enumerate(((ChainLayout.PER_CONTAINER, "tab:red"), (ChainLayout.SHARED,
                                                                                      "tab:blue"))):
            values = []
            for backend, model in cells:
                pair = _pair(results, backend, model)
                assert pair is not None
                values.append(pair[0 if layout is ChainLayout.SHARED else 1][key])
            xs = [i + (k - 0.5) * width for i in range(len(cells))]
            bars = ax.bar(xs, values, width, color=color, label=str(layout))
            ax.bar_label(bars, labels=[_s(v) if unit == "seconds" else f"{v / 1000:.0f}k" for v in values],
                         fontsize=7)
        ax.set_xticks(range(len(cells)), [f"{b}\n{m}" for b, m in cells])
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("1,500 containers, 3 global + 60 space groups: per-container (silk's layout) vs shared chains")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compare(backends: list[str], models: list[str], plot_path: Path, out_dir: Path) -> None:
    """Measure every (backend, model, layout), print the table and the targets, write JSON and the plot."""
    results = []
    for backend in backends:
        for name in models:
            for layout in ChainLayout:
                started = time.perf_counter()
                results.append(measure(backend, MODELS[name], layout))
                print(f"measured {backend} {name} {layout} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    walks = [traversal(MODELS[name]) for name in models]
    print(table(results, walks))
    print()
    print(targets(results, walks))
    (out_dir / "layouts.json").write_text(json.dumps({"cycles": results, "traversal": walks}, indent=1))
    plot(results, plot_path)
    print(f"\nplot: {plot_path}")
