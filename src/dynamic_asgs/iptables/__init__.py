"""iptables plumbing shared by the agent, the CNI plugin and netmon.

:mod:`.render` (rules -> restore lines + content hash), :mod:`.saved` (reading
``iptables-save`` back), :mod:`.runner` (the only module that runs the tools) and
:mod:`.fake` (a table model behind the same interface, for tests and simulations).
"""
