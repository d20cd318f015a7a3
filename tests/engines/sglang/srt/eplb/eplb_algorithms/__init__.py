"""Fake SGLang dispatcher: the real one's enum and signature, recording each call.

Its results are int32, so tests can see that adapters hand them back unchanged.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any

import torch

from sglang.srt.eplb.eplb_algorithms import deepseek

CALLS: list[dict[str, Any]] = []
RESULTS: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


class EplbAlgorithm(Enum):
    deepseek = auto()
    deepseek_hierarchical = auto()
    deepseek_vec = auto()
    deepseek_vec_hierarchical = auto()
    elasticity_aware = auto()
    elasticity_aware_hierarchical = auto()


def rebalance_experts(
    tokens_per_expert: torch.Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int | None,
    num_nodes: int,
    algorithm: EplbAlgorithm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    CALLS.append(
        {
            "tokens_per_expert": tokens_per_expert,
            "num_physical_experts": num_physical_experts,
            "num_local_physical_experts": num_local_physical_experts,
            "num_groups": num_groups,
            "num_nodes": num_nodes,
            "algorithm": algorithm,
        }
    )
    result = deepseek.round_robin(tokens_per_expert.sum(dim=0), num_physical_experts)
    RESULTS.append(result)
    return result
