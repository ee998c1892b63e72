"""The policy-server daemon: the internal security-groups API over mutual TLS, its health endpoint and guards."""
