"""Policy store (SQL), leader lease and the internal security-groups API."""
