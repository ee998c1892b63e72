"""The policy DB: connection, tables, migrations (with their lock) and the security-group store.

Used by two daemons: the syncer writes groups through :mod:`.store`, the policy server
reads the dataset from it.
"""
