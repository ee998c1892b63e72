"""Dynamic Application Security Groups for Cloud Foundry."""

__all__ = ["__version__"]

__version__ = "0.1.0"
