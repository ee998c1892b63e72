"""The HTTP client shared by every daemon that calls a peer (Cloud Controller, UAA, the policy server).

:mod:`.client` turns transport and HTTP faults into :mod:`dynamic_asgs.errors` types with
bounded retries; :mod:`.deadline` makes a whole request's deadline reach the socket.
"""
