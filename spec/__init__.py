"""The EPLB contract: valid problems, valid placements, objectives and refinement contracts.

This package imports nothing from the rest of the project.
"""

from spec.objectives import (
    balancedness,
    gpu_loads,
    gpus_with_duplicate_replicas,
    peak_gpu_load,
    peak_replica_load,
    replica_loads,
)
from spec.placement import Violation, ViolationCode, check_placement
from spec.problem import BalancingProblem, Policy, policy_for
from spec.refinements import (
    GAIN_TOLERANCE,
    RefinementRule,
    RefinementViolation,
    check_count_refinement,
    check_swap_refinement,
    duplicate_labels_added,
)

__all__ = [
    "GAIN_TOLERANCE",
    "BalancingProblem",
    "Policy",
    "RefinementRule",
    "RefinementViolation",
    "Violation",
    "ViolationCode",
    "balancedness",
    "check_count_refinement",
    "check_placement",
    "check_swap_refinement",
    "duplicate_labels_added",
    "gpu_loads",
    "gpus_with_duplicate_replicas",
    "peak_gpu_load",
    "peak_replica_load",
    "policy_for",
    "replica_loads",
]
