"""HTTP shared by the daemons: the client every daemon calls a peer with (Cloud Controller, UAA,
the policy server) and the small servers of their local endpoints.

:mod:`.client` turns transport and HTTP faults into :mod:`dynamic_asgs.errors` types with
bounded retries; :mod:`.deadline` makes a whole request's deadline reach the socket;
:mod:`.server` serves the agent's endpoints, the policy server's health and the CC stand-in.
"""
