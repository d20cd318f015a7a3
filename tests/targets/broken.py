"""Implementations broken on purpose: the gate must catch each with the right check.

Each wraps the reference and breaks one thing. Used as gate targets by file path.
"""

from __future__ import annotations

import os
import time

import torch

from impl import rebalance_experts
from impl.steps import refine_swap_lists

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def reference(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    return rebalance_experts(weight, r, g, n, p)


def wrong_count(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    logcnt[:, 0] += 1
    return phy2log, log2phy, logcnt


def out_of_range_id(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    phy2log[:, -1] = weight.shape[1]
    return phy2log, log2phy, logcnt


def inconsistent_log2phy(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    log2phy[:, :, 0] = log2phy[:, :, 0].roll(
        1, dims=1
    )  # first replicas point at a neighbour's slot
    return phy2log, log2phy, logcnt


def group_split(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Exchanges the first and the last slot, which sit on different nodes."""
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    first, last = phy2log[:, 0].clone(), phy2log[:, -1].clone()
    phy2log[:, 0], phy2log[:, -1] = last, first
    for layer in range(phy2log.shape[0]):
        table = log2phy[layer]
        a, b = table == 0, table == r - 1
        table[a], table[b] = r - 1, 0
    return phy2log, log2phy, logcnt


def mutates_input(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    result = reference(weight, r, g, n, p)
    weight.mul_(2).add_(1)  # "normalises" the caller's tensor in place
    return result


def nondeterministic(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid, but shuffles the slots inside each GPU at random."""
    phy2log, _, logcnt = reference(weight, r, g, n, p)
    cap = r // p
    for layer in range(phy2log.shape[0]):
        for gpu in range(p):
            block = phy2log[layer, gpu * cap : (gpu + 1) * cap]
            phy2log[layer, gpu * cap : (gpu + 1) * cap] = block[torch.randperm(cap)]
    log2phy = torch.full((phy2log.shape[0], weight.shape[1], r - weight.shape[1] + 1), -1)
    for layer in range(phy2log.shape[0]):
        seen = [0] * weight.shape[1]
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, seen[expert]] = slot
            seen[expert] += 1
    return phy2log, log2phy, logcnt


def hangs(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    while True:
        time.sleep(0.05)


def crash_on_all_zero(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Normalises each layer by its total: divides by zero when a layer has no load."""
    for row in weight.tolist():
        scale = 1.0 / sum(row)
        assert scale > 0
    return reference(weight, r, g, n, p)


def dies(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Takes the whole process down (as a segfault in native code would)."""
    if weight.shape[1] > 2:
        os._exit(3)
    return reference(weight, r, g, n, p)


def accepts_bad_input(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Pads a too-small replica budget instead of rejecting it."""
    experts = weight.shape[1]
    if r < experts:
        phy2log = torch.arange(r).repeat(weight.shape[0], 1)
        return (
            phy2log,
            torch.full((weight.shape[0], experts, 1), -1),
            torch.ones(weight.shape[0], experts, dtype=torch.int64),
        )
    return reference(weight, r, g, n, p)


def phy2log_only_numpy(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    """Valid: returns only phy2log, as a NumPy array."""
    return reference(weight, r, g, n, p)[0].numpy()


def refinement_raises_peak(
    weights: list[float], gpu: list[int], rank: list[int], num_gpus: int
) -> tuple[list[int], list[int]]:
    """Refinement B with the comparison the wrong way round: moves the lightest replica
    of the lightest GPU onto the heaviest one, in exchange for its lightest."""
    if num_gpus < 2 or len(gpu) // num_gpus < 2:
        return refine_swap_lists(weights, gpu, rank, num_gpus)
    loads = [0.0] * num_gpus
    for w, g in zip(weights, gpu, strict=True):
        loads[g] += w
    heavy = max(range(num_gpus), key=lambda g: loads[g])
    light = min(range(num_gpus), key=lambda g: loads[g])
    if heavy == light:
        return list(gpu), list(rank)
    a = min((j for j in range(len(gpu)) if gpu[j] == heavy), key=lambda j: weights[j])
    b = max((j for j in range(len(gpu)) if gpu[j] == light), key=lambda j: weights[j])
    if not weights[b] > weights[a]:
        return list(gpu), list(rank)
    new_gpu, new_rank = list(gpu), list(rank)
    new_gpu[a], new_gpu[b] = light, heavy
    new_rank[a], new_rank[b] = rank[b], rank[a]
    return new_gpu, new_rank


def stacks_equal_hot_experts(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """A tie bug that shows only at token scale: when the two hottest experts of a layer
    have the same load of at least 2**11, both end up on one GPU."""
    phy2log, _, logcnt = reference(weight, r, g, n, p)
    cap = r // p
    per_node = r // n if g % n == 0 else r
    for layer in range(weight.shape[0]):
        top = torch.topk(weight[layer].double(), min(2, weight.shape[1]))
        if len(top.values) < 2 or top.values[0] != top.values[1] or top.values[0] < 2**11:
            continue
        a, b = (int(i) for i in top.indices)
        row = phy2log[layer].tolist()
        slot_a, slot_b = row.index(a), row.index(b)
        gpu_a = slot_a // cap
        partner = next(
            (s for s in range(gpu_a * cap, (gpu_a + 1) * cap) if row[s] not in (a, b)), None
        )
        if partner is None or slot_b // cap == gpu_a or partner // per_node != slot_b // per_node:
            continue
        row[partner], row[slot_b] = row[slot_b], row[partner]
        phy2log[layer] = torch.tensor(row)
    log2phy = torch.full((weight.shape[0], weight.shape[1], r - weight.shape[1] + 1), -1)
    for layer in range(weight.shape[0]):
        seen = [0] * weight.shape[1]
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, seen[expert]] = slot
            seen[expert] += 1
    return phy2log, log2phy, logcnt
