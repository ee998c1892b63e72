"""The agent's iptables dataplane: desired chains in, one atomic restore per family out."""
