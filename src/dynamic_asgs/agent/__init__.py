"""vxlan-policy-agent: container store reader, planner, iptables dataplane, HTTP endpoints."""
