"""Fake vLLM policy base (same entry-point shape as the real one, none of its code)."""

from __future__ import annotations

from typing import Any


class AbstractEplbPolicy:
    @classmethod
    def rebalance_experts(
        cls,
        weight: Any,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: Any = None,
    ) -> Any:
        raise NotImplementedError
