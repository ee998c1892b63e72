"""iptables plumbing shared by the agent, the CNI plugin and netmon."""
