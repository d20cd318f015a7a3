"""Fake SGLang algorithm module: a round-robin placement in int32."""

from __future__ import annotations

import torch


def round_robin(
    weight: torch.Tensor, num_replicas: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    layers, experts = weight.shape
    phy2log = torch.arange(num_replicas, dtype=torch.int32).remainder(experts).repeat(layers, 1)
    logcnt = torch.stack([torch.bincount(row, minlength=experts) for row in phy2log]).int()
    width = int(logcnt.max())
    log2phy = torch.full((layers, experts, width), -1, dtype=torch.int32)
    for slot in range(num_replicas):
        expert = slot % experts
        log2phy[:, expert, slot // experts] = slot
    return phy2log, log2phy, logcnt
