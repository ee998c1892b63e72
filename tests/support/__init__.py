"""Shared test support: real network namespaces, real iptables, capability checks."""
