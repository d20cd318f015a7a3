"""A typed, readable reference of the balancer in ``docs/specification.md``.

Imports only ``spec`` from this project.
"""

from impl.balancer import (
    BalanceResult,
    balance,
    rebalance_experts,
    rebalance_experts_baseline,
    rebalance_experts_fast,
)
from impl.migration import (
    Migration,
    keep_slots,
    migrate,
    relabel_gpus,
    schedule_transfers,
)
from impl.steps import (
    Packing,
    pack_balanced,
    pack_diverse,
    refine_counts,
    refine_swap,
    refine_swap_lists,
    replicate_greedy,
    water_fill,
)

__all__ = [
    "BalanceResult",
    "Migration",
    "Packing",
    "balance",
    "keep_slots",
    "migrate",
    "pack_balanced",
    "pack_diverse",
    "rebalance_experts",
    "rebalance_experts_baseline",
    "rebalance_experts_fast",
    "refine_counts",
    "refine_swap",
    "refine_swap_lists",
    "relabel_gpus",
    "replicate_greedy",
    "schedule_transfers",
    "water_fill",
]
