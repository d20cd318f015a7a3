"""Fake SGLang elastic algorithm: the real signature, recording each call."""

from __future__ import annotations

from typing import Any

import torch

from sglang.srt.eplb.eplb_algorithms.deepseek import round_robin

CALLS: list[dict[str, Any]] = []


def rebalance_experts(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    enable_hierarchical: bool,
    active_ranks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    CALLS.append(
        {
            "weight": weight,
            "num_replicas": num_replicas,
            "num_groups": num_groups,
            "num_nodes": num_nodes,
            "num_gpus": num_gpus,
            "enable_hierarchical": enable_hierarchical,
            "active_ranks": active_ranks,
        }
    )
    return round_robin(weight, num_replicas)
