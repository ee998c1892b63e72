"""Test support used by more than one suite (``tests`` is on pytest's ``pythonpath``).

What one suite alone uses sits beside it: the BOSH toolchain stand-ins in
``tests/release/bosh_tools``, silk-release's stand-ins in ``tests/integration/coexistence/silk``,
the interpreting fake cell in ``tests/unit/agent/dataplane/fakecell.py``. Processes start
through the package's harness (:mod:`dynamic_asgs.local.harness`), the one ``local up`` uses.

* Machine and namespaces: ``env`` (capabilities, CI rule, ``IPTABLES_BACKENDS``), ``netns``,
  ``cell`` (a Diego cell in namespaces with real traffic), ``cni`` (the CNI chain on a cell).
* Control plane: ``daemons`` (databases and ``DB_ENGINES``, certificates, the daemons),
  ``stack`` (control plane + agent on a cell), ``hostile_cc``, ``raw_http``, ``ingress``, ``netmon``.
* Data and checks: ``plans`` (groups, containers, planned chains, random rules), ``translate``,
  ``faults`` (recording, table sampling, a fake policy server), ``commands`` (command shims).
"""
