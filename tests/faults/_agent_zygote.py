"""A pre-imported agent dataplane that forks a fresh "agent" per request, for the SIGKILL test.

Starting the real daemon 100 times would cost minutes of interpreter start-up on a shared
2-core machine; forking this single-threaded process gives a child with no dataplane state
(exactly what a restarted agent has: nothing but the kernel table) for the price of a fork.
The child runs the same :class:`~dynamic_asgs.agent.dataplane.Dataplane` code as the daemon.

Protocol (JSON lines): the first stdin line is the spec (``backend``, ``ns``, ``lock_file``,
``spaces``: space -> CC rules, ``handles``: handle -> container index, ``layout``: the chain layout). Each further line
``{"seed": N, "target": {handle: space}}`` forks a child in its own process group and
answers ``{"pid": P}``. The child applies ``target`` (a restart's first cycle) and prints
``{"converged": pid, ...}``, waits for SIGUSR1, then applies random space changes until it is killed.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import traceback

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg.translate import ChainLayout, GroupIndex
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for
from dynamic_asgs.lager import Logger
from support.plans import container, groups_for, layout, plan


def _child(spec: dict[str, object], seed: int, target: dict[str, str]) -> None:
    index = GroupIndex(groups_for(spec["spaces"]))  # type: ignore[arg-type]
    handles: dict[str, int] = spec["handles"]  # type: ignore[assignment]
    spaces = sorted(spec["spaces"])  # type: ignore[call-overload]

    def desired(assignment: dict[str, str]) -> dict[str, object]:
        return {h: plan(container(h, s, index=handles[h]), index) for h, s in assignment.items()}

    runners = {}
    for version in (4, 6):
        restore, save = commands_for(version, str(spec["backend"]))
        runners[version] = IptablesRunner(version=version, restore_cmd=restore, save_cmd=save,
                                          lock_file=str(spec["lock_file"]), lock_timeout=30,
                                          prefix=("ip", "netns", "exec", str(spec["ns"])))
    dp = Dataplane(runners=runners, logger=Logger("zygote-child", stream=io.StringIO()))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    report = dp.apply(desired(target))  # type: ignore[arg-type]
    print(json.dumps({"converged": os.getpid(), "ok": report.ok, **report.summary()}), flush=True)
    signal.sigwait({signal.SIGUSR1})  # the test checks the converged table, then lets the cycles run
    rnd = random.Random(seed)
    current = dict(target)
    while True:
        for handle in rnd.sample(sorted(handles), rnd.randint(1, 3)):
            current[handle] = rnd.choice(spaces)
        dp.apply(desired(current))  # type: ignore[arg-type]


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    for line in sys.stdin:
        while True:  # reap killed children
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.setpgrp()
            try:
                with layout(ChainLayout(spec["layout"])):
                    _child(spec, request["seed"], request["target"])
            except BaseException:
                traceback.print_exc()
                print(json.dumps({"error": os.getpid()}), flush=True)
            finally:
                os._exit(1)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    main()
