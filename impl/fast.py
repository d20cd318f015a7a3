"""The fast balancer: the same steps as ``impl.steps``, compiled, on all rows at once.

Every kernel takes a batch of rows (one per (layer, node), or one per layer for step 1)
and repeats the reference's arithmetic operation for operation, in the same order, so
the output is identical to the reference's element for element (float64 without
fast-math: no reassociation). Ties are broken by stable sorts and strict comparisons,
which give the lower index as the reference's ``sorted``/``min`` do.

Compiled with numba (``cache=True``: the first call in a fresh checkout compiles for a
few seconds, later processes load the cache).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from spec.refinements import GAIN_TOLERANCE

BISECTION_ROUNDS = 40

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

F = TypeVar("F", bound=Callable[..., Any])


def compiled(function: F) -> F:
    """``numba.njit`` with an on-disk cache, keeping the function's type for mypy."""
    return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(function))


@compiled
def sort_descending(values: FloatArray, order: IntArray) -> None:
    """Fill ``order`` with indices by descending value, ties by lower index.

    Short rows use a stable insertion sort, which allocates nothing; long ones a
    stable merge sort.
    """
    if values.shape[0] > 96:
        order[:] = np.argsort(-values, kind="mergesort")
        return
    for i in range(values.shape[0]):
        value = values[i]
        j = i
        while j > 0 and values[order[j - 1]] < value:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i


@compiled
def two_extremes(values: FloatArray, eligible: BoolArray, highest: bool) -> tuple[int, int]:
    """The (up to) two eligible indices with the highest (or lowest) values, ties by
    lower index; -1 where there are fewer than two."""
    first, second = -1, -1
    for i in range(values.shape[0]):
        if not eligible[i]:
            continue
        value = values[i]
        if first < 0 or (value > values[first] if highest else value < values[first]):
            first, second = i, first
        elif second < 0 or (value > values[second] if highest else value < values[second]):
            second = i
    return first, second


@compiled
def one_per_pack(pack: IntArray, rank: IntArray, row: int) -> None:
    """With one item per pack, item ``j`` goes to pack ``j`` at rank 0."""
    for j in range(pack.shape[1]):
        pack[row, j] = j
        rank[row, j] = 0


@compiled
def pack_balanced_rows(weights: FloatArray, num_packs: int) -> tuple[IntArray, IntArray]:
    """``impl.steps.pack_balanced`` on every row of ``weights``."""
    rows, count = weights.shape
    per_pack = count // num_packs
    pack = np.empty((rows, count), dtype=np.int64)
    rank = np.empty((rows, count), dtype=np.int64)
    load = np.empty(num_packs, dtype=np.float64)
    size = np.empty(num_packs, dtype=np.int64)
    queue = np.empty(num_packs, dtype=np.int64)
    order = np.empty(count, dtype=np.int64)
    for b in range(rows):
        if per_pack == 1:
            one_per_pack(pack, rank, b)
            continue
        load[:] = 0.0
        size[:] = 0
        sort_descending(weights[b], order)
        # Packs with room, kept ordered by (load, index): the target is the first.
        for p in range(num_packs):
            queue[p] = p
        open_packs = num_packs
        for item in order:
            target = queue[0]
            pack[b, item] = target
            rank[b, item] = size[target]
            load[target] += weights[b, item]
            size[target] += 1
            if size[target] == per_pack:
                open_packs -= 1
                for q in range(open_packs):
                    queue[q] = queue[q + 1]
                continue
            q = 0
            while q + 1 < open_packs and (
                load[queue[q + 1]] < load[target]
                or (load[queue[q + 1]] == load[target] and queue[q + 1] < target)
            ):
                queue[q] = queue[q + 1]
                q += 1
            queue[q] = target
    return pack, rank


@compiled
def group_loads_rows(loads: FloatArray, num_groups: int) -> FloatArray:
    """Each group's load, summed left to right as the reference does."""
    rows, experts = loads.shape
    size = experts // num_groups
    result = np.zeros((rows, num_groups), dtype=np.float64)
    for b in range(rows):
        for g in range(num_groups):
            total = 0.0
            for e in range(g * size, (g + 1) * size):
                total += loads[b, e]
            result[b, g] = total
    return result


@compiled
def slots_needed(row: FloatArray, threshold: float, num_slots: int) -> int:
    """``sum_i max(1, ceil(w_i / T))`` as the reference computes it, stopping once it
    exceeds ``num_slots`` (then any value above it is as good)."""
    total = 0
    for w in row:
        # w <= T gives w / T <= 1 (rounding is monotone): one replica, no division needed.
        total += math.ceil(w / threshold) if w > threshold else 1
        if total > num_slots:
            break
    return total


@compiled
def feasible_from(row: FloatArray, num_slots: int) -> float:
    """The smallest float ``T > 0`` with ``slots_needed(T) <= S``, or -1 if not found.

    ``slots_needed`` is non-increasing in ``T`` (correctly rounded division is monotone),
    so the bisection's test ``slots_needed(mid) <= S`` is exactly ``mid >= T_min``. The
    search starts at the peak of greedy-optimal counts (one extra replica at a time to
    the hottest expert), which lies within a few float steps of ``T_min``, and walks
    one float at a time; it gives up after 64 steps or when the greedy is too long.
    """
    n = row.shape[0]
    if num_slots - n > 4 * n + 64:
        return -1.0
    counts = np.ones(n, dtype=np.int64)
    replica_load = row.copy()
    for _ in range(num_slots - n):
        hottest = 0
        for i in range(1, n):
            if replica_load[i] > replica_load[hottest]:
                hottest = i
        counts[hottest] += 1
        replica_load[hottest] = row[hottest] / counts[hottest]
    threshold: float = replica_load.max()
    if not threshold > 0.0:
        return -1.0
    if slots_needed(row, threshold, num_slots) <= num_slots:
        for _ in range(64):
            lower: float = np.nextafter(threshold, 0.0)
            if not lower > 0.0 or slots_needed(row, lower, num_slots) > num_slots:
                return threshold
            threshold = lower
        return -1.0
    for _ in range(64):
        threshold = np.nextafter(threshold, np.inf)
        if slots_needed(row, threshold, num_slots) <= num_slots:
            return threshold
    return -1.0


@compiled
def water_fill_rows(loads: FloatArray, num_slots: int) -> IntArray:
    """``impl.steps.water_fill`` on every row.

    The 40 bisection rounds take the same steps as the reference's, but each test
    ``slots_needed(mid) <= S`` is answered by comparing ``mid`` with the smallest
    feasible threshold (``feasible_from``), computed once per row; where that search
    gives up, every round evaluates ``slots_needed`` as the reference does.
    """
    rows, n = loads.shape
    counts = np.ones((rows, n), dtype=np.int64)
    if num_slots == n:
        return counts
    replica_load = np.empty(n, dtype=np.float64)
    order = np.empty(n, dtype=np.int64)
    for b in range(rows):
        row = loads[b]
        if row.max() == 0.0:
            spare = num_slots - n
            for i in range(n):
                counts[b, i] = 1 + spare // n + (1 if i < spare % n else 0)
            continue
        smallest_feasible = feasible_from(row, num_slots)
        low, high = 0.0, max(row.max(), 1.0)
        for _ in range(BISECTION_ROUNDS):
            middle = (low + high) / 2
            if smallest_feasible > 0.0:
                feasible = middle >= smallest_feasible
            else:
                feasible = slots_needed(row, middle, num_slots) <= num_slots
            if feasible:
                high = middle
            else:
                low = middle
        for i in range(n):
            counts[b, i] = max(1, math.ceil(row[i] / high))
        left = num_slots - counts[b].sum()
        while left > 0:
            take = min(left, n)
            for i in range(n):
                replica_load[i] = row[i] / counts[b, i]
            sort_descending(replica_load, order)
            for i in order[:take]:
                counts[b, i] += 1
            left -= take
    return counts


@compiled
def peak_after_move(
    loads: FloatArray,
    counts: IntArray,
    replica_load: FloatArray,
    top3: tuple[int, int, int],
    donor: int,
    receiver: int,
) -> float:
    """``max_i w_i / c'_i`` after moving one replica from ``donor`` to ``receiver``.

    Experts other than the two keep ``w_i / c_i``, so their maximum is the first of the
    three highest replica loads that is neither; the values equal the reference's.
    """
    peak: float = max(loads[donor] / (counts[donor] - 1), loads[receiver] / (counts[receiver] + 1))
    for i in top3:
        if i >= 0 and i != donor and i != receiver:
            return max(peak, float(replica_load[i]))
    return peak


@compiled
def refine_counts_rows(loads: FloatArray, counts: IntArray) -> tuple[IntArray, BoolArray]:
    """``impl.steps.refine_counts`` on every row; also where it moved a replica."""
    rows, n = loads.shape
    result = counts.copy()
    moved = np.zeros(rows, dtype=np.bool_)
    if n != 2:
        # With one expert there is no pair; with three or more the hottest expert is never
        # a receiver, so no move can lower the peak (proof in docs/ANSWERS.md, question 1;
        # tests/test_properties.py checks it on the reference): the reference returns the
        # counts unchanged, and so does this.
        return result, moved
    replica_load = np.empty(n, dtype=np.float64)
    can_give = np.empty(n, dtype=np.bool_)
    everyone = np.ones(n, dtype=np.bool_)
    for b in range(rows):
        for i in range(n):
            replica_load[i] = loads[b, i] / counts[b, i]
            can_give[i] = counts[b, i] > 1
        best = replica_load.max()
        donors = two_extremes(replica_load, can_give, True)
        receivers = two_extremes(replica_load, everyone, False)
        first, second = two_extremes(replica_load, everyone, True)
        everyone[first] = False
        if second >= 0:
            everyone[second] = False
        third = two_extremes(replica_load, everyone, True)[0]
        everyone[first] = True
        if second >= 0:
            everyone[second] = True
        top3 = (first, second, third)
        chosen_donor, chosen_receiver = -1, -1
        for d in donors:
            for r in receivers:
                if d < 0 or r < 0 or d == r:
                    continue
                peak = peak_after_move(loads[b], counts[b], replica_load, top3, d, r)
                if peak + GAIN_TOLERANCE < best:
                    chosen_donor, chosen_receiver, best = d, r, peak
        if chosen_donor >= 0:
            result[b, chosen_donor] -= 1
            result[b, chosen_receiver] += 1
            moved[b] = True
    return result, moved


@compiled
def replicate_greedy_rows(loads: FloatArray, num_slots: int) -> tuple[IntArray, IntArray]:
    """``impl.steps.replicate_greedy`` on every row: counts and creation-order labels."""
    rows, n = loads.shape
    counts = np.ones((rows, n), dtype=np.int64)
    layout = np.empty((rows, num_slots), dtype=np.int64)
    for b in range(rows):
        for i in range(n):
            layout[b, i] = i
        for j in range(n, num_slots):
            hottest = 0
            hottest_load = loads[b, 0] / counts[b, 0]
            for i in range(1, n):
                value = loads[b, i] / counts[b, i]
                if value > hottest_load:
                    hottest, hottest_load = i, value
            layout[b, j] = hottest
            counts[b, hottest] += 1
    return counts, layout


@compiled
def layout_by_expert_rows(counts: IntArray, num_slots: int) -> IntArray:
    rows, n = counts.shape
    layout = np.empty((rows, num_slots), dtype=np.int64)
    for b in range(rows):
        j = 0
        for i in range(n):
            for _ in range(counts[b, i]):
                layout[b, j] = i
                j += 1
    return layout


@compiled
def replica_weights_rows(loads: FloatArray, counts: IntArray, layout: IntArray) -> FloatArray:
    rows, slots = layout.shape
    weights = np.empty((rows, slots), dtype=np.float64)
    for b in range(rows):
        for j in range(slots):
            label = layout[b, j]
            weights[b, j] = loads[b, label] / counts[b, label]
    return weights


@compiled
def later_gpu_first(load: FloatArray, size: IntArray, g: int, h: int) -> bool:
    """Whether GPU ``g`` comes before GPU ``h`` in (load, size, index) order."""
    if load[g] != load[h]:
        return bool(load[g] < load[h])
    if size[g] != size[h]:
        return bool(size[g] < size[h])
    return g < h


@compiled
def pack_diverse_rows(
    weights: FloatArray, labels: IntArray, num_gpus: int, num_labels: int
) -> tuple[IntArray, IntArray]:
    """``impl.steps.pack_diverse`` on every row."""
    rows, count = weights.shape
    cap = count // num_gpus
    pack = np.empty((rows, count), dtype=np.int64)
    rank = np.empty((rows, count), dtype=np.int64)
    load = np.empty(num_gpus, dtype=np.float64)
    size = np.empty(num_gpus, dtype=np.int64)
    held = np.empty((num_labels, num_gpus), dtype=np.int64)
    queue = np.empty(num_gpus, dtype=np.int64)
    order = np.empty(count, dtype=np.int64)
    for b in range(rows):
        if cap == 1:
            one_per_pack(pack, rank, b)
            continue
        load[:] = 0.0
        size[:] = 0
        held[:, :] = 0
        sort_descending(weights[b], order)
        # GPUs with room, kept ordered by (load, size, index). The target is the first
        # of them holding the fewest replicas with the item's label.
        for g in range(num_gpus):
            queue[g] = g
        open_gpus = num_gpus
        for item in order:
            label = labels[b, item]
            same = held[label]
            at, fewest = 0, same[queue[0]]
            q = 1
            while fewest > 0 and q < open_gpus:
                if same[queue[q]] < fewest:
                    at, fewest = q, same[queue[q]]
                q += 1
            target = queue[at]
            pack[b, item] = target
            rank[b, item] = size[target]
            load[target] += weights[b, item]
            size[target] += 1
            same[target] += 1
            if size[target] == cap:
                open_gpus -= 1
                for q in range(at, open_gpus):
                    queue[q] = queue[q + 1]
                continue
            while at + 1 < open_gpus and later_gpu_first(load, size, queue[at + 1], target):
                queue[at] = queue[at + 1]
                at += 1
            queue[at] = target
    return pack, rank


@compiled
def refine_swap_rows(
    weights: FloatArray, pack: IntArray, rank: IntArray, num_gpus: int
) -> tuple[IntArray, IntArray, BoolArray]:
    """``impl.steps.refine_swap`` on every row; also where it exchanged two replicas."""
    rows, count = weights.shape
    cap = count // num_gpus
    new_pack, new_rank = pack.copy(), rank.copy()
    swapped = np.zeros(rows, dtype=np.bool_)
    if num_gpus < 2 or cap < 2:
        return new_pack, new_rank, swapped
    members = np.empty((num_gpus, cap), dtype=np.int64)
    filled = np.empty(num_gpus, dtype=np.int64)
    load = np.empty(num_gpus, dtype=np.float64)
    member_weights = np.empty(cap, dtype=np.float64)
    not_heavy = np.empty(num_gpus, dtype=np.bool_)
    every_member = np.ones(cap, dtype=np.bool_)
    for b in range(rows):
        filled[:] = 0
        for item in range(count):
            g = pack[b, item]
            members[g, filled[g]] = item
            filled[g] += 1
        for g in range(num_gpus):
            total = 0.0
            for p in range(cap):
                total += weights[b, members[g, p]]
            load[g] = total
        heavy = 0
        for g in range(1, num_gpus):
            if load[g] > load[heavy]:
                heavy = g
        peak = load[heavy]
        not_heavy[:] = True
        not_heavy[heavy] = False
        lights = two_extremes(load, not_heavy, False)
        for p in range(cap):
            member_weights[p] = weights[b, members[heavy, p]]
        heavy_picks = two_extremes(member_weights, every_member, True)

        found = False
        best_peak, best_light, best_pa, best_pb = 0.0, -1, -1, -1
        for light in lights:
            if light < 0 or not load[heavy] > load[light]:
                continue
            for p in range(cap):
                member_weights[p] = weights[b, members[light, p]]
            light_picks = two_extremes(member_weights, every_member, False)
            other = -math.inf
            for g in range(num_gpus):
                if g != heavy and g != light:
                    other = max(other, load[g])
            for pa in heavy_picks:
                for pb in light_picks:
                    wa = weights[b, members[heavy, pa]]
                    wb = weights[b, members[light, pb]]
                    new_heavy = load[heavy] - wa + wb
                    new_light = load[light] - wb + wa
                    new_peak = max(new_heavy, new_light, other)
                    if new_peak + GAIN_TOLERANCE < peak and (not found or new_peak < best_peak):
                        found = True
                        best_peak, best_light, best_pa, best_pb = new_peak, light, pa, pb
        if not found:
            continue
        a = members[heavy, best_pa]
        members[heavy, best_pa] = members[best_light, best_pb]
        members[best_light, best_pb] = a
        for g in (heavy, best_light):
            for p in range(cap):
                new_pack[b, members[g, p]] = g
                new_rank[b, members[g, p]] = p
        swapped[b] = True
    return new_pack, new_rank, swapped


@compiled
def node_local_experts_rows(
    group_pack: IntArray, group_rank: IntArray, num_nodes: int, group_size: int
) -> IntArray:
    """Step 1's renumbering: ``[L * N, E / N]``, the global ids of each (layer, node)
    row in node-local order (group's rank on the node, then position in the group)."""
    layers, groups = group_pack.shape
    per_node_groups = groups // num_nodes
    per_node = per_node_groups * group_size
    result = np.empty((layers * num_nodes, per_node), dtype=np.int64)
    for layer in range(layers):
        for g in range(groups):
            row = layer * num_nodes + group_pack[layer, g]
            first = group_rank[layer, g] * group_size
            for pos in range(group_size):
                result[row, first + pos] = g * group_size + pos
    return result


@compiled
def gather_rows(loads: FloatArray, row_experts: IntArray, num_nodes: int) -> FloatArray:
    rows, per_node = row_experts.shape
    result = np.empty((rows, per_node), dtype=np.float64)
    for b in range(rows):
        for i in range(per_node):
            result[b, i] = loads[b // num_nodes, row_experts[b, i]]
    return result


@compiled
def assemble_placement(
    row_experts: IntArray,
    counts: IntArray,
    layout: IntArray,
    pack: IntArray,
    rank: IntArray,
    num_nodes: int,
    cap: int,
    phy2log: IntArray,
    log2phy: IntArray,
    logcnt: IntArray,
) -> None:
    """Step 4: fill ``phy2log``, ``log2phy`` and ``logcnt`` for the layers of these rows.

    Slot of replica ``j`` of row ``(layer, node)``: ``node * S + gpu * cap + rank``; its
    replica rank is how many replicas of its expert come before it in the layout.
    """
    rows, slots = layout.shape
    per_node = row_experts.shape[1]
    log2phy[:] = -1
    seen = np.empty(per_node, dtype=np.int64)
    for b in range(rows):
        layer, node = b // num_nodes, b % num_nodes
        seen[:] = 0
        for j in range(slots):
            label = layout[b, j]
            expert = row_experts[b, label]
            slot = node * slots + pack[b, j] * cap + rank[b, j]
            phy2log[layer, slot] = expert
            log2phy[layer, expert, seen[label]] = slot
            seen[label] += 1
        for i in range(per_node):
            logcnt[layer, row_experts[b, i]] = counts[b, i]


MIN_LAYERS_PER_THREAD = 32  # below that a second thread was measured to cost more than it saves
_executor: ThreadPoolExecutor | None = None


def default_threads() -> int:
    """Threads for the layer-parallel steps: the CPUs available, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


@dataclass(frozen=True)
class Shape:
    num_nodes: int
    slots: int
    gpus_per_node: int
    cap: int
    seed_variant: bool
    refine_a: bool
    refine_b: bool


def place_layers(
    shape: Shape,
    row_experts: IntArray,
    row_loads: FloatArray,
    phy2log: IntArray,
    log2phy: IntArray,
    logcnt: IntArray,
) -> tuple[BoolArray, BoolArray]:
    """Steps 2 to 4 for a block of whole layers (all their (layer, node) rows).

    Writes the block's part of the placement and returns where refinements A and B
    acted, one entry per row.
    """
    rows, per_node = row_loads.shape
    counts_refined = np.zeros(rows, dtype=np.bool_)
    replicas_swapped = np.zeros(rows, dtype=np.bool_)
    if shape.seed_variant:
        counts = water_fill_rows(row_loads, shape.slots)
        if shape.refine_a:
            counts, counts_refined = refine_counts_rows(row_loads, counts)
        layout = layout_by_expert_rows(counts, shape.slots)
    else:
        counts, layout = replicate_greedy_rows(row_loads, shape.slots)
    weights = replica_weights_rows(row_loads, counts, layout)
    if shape.seed_variant:
        pack, rank = pack_diverse_rows(weights, layout, shape.gpus_per_node, per_node)
        if shape.refine_b:
            pack, rank, replicas_swapped = refine_swap_rows(
                weights, pack, rank, shape.gpus_per_node
            )
    else:
        pack, rank = pack_balanced_rows(weights, shape.gpus_per_node)
    assemble_placement(
        row_experts,
        counts,
        layout,
        pack,
        rank,
        shape.num_nodes,
        shape.cap,
        phy2log,
        log2phy,
        logcnt,
    )
    return counts_refined, replicas_swapped


def balance_arrays(
    loads: FloatArray,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    seed_variant: bool,
    refine_a: bool,
    refine_b: bool,
    threads: int | None = None,
) -> tuple[IntArray, IntArray, IntArray, BoolArray, BoolArray]:
    """The whole pipeline on a validated ``[L, E]`` float64 load matrix.

    ``num_groups`` and ``num_nodes`` are the packing groups and nodes (1 and 1 under the
    global policy). Returns ``phy2log, log2phy, logcnt, counts_refined,
    replicas_swapped`` exactly as ``impl.balancer.balance`` does, whatever ``threads``
    (default: ``default_threads()``).
    """
    num_layers, num_experts = loads.shape
    slots = num_replicas // num_nodes
    cap = num_replicas // num_gpus

    # Step 1: groups to nodes, and each node's experts in node-local order.
    group_pack, group_rank = pack_balanced_rows(group_loads_rows(loads, num_groups), num_nodes)
    row_experts = node_local_experts_rows(
        group_pack, group_rank, num_nodes, num_experts // num_groups
    )
    row_loads = gather_rows(loads, row_experts, num_nodes)

    # Steps 2 to 4, in blocks of whole layers over up to ``threads`` threads. Layers are
    # independent, so the split does not change the result; the kernels release the GIL.
    shape = Shape(num_nodes, slots, num_gpus // num_nodes, cap, seed_variant, refine_a, refine_b)
    phy2log = np.empty((num_layers, num_replicas), dtype=np.int64)
    log2phy = np.empty((num_layers, num_experts, num_replicas - num_experts + 1), dtype=np.int64)
    logcnt = np.empty((num_layers, num_experts), dtype=np.int64)
    wanted = default_threads() if threads is None else threads
    blocks = max(1, min(wanted, num_layers // MIN_LAYERS_PER_THREAD))
    bounds = np.linspace(0, num_layers, blocks + 1).astype(np.int64)

    def place(block: int) -> tuple[BoolArray, BoolArray]:
        first, last = int(bounds[block]), int(bounds[block + 1])
        rows = slice(first * num_nodes, last * num_nodes)
        return place_layers(
            shape,
            row_experts[rows],
            row_loads[rows],
            phy2log[first:last],
            log2phy[first:last],
            logcnt[first:last],
        )

    global _executor
    if blocks == 1:
        flags = [place(0)]
    else:
        if _executor is None or _executor._max_workers < blocks:
            _executor = ThreadPoolExecutor(max_workers=blocks, thread_name_prefix="eplb-fast")
        flags = list(_executor.map(place, range(blocks)))
    counts_refined = np.concatenate([f[0] for f in flags]).reshape(num_layers, num_nodes)
    replicas_swapped = np.concatenate([f[1] for f in flags]).reshape(num_layers, num_nodes)
    return phy2log, log2phy, logcnt, counts_refined, replicas_swapped
