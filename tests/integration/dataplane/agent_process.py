"""Run one dataplane cycle in a fresh process, as a restarted agent would (used by restart tests).

Reads a JSON spec on stdin: ``backend``, ``ns``, ``lock_file``, ``prefix`` (commands
before ``ip netns exec``), ``spaces`` (space -> CC rule objects) and
``containers`` (``[{"handle", "space", "index"}]``); prints the report's summary
and its adopted/changed handles as one JSON object.
"""

from __future__ import annotations

import io
import json
import sys

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg.translate import GroupIndex
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for
from dynamic_asgs.lager import Logger
from support.plans import container, groups_for, plan


def main() -> None:
    spec = json.load(sys.stdin)
    index = GroupIndex(groups_for(spec["spaces"]))
    desired = {c["handle"]: plan(container(c["handle"], c["space"], index=c["index"]), index)
               for c in spec["containers"]}
    runners = {}
    for version in (4, 6):
        restore, save = commands_for(version, spec["backend"])
        runners[version] = IptablesRunner(version=version, restore_cmd=restore, save_cmd=save,
                                          lock_file=spec["lock_file"],
                                          prefix=(*spec["prefix"], "ip", "netns", "exec", spec["ns"]))
    report = Dataplane(runners=runners, logger=Logger("restarted", stream=io.StringIO())).apply(desired)
    print(json.dumps({**report.summary(), "adopted_handles": list(report.adopted),
                      "changed_handles": list(report.changed)}))


if __name__ == "__main__":
    main()
