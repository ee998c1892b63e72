"""Alembic revisions of the policy DB schema (run through :mod:`dynamic_asgs.policydb.migrate`)."""
