"""The all-in-one local environment: CC stand-in, control plane and a cell in namespaces."""
