"""netmon: iptables rule counts and overlay interface metrics."""
