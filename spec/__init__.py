"""The EPLB contract: valid problems, valid placements, objectives and refinement contracts.

This package imports nothing from the rest of the project.
"""

from spec.migration import (
    MigrationCode,
    MigrationViolation,
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
    "MigrationCode",
    "MigrationViolation",
    "Policy",
    "RefinementRule",
    "RefinementViolation",
    "TransferCounts",
    "TransferSchedule",
    "Violation",
    "ViolationCode",
    "balancedness",
    "check_count_refinement",
    "check_placement",
    "check_rebalance",
    "check_schedule",
    "check_swap_refinement",
    "count_transfers",
    "duplicate_labels_added",
    "gpu_loads",
    "gpus_with_duplicate_replicas",
    "kept_slot_shortfall",
    "link_counts",
    "needed_transfers",
    "network_nodes",
    "peak_gpu_load",
    "peak_replica_load",
    "policy_for",
    "replica_loads",
    "same_gpu_loads",
    "validate_placement",
]
