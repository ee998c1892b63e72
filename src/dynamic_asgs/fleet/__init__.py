"""The fleet audit: what each cell's agent reports to the policy server, and the fleet view built from the reports.

Used by three processes: the agent produces :class:`~.report.CellReport`, the policy server
stores it and builds the fleet view, ``dynamic-asgs audit`` reads the view.
"""
