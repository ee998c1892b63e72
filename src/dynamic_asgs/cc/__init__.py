"""Cloud Controller v3 and UAA client."""
