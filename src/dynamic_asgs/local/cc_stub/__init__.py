"""The Cloud Controller + UAA stand-in (``dynamic-asgs cc-stub``), speaking their wire formats."""
