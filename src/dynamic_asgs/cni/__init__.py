"""Chained CNI plugin recording containers and hooking their egress chains."""
