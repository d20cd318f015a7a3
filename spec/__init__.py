"""The EPLB contract: valid problems, valid placements, objectives, the contracts of the
refinement steps and of rebalancing, and one ``Violation`` type for what is wrong.

This package imports nothing from the rest of the project.
"""

from spec.budgeted import check_budgeted_rebalance, exact_peaks, peak_limits
from spec.migration import (
    TransferCounts,
    TransferSchedule,
    check_rebalance,
    check_schedule,
    count_transfers,
    kept_slot_shortfall,
    link_counts,
    needed_transfers,
    network_nodes,
    same_gpu_loads,
    validate_placement,
)
from spec.objectives import (
    balancedness,
    gpu_loads,
    gpus_with_duplicate_replicas,
    peak_gpu_load,
    peak_replica_load,
    replica_loads,
)
from spec.placement import check_placement
from spec.problem import BalancingProblem, Policy, policy_for
from spec.refinements import (
    GAIN_TOLERANCE,
    check_count_refinement,
    check_swap_refinement,
    duplicate_labels_added,
)
from spec.violations import (
    MigrationCode,
    MigrationViolation,
    RefinementRule,
    RefinementViolation,
    SolutionCode,
    Violation,
    ViolationCode,
)

__all__ = [
    "GAIN_TOLERANCE",
    "BalancingProblem",
    "MigrationCode",
    "MigrationViolation",
    "Policy",
    "RefinementRule",
    "RefinementViolation",
    "SolutionCode",
    "TransferCounts",
    "TransferSchedule",
    "Violation",
    "ViolationCode",
    "balancedness",
    "check_budgeted_rebalance",
    "check_count_refinement",
    "check_placement",
    "check_rebalance",
    "check_schedule",
    "check_swap_refinement",
    "count_transfers",
    "duplicate_labels_added",
    "exact_peaks",
    "gpu_loads",
    "gpus_with_duplicate_replicas",
    "kept_slot_shortfall",
    "link_counts",
    "needed_transfers",
    "network_nodes",
    "peak_gpu_load",
    "peak_limits",
    "peak_replica_load",
    "policy_for",
    "replica_loads",
    "same_gpu_loads",
    "validate_placement",
]
