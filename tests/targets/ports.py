"""Ports of the reference that differ from it on purpose, each in exactly one step.

The fidelity mode must attribute each port's divergences to that step (and say whether
they are ties). ``Port`` runs the pipeline of ``docs/specification.md`` from the step
functions of ``impl.steps``, with one of them swapped for a variant; every port has
DeepSeek's signature ``f(weight, num_replicas, num_groups, num_nodes, num_gpus)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from impl.steps import (
    Packing,
    bisected_counts,
    layout_by_expert,
    pack_balanced,
    pack_diverse,
    refine_counts,
    refine_swap,
    replica_ranks,
    replicate_greedy,
    sum_left_to_right,
    water_fill,
)
from spec.placement import placement_from_phy2log
from spec.problem import BalancingProblem

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def keep(weights: Sequence[float], packing: Packing, num_gpus: int) -> Packing:
    return packing


def no_count_refinement(loads: Sequence[float], counts: Sequence[int]) -> list[int]:
    return list(counts)


def arrival_order(packing: Packing, weights: Sequence[float]) -> list[int]:
    return packing.rank


@dataclass(frozen=True)
class Port:
    """The reference's pipeline, step by step, each step replaceable."""

    seed: bool = True
    group_sum: Callable[[Sequence[float]], float] = sum_left_to_right
    split: Callable[[Sequence[float], int], Packing] = pack_balanced
    fill: Callable[[Sequence[float], int], list[int]] = water_fill
    refine_a: Callable[[Sequence[float], Sequence[int]], list[int]] = refine_counts
    replicate: Callable[[Sequence[float], int], tuple[list[int], list[int]]] = replicate_greedy
    pack: Callable[[Sequence[float], Sequence[int], int], Packing] = pack_diverse
    refine_b: Callable[[Sequence[float], Packing, int], Packing] = refine_swap
    order: Callable[[Packing, Sequence[float]], list[int]] = arrival_order
    numbering: str = "layout"  # or "ascending-slots"

    def __call__(self, weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
        problem = BalancingProblem(weight, r, g, n, p)
        phy2log = np.full((problem.num_layers, r), -1, dtype=np.int64)
        log2phy = np.full(
            (problem.num_layers, problem.num_experts, r - problem.num_experts + 1), -1
        )
        groups, nodes = problem.packing_groups, problem.packing_nodes
        size, slots, gpus = problem.group_size, problem.slots_per_node, problem.gpus_per_node
        cap = problem.slots_per_gpu
        for layer in range(problem.num_layers):
            row = problem.loads[layer].tolist()
            group_loads = [self.group_sum(row[k * size : (k + 1) * size]) for k in range(groups)]
            split = self.split(group_loads, nodes)
            for node in range(nodes):
                on_node = sorted(
                    (k for k in range(groups) if split.pack[k] == node), key=lambda k: split.rank[k]
                )
                experts = [e for k in on_node for e in range(k * size, (k + 1) * size)]
                loads = [row[e] for e in experts]
                if self.seed:
                    counts = self.refine_a(loads, self.fill(loads, slots))
                    layout = layout_by_expert(counts)
                else:
                    counts, layout = self.replicate(loads, slots)
                weights = [loads[i] / counts[i] for i in layout]
                packing = self.refine_b(weights, self.pack(weights, layout, gpus), gpus)
                ranks = self.order(packing, weights)
                for j, (label, replica) in enumerate(
                    zip(layout, replica_ranks(layout), strict=True)
                ):
                    slot = node * slots + packing.pack[j] * cap + ranks[j]
                    phy2log[layer, slot] = experts[label]
                    log2phy[layer, experts[label], replica] = slot
        if self.numbering == "ascending-slots":
            log2phy, _ = placement_from_phy2log(phy2log, problem.num_experts)
        logcnt = np.stack([np.bincount(row, minlength=problem.num_experts) for row in phy2log])
        return torch.from_numpy(phy2log), torch.from_numpy(log2phy), torch.from_numpy(logcnt)


# The variants of single steps.


def top_up_higher_index_first(loads: Sequence[float], num_slots: int) -> list[int]:
    """Water-filling whose top-ups serve the HIGHER index among equal ``w/c``."""
    n = len(loads)
    if num_slots == n or all(w == 0 for w in loads):
        return water_fill(loads, num_slots)
    counts = bisected_counts(loads, num_slots)
    left = num_slots - sum(counts)
    while left > 0:
        take = min(left, n)
        for i in sorted(range(n), key=lambda i: (-(loads[i] / counts[i]), -i))[:take]:
            counts[i] += 1
        left -= take
    return counts


def refine_counts_without_margin(loads: Sequence[float], counts: Sequence[int]) -> list[int]:
    """Refinement A keeping any move that lowers the peak at all (the reference asks for
    more than 1e-9)."""
    n = len(loads)
    result = list(counts)
    if n <= 1:
        return result
    ratio = [w / c for w, c in zip(loads, counts, strict=True)]
    best = max(ratio)
    donors = sorted((i for i in range(n) if counts[i] > 1), key=lambda i: (-ratio[i], i))
    receivers = sorted(range(n), key=lambda i: (ratio[i], i))
    chosen: tuple[int, int] | None = None
    for donor in donors[:2]:
        for receiver in receivers[:2]:
            if donor != receiver:
                trial = list(counts)
                trial[donor] -= 1
                trial[receiver] += 1
                peak = max(w / c for w, c in zip(loads, trial, strict=True))
                if peak < best:
                    chosen, best = (donor, receiver), peak
    if chosen is not None:
        result[chosen[0]] -= 1
        result[chosen[1]] += 1
    return result


def split_by_group_index(group_loads: Sequence[float], num_nodes: int) -> Packing:
    """Groups onto nodes in index order, ignoring their loads (ranks on a node as the
    reference's arrival order would give them: by descending load)."""
    per_node = len(group_loads) // num_nodes
    pack = [k // per_node for k in range(len(group_loads))]
    rank = [-1] * len(group_loads)
    for node in range(num_nodes):
        members = [k for k in range(len(group_loads)) if pack[k] == node]
        for position, k in enumerate(sorted(members, key=lambda k: (-group_loads[k], k))):
            rank[k] = position
    return Packing(pack=pack, rank=rank)


def pack_without_labels(weights: Sequence[float], labels: Sequence[int], num_gpus: int) -> Packing:
    """The baseline's balanced packing in place of the diverse greedy."""
    return pack_balanced(weights, num_gpus)


def pack_diverse_last_gpu(
    weights: Sequence[float], labels: Sequence[int], num_gpus: int
) -> Packing:
    """The diverse greedy with GPU ties (equal held, load and count) to the HIGHER index."""
    cap = len(weights) // num_gpus
    if cap == 1:
        return pack_diverse(weights, labels, num_gpus)
    load = [0.0] * num_gpus
    size = [0] * num_gpus
    held: list[dict[int, int]] = [{} for _ in range(num_gpus)]
    pack = [-1] * len(weights)
    rank = [-1] * len(weights)
    for item in sorted(range(len(weights)), key=lambda j: (-weights[j], j)):
        label = labels[item]
        target = min(
            (g for g in range(num_gpus) if size[g] < cap),
            key=lambda g: (held[g].get(label, 0), load[g], size[g], -g),
        )
        pack[item], rank[item] = target, size[target]
        load[target] += weights[item]
        size[target] += 1
        held[target][label] = held[target].get(label, 0) + 1
    return Packing(pack=pack, rank=rank)


def pack_balanced_equal_loads_last(weights: Sequence[float], num_packs: int) -> Packing:
    """Balanced packing visiting equal weights HIGHER index first (as an unstable sort may)."""
    count = len(weights)
    per_pack = count // num_packs
    if per_pack == 1:
        return pack_balanced(weights, num_packs)
    load = [0.0] * num_packs
    size = [0] * num_packs
    pack = [-1] * count
    rank = [-1] * count
    for item in sorted(range(count), key=lambda j: (-weights[j], -j)):
        target = min(
            (q for q in range(num_packs) if size[q] < per_pack), key=lambda q: (load[q], q)
        )
        pack[item], rank[item] = target, size[target]
        load[target] += weights[item]
        size[target] += 1
    return Packing(pack=pack, rank=rank)


def replicas_reversed(packing: Packing, weights: Sequence[float]) -> list[int]:
    """Slots inside each GPU in the reverse of arrival order."""
    cap = max(packing.rank) + 1
    return [cap - 1 - r for r in packing.rank]


def float32_sum(values: Sequence[float]) -> float:
    """A group's load summed in float32, as a port that reads the weights with
    ``weight.float()`` does."""
    total = np.float32(0.0)
    for value in values:
        total = np.float32(total + np.float32(value))
    return float(total)


REFERENCE = Port()
BASELINE = Port(seed=False, pack=pack_without_labels, refine_a=no_count_refinement, refine_b=keep)

top_up_tie = replace(REFERENCE, fill=top_up_higher_index_first)
split_in_index_order = replace(REFERENCE, split=split_by_group_index)
packing_without_labels = replace(REFERENCE, pack=pack_without_labels)
gpu_tie_last = replace(REFERENCE, pack=pack_diverse_last_gpu)
refinement_a_without_margin = replace(REFERENCE, refine_a=refine_counts_without_margin)
without_refinement_b = replace(REFERENCE, refine_b=keep)
slots_reversed = replace(REFERENCE, order=replicas_reversed)
numbered_by_slot = replace(REFERENCE, numbering="ascending-slots")
baseline_equal_loads_last = replace(
    BASELINE,
    pack=lambda weights, labels, gpus: pack_balanced_equal_loads_last(weights, gpus),
)
baseline_float32_groups = replace(BASELINE, group_sum=float32_sum)


def phy2log_only(port: Port) -> Callable[..., object]:
    """The port returning ``phy2log`` alone (the fidelity mode derives the rest)."""

    def call(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
        return port(weight, r, g, n, p)[0]

    return call


# Ports that balance worse than the reference only on part of the input space, and one
# that differs from the baseline only where balance cannot tell.


def spares_to_first_experts(loads: Sequence[float], num_slots: int) -> list[int]:
    """Replica counts that ignore the loads: the spare slots go round-robin from the
    first expert on."""
    n = len(loads)
    spare = num_slots - n
    return [1 + spare // n + (1 if i < spare % n else 0) for i in range(n)]


blind_counts = replace(REFERENCE, fill=spares_to_first_experts, refine_a=no_count_refinement)


def worse_where(
    good: Port, bad: Port, wrong: Callable[[BalancingProblem, int], bool]
) -> Callable[..., Outputs]:
    """``good``'s placement, except on the layers where ``wrong(problem, layer)``, which
    get ``bad``'s."""

    def call(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
        problem = BalancingProblem(weight, r, g, n, p)
        outputs = [t.clone() for t in good(weight, r, g, n, p)]
        worse = bad(weight, r, g, n, p)
        for layer in range(problem.num_layers):
            if wrong(problem, layer):
                for mine, theirs in zip(outputs, worse, strict=True):
                    mine[layer] = theirs[layer]
        return outputs[0], outputs[1], outputs[2]

    return call


worse_under_global_policy = worse_where(
    REFERENCE, blind_counts, lambda problem, layer: problem.policy.value == "global"
)
worse_on_later_layers = worse_where(REFERENCE, blind_counts, lambda problem, layer: layer > 0)
worse_on_four_gpu_multiples = worse_where(
    REFERENCE,
    blind_counts,
    lambda problem, layer: problem.num_gpus % 4 == 0 and problem.slots_per_gpu >= 2,
)
baseline_ties_numbering_slots = replace(
    baseline_equal_loads_last, order=replicas_reversed, numbering="ascending-slots"
)
