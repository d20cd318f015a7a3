"""The balancer's steps, one function each, on one (layer, node) row at a time.

Plain Python on lists of float64 values, written to be read next to
``docs/specification.md``: every tie-break named there is spelled out here. Sums are
accumulated left to right in the order the page describes, so that a faster
implementation can reproduce them bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spec.refinements import GAIN_TOLERANCE

BISECTION_ROUNDS = 40


@dataclass(frozen=True)
class Packing:
    """Where each item went: ``pack[j]`` and its arrival rank ``rank[j]`` in that pack."""

    pack: list[int]
    rank: list[int]


def sum_left_to_right(values: Sequence[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total


def pack_balanced(weights: Sequence[float], num_packs: int) -> Packing:
    """Balanced packing: exactly ``len(weights) / num_packs`` items in every pack.

    With one item per pack, item ``j`` goes to pack ``j``. Otherwise items are visited by
    descending weight (ties: lower index first), each placed on the lightest pack that
    still has room (ties: lower pack index); its rank is its arrival order there.
    Used for groups onto nodes (step 1) and, in the baseline, replicas onto GPUs.
    """
    count = len(weights)
    per_pack = count // num_packs
    if per_pack == 1:
        return Packing(pack=list(range(count)), rank=[0] * count)
    load = [0.0] * num_packs
    size = [0] * num_packs
    pack = [-1] * count
    rank = [-1] * count
    for item in sorted(range(count), key=lambda j: (-weights[j], j)):
        target = min(
            (p for p in range(num_packs) if size[p] < per_pack), key=lambda p: (load[p], p)
        )
        pack[item], rank[item] = target, size[target]
        load[target] += weights[item]
        size[target] += 1
    return Packing(pack=pack, rank=rank)


def group_loads(row: Sequence[float], num_groups: int) -> list[float]:
    """Step 1's keys: each group's load, its experts' loads summed left to right."""
    size = len(row) // num_groups
    return [sum_left_to_right(row[g * size : (g + 1) * size]) for g in range(num_groups)]


def renumber_node_local(packing: Packing, num_nodes: int, group_size: int) -> list[list[int]]:
    """Step 1's renumbering: the global expert ids of each node in node-local order, from
    the packing of groups onto nodes: by the arrival rank of their group on the node,
    then by position inside the group."""
    local: list[list[int]] = [[] for _ in range(num_nodes)]
    for group in sorted(range(len(packing.pack)), key=lambda g: (packing.pack[g], packing.rank[g])):
        local[packing.pack[group]].extend(range(group * group_size, (group + 1) * group_size))
    return local


def counts_at_threshold(loads: Sequence[float], threshold: float) -> list[int]:
    """``c_i(T) = max(1, ceil(w_i / T))``: the fewest replicas keeping each below ``T``."""
    return [max(1, math.ceil(w / threshold)) for w in loads]


def bisected_counts(loads: Sequence[float], num_slots: int) -> list[int]:
    """Water-filling before its top-ups: the counts at the upper end of a threshold ``T``
    bisected for 40 rounds on ``[0, max(max_w, 1)]`` (``sum c(T) <= num_slots`` there)."""
    low, high = 0.0, max(max(loads), 1.0)
    for _ in range(BISECTION_ROUNDS):
        middle = (low + high) / 2
        if sum(counts_at_threshold(loads, middle)) <= num_slots:
            high = middle
        else:
            low = middle
    return counts_at_threshold(loads, high)


def water_fill(loads: Sequence[float], num_slots: int) -> list[int]:
    """Replica counts for one row: ``c_i >= 1`` and ``sum c_i == num_slots``.

    Bisects a threshold ``T`` for 40 rounds on ``[0, max(max_w, 1)]`` and takes the
    counts at the upper end (always feasible), then hands out the slots left over in
    rounds: one more replica to each of the ``min(left, n)`` experts with the highest
    ``w_i / c_i`` (ties: lower index). Rows with one slot per expert get 1 each; rows
    with no load spread the slots evenly, the first experts taking the remainder.
    """
    n = len(loads)
    if num_slots == n:
        return [1] * n
    if all(w == 0 for w in loads):
        spare = num_slots - n
        return [1 + spare // n + (1 if i < spare % n else 0) for i in range(n)]
    counts = bisected_counts(loads, num_slots)
    left = num_slots - sum(counts)
    while left > 0:
        take = min(left, n)
        by_replica_load = sorted(range(n), key=lambda i: (-(loads[i] / counts[i]), i))
        for i in by_replica_load[:take]:
            counts[i] += 1
        left -= take
    return counts


def refine_counts(loads: Sequence[float], counts: Sequence[int]) -> list[int]:
    """Refinement A: at most one replica moved from a donor to a receiver.

    Donors are the (up to) two experts with ``c_i > 1`` and the highest ``w_i / c_i``;
    receivers the (up to) two with the lowest ``w_i / c_i`` (ties: lower index). Every
    donor/receiver pair in that order is tried; a pair is kept when its peak is lower
    than the best so far by more than ``GAIN_TOLERANCE``. Keeps ``sum c`` and
    ``c >= 1``; never raises ``max_i w_i / c_i``.
    """
    n = len(loads)
    result = list(counts)
    if n <= 1:
        return result
    replica_load = [w / c for w, c in zip(loads, counts, strict=True)]
    best = max(replica_load)
    donors = sorted((i for i in range(n) if counts[i] > 1), key=lambda i: (-replica_load[i], i))
    receivers = sorted(range(n), key=lambda i: (replica_load[i], i))
    chosen: tuple[int, int] | None = None
    for donor in donors[:2]:
        for receiver in receivers[:2]:
            if donor == receiver:
                continue
            trial = list(counts)
            trial[donor] -= 1
            trial[receiver] += 1
            peak = max(w / c for w, c in zip(loads, trial, strict=True))
            if peak + GAIN_TOLERANCE < best:
                chosen, best = (donor, receiver), peak
    if chosen is not None:
        donor, receiver = chosen
        result[donor] -= 1
        result[receiver] += 1
    return result


def replicate_greedy(loads: Sequence[float], num_slots: int) -> tuple[list[int], list[int]]:
    """The baseline's replication: one extra replica at a time to the hottest expert.

    Starts from one replica each; every extra replica goes to the expert with the
    highest ``w_i / c_i`` (ties: lower index). Returns the counts and the layout in
    creation order: the label of each replica (the ``n`` originals first).
    """
    n = len(loads)
    counts = [1] * n
    layout = list(range(n))
    for _ in range(num_slots - n):
        hottest = min(range(n), key=lambda i: (-(loads[i] / counts[i]), i))
        layout.append(hottest)
        counts[hottest] += 1
    return counts, layout


def replica_ranks(layout: Sequence[int]) -> list[int]:
    """For each replica of a layout, how many replicas of its expert come before it (its
    index in ``log2phy``)."""
    seen: dict[int, int] = {}
    ranks = []
    for label in layout:
        ranks.append(seen.get(label, 0))
        seen[label] = ranks[-1] + 1
    return ranks


def slots_of(packing: Packing, node: int, slots_per_node: int, cap: int) -> list[int]:
    """Step 4: the slot of each replica of a node, ``node * S + gpu * cap + rank``."""
    return [
        node * slots_per_node + gpu * cap + rank
        for gpu, rank in zip(packing.pack, packing.rank, strict=True)
    ]


def layout_by_expert(counts: Sequence[int]) -> list[int]:
    """The reference layout: all replicas of expert 0, then of expert 1, and so on."""
    return [expert for expert, count in enumerate(counts) for _ in range(count)]


def pack_diverse(weights: Sequence[float], labels: Sequence[int], num_gpus: int) -> Packing:
    """Diverse greedy: replicas onto GPUs of ``len / num_gpus`` slots each.

    With one slot per GPU, replica ``j`` goes to GPU ``j``. Otherwise replicas are visited
    by descending weight (ties: lower index), each placed on the GPU with room that
    minimises (replicas with the same label already there, load, replica count, index);
    its rank is its arrival order there.
    """
    count = len(weights)
    cap = count // num_gpus
    if cap == 1:
        return Packing(pack=list(range(count)), rank=[0] * count)
    load = [0.0] * num_gpus
    size = [0] * num_gpus
    held: list[dict[int, int]] = [{} for _ in range(num_gpus)]
    pack = [-1] * count
    rank = [-1] * count
    for item in sorted(range(count), key=lambda j: (-weights[j], j)):
        label = labels[item]
        target = min(
            (g for g in range(num_gpus) if size[g] < cap),
            key=lambda g: (held[g].get(label, 0), load[g], size[g], g),
        )
        pack[item], rank[item] = target, size[target]
        load[target] += weights[item]
        size[target] += 1
        held[target][label] = held[target].get(label, 0) + 1
    return Packing(pack=pack, rank=rank)


def refine_swap(weights: Sequence[float], packing: Packing, num_gpus: int) -> Packing:
    """Refinement B: at most one exchange of two replicas between the heaviest GPU and
    one of the two lightest.

    GPU loads are summed over each GPU's members in ascending replica index. The (up
    to) two heaviest members of the heaviest GPU ``h`` are tried against the (up to) two
    lightest members of each light GPU; the exchange with the lowest resulting peak is
    kept if it beats the current peak by more than ``GAIN_TOLERANCE`` (first found on
    ties). Keeps ``cap`` replicas per GPU; only ``h`` and the chosen GPU are renumbered.
    Labels are not consulted: the exchange may put two replicas of one expert together.
    """
    count = len(weights)
    cap = count // num_gpus
    result = Packing(pack=list(packing.pack), rank=list(packing.rank))
    if num_gpus < 2 or cap < 2:
        return result
    members: list[list[int]] = [[] for _ in range(num_gpus)]
    for item in range(count):
        members[packing.pack[item]].append(item)
    load = [sum_left_to_right([weights[j] for j in m]) for m in members]

    heavy = min(range(num_gpus), key=lambda g: (-load[g], g))
    peak = load[heavy]
    lights = sorted((g for g in range(num_gpus) if g != heavy), key=lambda g: (load[g], g))[:2]
    heavy_picks = sorted(range(cap), key=lambda p: (-weights[members[heavy][p]], p))[:2]

    best: tuple[float, int, int, int] | None = None  # (new peak, light gpu, pos in h, pos in l)
    for light in lights:
        if not load[heavy] > load[light]:
            continue
        light_picks = sorted(range(cap), key=lambda p: (weights[members[light][p]], p))[:2]
        other = max(
            (load[g] for g in range(num_gpus) if g not in (heavy, light)), default=-math.inf
        )
        for pa in heavy_picks:
            for pb in light_picks:
                wa, wb = weights[members[heavy][pa]], weights[members[light][pb]]
                new_heavy = load[heavy] - wa + wb
                new_light = load[light] - wb + wa
                new_peak = max(new_heavy, new_light, other)
                if new_peak + GAIN_TOLERANCE < peak and (best is None or new_peak < best[0]):
                    best = (new_peak, light, pa, pb)
    if best is None:
        return result
    _, light, pa, pb = best
    a, b = members[heavy][pa], members[light][pb]
    members[heavy][pa], members[light][pb] = b, a
    for gpu in (heavy, light):
        for position, item in enumerate(members[gpu]):
            result.pack[item], result.rank[item] = gpu, position
    return result


def refine_swap_lists(
    weights: Sequence[float], gpu: Sequence[int], rank: Sequence[int], num_gpus: int
) -> tuple[list[int], list[int]]:
    """``refine_swap`` on plain lists: the signature the gate checks refinements B with."""
    result = refine_swap(weights, Packing(pack=list(gpu), rank=list(rank)), num_gpus)
    return result.pack, result.rank
