"""Fake vLLM default policy: records each call and returns a round-robin phy2log.

It imports its sibling relatively, as the real module does, so the adapter must register
the parent packages with the right ``__path__``.
"""

from __future__ import annotations

from typing import Any

import torch

from .abstract import AbstractEplbPolicy

CALLS: list[dict[str, Any]] = []
RESULTS: list[torch.Tensor] = []


class DefaultEplbPolicy(AbstractEplbPolicy):
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
        CALLS.append(
            {
                "cls": cls,
                "weight": weight,
                "num_replicas": num_replicas,
                "num_groups": num_groups,
                "num_nodes": num_nodes,
                "num_ranks": num_ranks,
                "old_global_expert_indices": old_global_expert_indices,
            }
        )
        layers, experts = weight.shape
        phy2log = torch.arange(num_replicas).remainder(experts).repeat(layers, 1)
        RESULTS.append(phy2log)
        return phy2log
