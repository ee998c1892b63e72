"""Dataplane benchmark: what a cycle costs on cells of 10k to 1M rules, legacy and nft.

Run as root (it builds network namespaces; nothing touches the root namespace's tables)::

    .venv/bin/python bench/dataplane.py [--sizes 10000,150000,500000,1000000] [--backends legacy,nft]
                                        [--plot bench/out/dataplane.png]

Cells hold about 100 rules per container: 50 spaces of 95 accept rules each (the
ASG chain: 98 rules, the parent: 2), plus the CNI's FORWARD hook per container.
For every cell it measures, side by side in one run:

* **ours** — the agent's Dataplane, in a fresh process (its peak RSS, VmHWM, is
  reported): a full sync (the first cycle of a new agent on a cell holding only
  the CNI's parents: one read, then every container written), a no-change cycle
  (plans re-made from the same GroupIndex: new objects, same content; median of
  5), a 1% change (1% of containers move to another space; median of 10, or 6
  from 500k rules) and a restart (a new process adopting an already-correct
  table: its writes are counted). Full syncs alternate with the floor's on fresh
  namespaces, median of 3 (1 for nft from 500k rules: minutes each), because
  legacy commit times vary by +-20% from run to run;
* **floor** — one raw ``iptables-restore -w --noflush`` of the very same
  transaction, generated beforehand outside the agent (for a restart: one raw
  ``iptables-save``, the least a restarted agent must do to know the table);
* **per-call baseline** — the Go agent's style, measured on a sample of
  containers and extrapolated: per container, the replace sequence of silk's
  enforcer (``-C``, ``-C``, ``-N``, a restore inserting the jump, a restore
  appending the rules, ``-D``, ``-S``, ``-F``, ``-X``, ``-E``, ``-S``: 7 commits
  and 5 reads), or for a full sync onto empty tables its create sequence (3
  commits, 3 reads); a no-change cycle costs it one full listing (``ListChains``
  runs ``iptables -S``).

It prints one table and writes a PNG (cycle time against rules per cell, log
scale). The benchmark is also where the dataplane's choice for parents not
known to exist was measured: see ``--probe``. ``--layouts`` compares the two chain
layouts instead, on realistic cells (:mod:`layouts`)::

    .venv/bin/python bench/dataplane.py --layouts [--models realistic,1M] [--backends legacy,nft]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dynamic_asgs.agent.dataplane import Dataplane  # noqa: E402
from dynamic_asgs.agent.dataplane.payload import Payload, Write  # noqa: E402
from dynamic_asgs.asg import chains  # noqa: E402
from dynamic_asgs.asg.model import Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload  # noqa: E402
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex, plan_container  # noqa: E402
from dynamic_asgs.iptables.render import Renderer  # noqa: E402
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for  # noqa: E402
from dynamic_asgs.lager import Logger  # noqa: E402

SPACES = 50
ACCEPTS = 95  # + RELATED/INVALID/REJECT = 98 ASG rules, + 2 in the parent = 100 per container
OUT = ROOT / "bench" / "out"


# -- the cell's data -------------------------------------------------------------------------


def group_index() -> GroupIndex:
    import ipaddress

    groups = []
    for s in range(SPACES):
        rules = []
        for r in range(ACCEPTS):
            net = ipaddress.ip_network(f"10.{s}.{r}.0/24")
            dst = IPRange(net.network_address, net.broadcast_address)
            rules.append(Rule(Protocol.TCP, (dst,), (PortRange(1000 + r, 1000 + r),)))
        groups.append(SecurityGroup(f"sg-{s}", f"sg-{s}", tuple(rules), running_spaces=(f"space-{s}",)))
    return GroupIndex(groups)


def handle(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def ip(i: int) -> str:
    return f"10.{200 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def desired(n: int, index: GroupIndex, moved: bool = False) -> dict[str, ContainerChains]:
    """Every container's plan; with ``moved``, 1% of them (every 100th) sit in the next space."""
    out = {}
    for i in range(n):
        space = (i + (1 if moved and i % 100 == 0 else 0)) % SPACES
        c = Container(handle(i), ip(i), "app-guid", f"space-{space}", Workload.APP)
        plan = plan_container(c, index, ChainSettings())
        assert plan is not None
        out[c.handle] = plan
    return out


def write_payload(path: Path, plans: dict[str, ContainerChains]) -> int:
    """The transaction the agent would send for ``plans``, written to ``path`` (outside the agent)."""
    renderer = Renderer()
    writes = [Write(h, p.v4, renderer.digest(p.v4)) for h, p in plans.items()]
    with path.open("w") as f:
        count = 0
        for line in Payload(4, writes, renderer=renderer):
            f.write(line + "\n")
            count += 1
    return count


# -- namespaces and raw tools ----------------------------------------------------------------


def sh(*cmd: str, stdin: Any = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(cmd), stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=check)


def tool(backend: str, kind: str = "") -> str:
    return f"iptables-{backend}" + (f"-{kind}" if kind else "")


def make_cell(backend: str, n: int, spare: int) -> str:
    """A namespace whose table holds what the CNI made: parents (lone REJECT) and FORWARD hooks."""
    ns = f"dasgb{os.getpid()}{time.monotonic_ns() % 100000}"
    sh("ip", "netns", "add", ns)
    with tempfile.NamedTemporaryFile("w", dir=OUT, suffix=".txt") as f:
        f.write("*filter\n")
        for i in range(n + spare):
            f.write(f":{chains.netout_chain_name(handle(i))} - [0:0]\n")
        for i in range(n + spare):
            parent = chains.netout_chain_name(handle(i))
            f.write(f"-A {parent} -j REJECT --reject-with icmp-port-unreachable\n")
            f.write(f"-A FORWARD -s {ip(i)}/32 -o eth0 -j {parent}\n")
        f.write("COMMIT\n")
        f.flush()
        with open(f.name) as payload:
            sh("ip", "netns", "exec", ns, tool(backend, "restore"), "-w", "30", "--noflush", stdin=payload)
    return ns


def drop_cell(ns: str) -> None:
    sh("ip", "netns", "del", ns, check=False)


def raw_restore(ns: str, backend: str, path: Path) -> float:
    with path.open() as payload:
        start = time.perf_counter()
        sh("ip", "netns", "exec", ns, tool(backend, "restore"), "-w", "30", "--noflush", stdin=payload)
        return time.perf_counter() - start


def timed(*cmd: str) -> float:
    start = time.perf_counter()
    sh(*cmd)
    return time.perf_counter() - start


# -- the Go agent's style, on a sample ---------------------------------------------------------


def go_style(ns: str, backend: str, i: int, *, create: bool) -> float:
    """One container the way silk's enforcer does it: one process (and often one commit) per step."""
    ipt = ["ip", "netns", "exec", ns, tool(backend), "-w", "-t", "filter"]
    parent, asg = chains.netout_chain_name(handle(i)), chains.asg_chain_name(handle(i))
    new = asg if create else "c" + asg
    body = "".join(f"-A {new} -m iprange -p tcp --dst-range 10.0.{r}.0-10.0.{r}.255 -m tcp --dport {1000 + r} "
                   "-j ACCEPT\n" for r in range(ACCEPTS))

    def restore(text: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, tool(backend, "restore"), "-w", "--noflush"],
                       input=f"*filter\n{text}COMMIT\n", text=True, check=True, capture_output=True)

    start = time.perf_counter()
    sh(*ipt, "-C", parent, "-j", asg, check=False)
    sh(*ipt, "-C", parent, "-j", "c" + asg, check=False)
    sh(*ipt, "-N", new)
    restore(f"-I {parent} 1 -j {new}\n")
    restore(body)
    if not create:
        sh(*ipt, "-D", parent, "2")  # the old jump (ours carries a hash comment, so by position)
        sh(*ipt, "-S", asg)
        sh(*ipt, "-F", asg)
        sh(*ipt, "-X", asg)
        sh(*ipt, "-E", new, asg)
    sh(*ipt, "-S", parent)
    return time.perf_counter() - start


# -- the agent, in its own process -------------------------------------------------------------


def agent_runner(ns: str, backend: str) -> IptablesRunner:
    restore, save = commands_for(4, backend)
    return IptablesRunner(version=4, restore_cmd=restore, save_cmd=save, lock_file=OUT / "iptables.lock",
                          prefix=("ip", "netns", "exec", ns))


def timed_apply(dp: Dataplane, plans: dict[str, ContainerChains]) -> tuple[float, int]:
    """One cycle of ``dp`` that must succeed: its seconds and its commits (restores)."""
    start = time.perf_counter()
    report = dp.apply(plans)
    took = time.perf_counter() - start
    assert report.ok, dict(list(report.failed.items())[:3])
    return took, report.commits


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside a fresh process: ``cycles`` (full, no-change, 1% changes) or ``restart``."""
    n, ns, backend = spec["n"], spec["ns"], spec["backend"]
    index = group_index()
    base, moved = desired(n, index), desired(n, index, moved=True)
    dp = Dataplane(runners={4: agent_runner(ns, backend)}, logger=Logger("bench", stream=io.StringIO()))
    out: dict[str, Any] = {}

    cycle = functools.partial(timed_apply, dp)

    if spec["mode"] == "restart":
        out["restart"], out["restart_writes"] = cycle(base)
    else:
        out["full"], _ = cycle(base)
    if spec["mode"] == "cycles":
        no_change = []
        for _ in range(5):
            again = desired(n, index)  # what a daemon re-planning every cycle hands over
            took, commits = cycle(again)
            assert commits == 0
            no_change.append(took)
        out["no_change"] = statistics.median(no_change)
        out["change"] = statistics.median(cycle(moved if k % 2 == 0 else base)[0] for k in range(spec["samples"]))
    out["rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would include the parent's at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=True, text=True,
                          capture_output=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- one cell --------------------------------------------------------------------------------


def measure(backend: str, rules: int, sample: int, reps: int) -> dict[str, Any]:
    n = rules // 100
    index = group_index()
    base, moved = desired(n, index), desired(n, index, moved=True)
    changed = [h for i, h in enumerate(base) if i % 100 == 0]
    full_file, fwd_file, back_file = OUT / "full.txt", OUT / "fwd.txt", OUT / "back.txt"
    write_payload(full_file, base)
    write_payload(fwd_file, {h: moved[h] for h in changed})
    write_payload(back_file, {h: base[h] for h in changed})
    r: dict[str, Any] = {"backend": backend, "rules": rules, "containers": n}
    samples = 10 if rules <= 150_000 else 6
    fulls, floors, rss = [], [], []
    ns = ""
    try:
        for k in range(reps):  # full syncs are noisy on legacy: alternate and take medians
            ns = make_cell(backend, n, 0)
            floors.append(raw_restore(ns, backend, full_file))
            drop_cell(ns)
            ns = make_cell(backend, n, sample)
            last = k == reps - 1
            got = run_worker({"mode": "cycles" if last else "full", "n": n, "ns": ns, "backend": backend,
                              "samples": samples})
            fulls.append(got.pop("full"))
            rss.append(got.pop("rss_mb"))
            r.update(got)
            if not last:
                drop_cell(ns)
        r["full"], r["floor_full"] = statistics.median(fulls), statistics.median(floors)
        r["floor_change"] = statistics.median(raw_restore(ns, backend, fwd_file if k % 2 == 0 else back_file)
                                              for k in range(samples))
        r.update(run_worker({"mode": "restart", "n": n, "ns": ns, "backend": backend}))
        r["rss_mb"] = max(*rss, r["rss_mb"])
        r["floor_restart"] = timed("ip", "netns", "exec", ns, tool(backend, "save"), "-t", "filter")
        r["go_list"] = timed("ip", "netns", "exec", ns, tool(backend), "-w", "-t", "filter", "-S")
        r["go_new"] = statistics.median(go_style(ns, backend, n + k, create=True) for k in range(sample))
        r["go_replace"] = statistics.median(go_style(ns, backend, k * 7, create=False) for k in range(sample))
    finally:
        drop_cell(ns)
        for path in (full_file, fwd_file, back_file):
            path.unlink(missing_ok=True)
    return r


# -- parent checks: what the dataplane's choice rests on ---------------------------------------


def probe(backend: str, rules: int) -> dict[str, float]:
    """Ways to learn whether a new container's parent exists, on a cell of ``rules`` rules."""
    n = rules // 100
    index = group_index()
    plans = desired(n, index)
    full = OUT / "full.txt"
    write_payload(full, plans)
    ns = make_cell(backend, n, 1)
    try:
        raw_restore(ns, backend, full)
        one = OUT / "one.txt"
        write_payload(one, {handle(0): plans[handle(0)]})
        missing = OUT / "missing.txt"
        missing.write_text("*filter\n-F netout--missing\nCOMMIT\n")
        exe = ("ip", "netns", "exec", ns)
        out = {
            "iptables-save": timed(*exe, tool(backend, "save"), "-t", "filter"),
            "iptables -S <parent>": timed(*exe, tool(backend), "-w", "-S", chains.netout_chain_name(handle(n))),
            "restore refused (-F missing)": _refused(ns, backend, missing),
            "restore of one container (-F guard)": raw_restore(ns, backend, one),
        }
        for path in (one, missing):
            path.unlink()
        return out
    finally:
        drop_cell(ns)
        full.unlink(missing_ok=True)


def _refused(ns: str, backend: str, path: Path) -> float:
    with path.open() as payload:
        start = time.perf_counter()
        sh("ip", "netns", "exec", ns, tool(backend, "restore"), "-w", "30", "--noflush", stdin=payload, check=False)
        return time.perf_counter() - start


# -- output ----------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def rows(r: dict[str, Any]) -> list[tuple[str, float, float | None, float, str]]:
    changed = max(1, r["containers"] // 100)
    return [
        ("full sync", r["full"], r["floor_full"], r["go_new"] * r["containers"], ""),
        ("1% change", r["change"], r["floor_change"], r["go_replace"] * changed, f"{changed} containers"),
        ("no-change cycle", r["no_change"], None, r["go_list"], "go: one iptables -S"),
        ("restart (adopt)", r["restart"], r["floor_restart"], r["go_replace"] * r["containers"],
         f"writes: {r['restart_writes']}; floor: iptables-save"),
    ]


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'backend':8} {'rules':>9} {'containers':>10}  {'cycle':16} {'ours':>10} {'floor':>10} {'ours/floor':>10}"
            f" {'per-call (Go)':>14} {'Go/ours':>9}  {'peak RSS':>9}  notes")
    out = [head, "-" * len(head)]
    for r in results:
        for i, (name, ours, floor, go, note) in enumerate(rows(r)):
            ratio = f"{ours / floor:.2f}x" if floor else "-"
            rss = f"{r['rss_mb']:.0f} MB" if i == 0 else ""
            out.append(f"{r['backend']:8} {r['rules']:>9,} {r['containers']:>10,}  {name:16} {_s(ours):>10} "
                       f"{_s(floor) if floor else '-':>10} {ratio:>10} {_s(go):>14} {go / ours:>8.0f}x  {rss:>9}  "
                       f"{note}")
    return "\n".join(out)


def targets(results: list[dict[str, Any]]) -> str:
    out = []
    for r in results:
        tag = f"{r['backend']} {r['rules']:,}"
        for name, key, floor in (("full sync", "full", "floor_full"), ("1% change", "change", "floor_change")):
            ratio = r[key] / r[floor]
            out.append(f"{'PASS' if ratio <= 1.3 else 'MISS'}  {tag}: {name} {ratio:.2f}x the floor (target <= 1.3x)")
        out.append(f"{'PASS' if r['restart_writes'] == 0 else 'MISS'}  {tag}: restart with no change wrote "
                   f"{r['restart_writes']} time(s) (target 0)")
        if r["rules"] >= 1_000_000:
            out.append(f"{'PASS' if r['no_change'] <= 0.05 else 'MISS'}  {tag}: no-change cycle "
                       f"{r['no_change'] * 1000:.1f} ms (target <= 50 ms)")
            out.append(f"{'PASS' if r['rss_mb'] <= 500 else 'MISS'}  {tag}: peak RSS {r['rss_mb']:.0f} MB "
                       "(target <= 500 MB)")
    return "\n".join(out)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (title, key, floor, go) in zip(axes, (("1% change", "change", "floor_change", "go_replace"),
                                                  ("full sync", "full", "floor_full", "go_new")), strict=True):
        for backend, style in (("legacy", "-"), ("nft", "--")):
            rs = sorted((r for r in results if r["backend"] == backend), key=lambda r: r["rules"])
            if not rs:
                continue
            x = [r["rules"] for r in rs]
            factor = [max(1, r["containers"] // 100) if key == "change" else r["containers"] for r in rs]
            ax.plot(x, [r[key] for r in rs], style, marker="o", color="tab:blue", label=f"ours ({backend})")
            ax.plot(x, [r[floor] for r in rs], style, marker="s", color="tab:green", label=f"floor ({backend})")
            ax.plot(x, [r[go] * f for r, f in zip(rs, factor, strict=True)], style, marker="^", color="tab:red",
                    label=f"per-call, Go style ({backend})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rules per cell")
        ax.set_ylabel("seconds per cycle")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,150000,500000,1000000")
    parser.add_argument("--backends", default="legacy,nft")
    parser.add_argument("--plot", default=str(OUT / "dataplane.png"))
    parser.add_argument("--probe", action="store_true", help="measure the ways to check a parent chain instead")
    parser.add_argument("--layouts", action="store_true",
                        help="compare the per-container and shared chain layouts on realistic cells instead")
    parser.add_argument("--models", default="realistic,1M", help="with --layouts: the cell models")
    parser.add_argument("--layouts-plot", default=str(ROOT / "docs" / "img" / "chain-layouts.png"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--layout-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.layout_worker:
        import layouts

        print(json.dumps(layouts.layout_worker(json.loads(args.layout_worker))))
        return
    if os.geteuid() != 0:
        sys.exit("bench/dataplane.py: run as root (it creates network namespaces)")
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    if args.layouts:
        import layouts

        Path(args.layouts_plot).parent.mkdir(parents=True, exist_ok=True)
        layouts.compare(backends, args.models.split(","), Path(args.layouts_plot), OUT)
        return
    if args.probe:
        for backend in backends:
            for size in sizes:
                for name, took in probe(backend, size).items():
                    print(f"{backend:7} {size:>9,} rules  {name:38} {took * 1000:9.1f} ms")
        return
    results = []
    for backend in backends:
        for size in sizes:
            started = time.perf_counter()
            reps = 3 if backend == "legacy" or size <= 150_000 else 1
            results.append(measure(backend, size, sample=3 if size <= 150_000 else 2, reps=reps))
            print(f"measured {backend} {size:,} rules in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table(results))
    print()
    print(targets(results))
    (OUT / "dataplane.json").write_text(json.dumps(results, indent=1))
    plot(results, Path(args.plot))
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
