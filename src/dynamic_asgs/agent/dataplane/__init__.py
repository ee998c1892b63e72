"""The agent's iptables dataplane: desired chains in, one atomic restore per family out.

See :mod:`.dataplane` for the design; :mod:`.payload` (transaction builder),
:mod:`.table` (desired vs kernel hashes), :mod:`.sweep` (orphans), :mod:`.cycle`
(one family's restore and recovery) and :mod:`.report` hold the steps.
"""

from .dataplane import Dataplane
from .report import AppliedContainer, AppliedFamily, ApplyReport, CallKind, ContainerChange, FamilyReport

__all__ = ["AppliedContainer", "AppliedFamily", "ApplyReport", "CallKind", "ContainerChange", "Dataplane",
           "FamilyReport"]
