"""The fast balancer: the same steps as ``impl.steps``, compiled, on all rows at once.

Step 1 runs on all layers at once; steps 2 to 4 run in one compiled loop over the
(layer, node) rows (``place_rows``), one ``*_row`` function per step working in scratch
arrays allocated once. Every step repeats the reference's arithmetic operation for
operation, in the same order, so the output is identical to the reference's element for
element (float64 without fast-math: no reassociation). Ties are broken by stable sorts
and strict comparisons, which give the lower index as the reference's ``sorted``/``min``
do.

Compiled with numba (``cache=True``: the first call in a fresh checkout compiles for
about 15 seconds, later processes load the cache).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
def sort_descending(values: FloatArray, order: IntArray, scratch: IntArray) -> None:
    """Fill ``order[:n]`` with the ``n`` indices of ``values`` by descending value, ties by
    lower index.

    Long rows use a stable merge sort. Others are first spread over ``n`` buckets of
    equal width by counting sort (stable), then finished by a stable insertion sort,
    which has little left to do; the answer does not depend on the buckets. ``scratch``
    (``2 n + 1`` long) is work space.
    """
    n = values.shape[0]
    if n > 96:
        order[:n] = np.argsort(-values, kind="mergesort")
        return
    high, low = values.max() if n else 0.0, values.min() if n else 0.0
    if n <= 16 or not high > low:
        for i in range(n):
            order[i] = i
    else:
        # scratch[i]: the bucket of value i; scratch[n + b]: where bucket b goes next.
        for i in range(n, 2 * n + 1):
            scratch[i] = 0
        scale = n / (high - low)
        for i in range(n):
            x = (high - values[i]) * scale  # bucket 0 holds the highest values
            bucket = int(x) if x < n else n - 1
            scratch[i] = bucket
            scratch[n + 1 + bucket] += 1
        for bucket in range(n):
            scratch[n + bucket + 1] += scratch[n + bucket]
        for i in range(n):
            bucket = scratch[i]
            position = scratch[n + bucket]
            order[position] = i
            scratch[n + bucket] = position + 1
    for i in range(1, n):
        item = order[i]
        value = values[item]
        j = i
        while j > 0 and values[order[j - 1]] < value:
            order[j] = order[j - 1]
            j -= 1
        order[j] = item


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
def one_per_pack(pack: IntArray, rank: IntArray) -> None:
    """With one item per pack, item ``j`` goes to pack ``j`` at rank 0."""
    for j in range(pack.shape[0]):
        pack[j], rank[j] = j, 0


@compiled
def pack_balanced_row(
    weights: FloatArray,
    num_packs: int,
    pack: IntArray,
    rank: IntArray,
    order: IntArray,
    load: FloatArray,
    size: IntArray,
    queue: IntArray,
    sort_space: IntArray,
) -> None:
    """``impl.steps.pack_balanced`` on one row, into ``pack`` and ``rank``; ``order``,
    ``load``, ``size``, ``queue`` and ``sort_space`` are scratch space."""
    count = weights.shape[0]
    per_pack = count // num_packs
    if per_pack == 1:
        one_per_pack(pack, rank)
        return
    sort_descending(weights, order, sort_space)
    # Packs with room, kept ordered by (load, index): the target is the first.
    for p in range(num_packs):
        load[p], size[p], queue[p] = 0.0, 0, p
    open_packs = num_packs
    for k in range(count):
        item = order[k]
        target = queue[0]
        pack[item] = target
        rank[item] = size[target]
        load[target] += weights[item]
        size[target] += 1
        if size[target] == per_pack:
            open_packs -= 1
            for q in range(open_packs):
                queue[q] = queue[q + 1]
            continue
        # Move the target back past the packs that now come before it.
        q, target_load = 0, load[target]
        while q + 1 < open_packs:
            p = queue[q + 1]
            if load[p] > target_load or (load[p] == target_load and p > target):
                break
            queue[q] = p
            q += 1
        queue[q] = target


@compiled
def pack_balanced_rows(weights: FloatArray, num_packs: int) -> tuple[IntArray, IntArray]:
    """``impl.steps.pack_balanced`` on every row of ``weights``."""
    rows, count = weights.shape
    pack = np.empty((rows, count), dtype=np.int64)
    rank = np.empty((rows, count), dtype=np.int64)
    order = np.empty(count, dtype=np.int64)
    load = np.empty(num_packs, dtype=np.float64)
    size = np.empty(num_packs, dtype=np.int64)
    queue = np.empty(num_packs, dtype=np.int64)
    sort_space = np.empty(2 * count + 1, dtype=np.int64)
    for b in range(rows):
        pack_balanced_row(
            weights[b], num_packs, pack[b], rank[b], order, load, size, queue, sort_space
        )
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
def index_of_a_maximum(values: FloatArray, count: int) -> int:
    """An index of a largest value among ``values[:count]`` (any, on ties). Two running
    maxima, over even and odd positions, halve the chain of dependent comparisons."""
    even, odd = 0, min(1, count - 1)
    even_value, odd_value = values[even], values[odd]
    for t in range(2, count - 1, 2):
        if values[t] > even_value:
            even, even_value = t, values[t]
        if values[t + 1] > odd_value:
            odd, odd_value = t + 1, values[t + 1]
    if count > 2 and count % 2 == 1 and values[count - 1] > even_value:
        even, even_value = count - 1, values[count - 1]
    return odd if odd_value > even_value else even


@compiled
def feasible_from(
    row: FloatArray, num_slots: int, scratch: IntArray, replica_load: FloatArray
) -> float:
    """The smallest float ``T > 0`` with ``slots_needed(T) <= S``, or -1 if not found.

    ``slots_needed`` is non-increasing in ``T`` (correctly rounded division is monotone),
    so the bisection's test ``slots_needed(mid) <= S`` is exactly ``mid >= T_min``. The
    search starts at the peak of optimal counts, which lies within a few float steps of
    ``T_min``, and walks one float at a time, giving up after 64 steps. Those counts come
    from the greedy (one extra replica at a time to a hottest expert: the peak it reaches
    does not depend on how ties go), run only on the experts above a lower bound on the
    optimal peak (the others keep one replica): the larger of the average load per slot
    and ``max w / (S - n + 1)``, lowered by far more than its rounding error. ``scratch``
    (``2 n`` long) and ``replica_load`` are work space.
    """
    n = row.shape[0]
    extra = num_slots - n
    if extra > 4 * n + 64:
        return -1.0
    floor = max(row.sum() / num_slots, row.max() / (extra + 1)) * (1 - 2.0**-20)
    # scratch[t]: the t-th candidate; scratch[n + t]: its count.
    k = 0
    for i in range(n):
        scratch[k] = i
        k += row[i] > floor
    if k == 0:
        return -1.0
    for t in range(k):
        replica_load[t] = row[scratch[t]]
        scratch[n + t] = 1
    for _ in range(extra):
        hottest = index_of_a_maximum(replica_load, k)
        scratch[n + hottest] += 1
        replica_load[hottest] = row[scratch[hottest]] / scratch[n + hottest]
    threshold: float = 0.0
    for t in range(k):
        threshold = max(threshold, replica_load[t])
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
def water_fill_row(
    row: FloatArray,
    num_slots: int,
    counts: IntArray,
    order: IntArray,
    replica_load: FloatArray,
    sort_space: IntArray,
) -> None:
    """``impl.steps.water_fill`` on one row, into ``counts``; ``order`` (at least
    ``2 * len(row)`` long), ``replica_load`` and ``sort_space`` are scratch space.

    The 40 bisection rounds take the same steps as the reference's, but each test
    ``slots_needed(mid) <= S`` is answered by comparing ``mid`` with the smallest
    feasible threshold (``feasible_from``), computed once per row; where that search
    gives up, every round evaluates ``slots_needed`` as the reference does.
    """
    n = row.shape[0]
    counts[:] = 1
    if num_slots == n:
        return
    peak = row.max()
    if peak == 0.0:
        spare = num_slots - n
        for i in range(n):
            counts[i] = 1 + spare // n + (1 if i < spare % n else 0)
        return
    smallest_feasible = feasible_from(row, num_slots, order, replica_load)
    low, high = 0.0, max(peak, 1.0)
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
    left = num_slots
    for i in range(n):
        # As in slots_needed: w <= T gives max(1, ceil(w / T)) == 1.
        if row[i] > high:
            counts[i] = math.ceil(row[i] / high)
        left -= counts[i]
    while left > 0:
        take = min(left, n)
        for i in range(n):
            replica_load[i] = row[i] / counts[i]
        sort_descending(replica_load[:n], order[:n], sort_space)
        for i in order[:take]:
            counts[i] += 1
        left -= take


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
def refine_counts_row(row: FloatArray, counts: IntArray) -> bool:
    """``impl.steps.refine_counts`` on one row, in place; whether it moved a replica."""
    n = row.shape[0]
    if n != 2:
        # With one expert there is no pair; with three or more the hottest expert is never
        # a receiver, so no move can lower the peak (proof in docs/ANSWERS.md, question 1;
        # tests/test_properties.py checks it on the reference): the reference returns the
        # counts unchanged, and so does this.
        return False
    replica_load = np.empty(n, dtype=np.float64)
    can_give = np.empty(n, dtype=np.bool_)
    everyone = np.ones(n, dtype=np.bool_)
    for i in range(n):
        replica_load[i] = row[i] / counts[i]
        can_give[i] = counts[i] > 1
    best = replica_load.max()
    donors = two_extremes(replica_load, can_give, True)
    receivers = two_extremes(replica_load, everyone, False)
    first, second = two_extremes(replica_load, everyone, True)
    everyone[first] = False
    if second >= 0:
        everyone[second] = False
    third = two_extremes(replica_load, everyone, True)[0]
    top3 = (first, second, third)
    chosen_donor, chosen_receiver = -1, -1
    for d in donors:
        for r in receivers:
            if d < 0 or r < 0 or d == r:
                continue
            peak = peak_after_move(row, counts, replica_load, top3, d, r)
            if peak + GAIN_TOLERANCE < best:
                chosen_donor, chosen_receiver, best = d, r, peak
    if chosen_donor < 0:
        return False
    counts[chosen_donor] -= 1
    counts[chosen_receiver] += 1
    return True


@compiled
def replicate_greedy_row(
    row: FloatArray, num_slots: int, counts: IntArray, layout: IntArray
) -> None:
    """``impl.steps.replicate_greedy`` on one row: counts and creation-order labels."""
    n = row.shape[0]
    counts[:] = 1
    for i in range(n):
        layout[i] = i
    for j in range(n, num_slots):
        hottest = 0
        hottest_load = row[0] / counts[0]
        for i in range(1, n):
            value = row[i] / counts[i]
            if value > hottest_load:
                hottest, hottest_load = i, value
        layout[j] = hottest
        counts[hottest] += 1


@compiled
def pack_diverse_row(
    weights: FloatArray,
    labels: IntArray,
    order: IntArray,
    num_gpus: int,
    pack: IntArray,
    rank: IntArray,
    load: FloatArray,
    size: IntArray,
    held: IntArray,
    queue: IntArray,
) -> None:
    """``impl.steps.pack_diverse`` on one row, into ``pack`` and ``rank``, visiting the
    replicas in the order of ``order``'s first ``len(weights)`` entries (their order by
    descending weight, ties by lower index).

    ``load``, ``size`` and ``queue`` are scratch space; ``held[label, gpu]`` must be all
    zero and is left so.
    """
    count = weights.shape[0]
    cap = count // num_gpus
    if cap == 1:
        one_per_pack(pack, rank)
        return
    # GPUs with room, kept ordered by (load, size, index). The target is the first of
    # them holding the fewest replicas with the item's label.
    for g in range(num_gpus):
        load[g], size[g], queue[g] = 0.0, 0, g
    open_gpus = num_gpus
    for k in range(count):
        item = order[k]
        label = labels[item]
        at, fewest = 0, held[label, queue[0]]
        q = 1
        while fewest > 0 and q < open_gpus:
            if held[label, queue[q]] < fewest:
                at, fewest = q, held[label, queue[q]]
            q += 1
        target = queue[at]
        pack[item] = target
        rank[item] = size[target]
        load[target] += weights[item]
        size[target] += 1
        held[label, target] += 1
        if size[target] == cap:
            open_gpus -= 1
            for q in range(at, open_gpus):
                queue[q] = queue[q + 1]
            continue
        # Move the target back past the GPUs that now come before it.
        target_load, target_size = load[target], size[target]
        while at + 1 < open_gpus:
            g = queue[at + 1]
            if load[g] > target_load or (
                load[g] == target_load
                and (size[g] > target_size or (size[g] == target_size and g > target))
            ):
                break
            queue[at] = g
            at += 1
        queue[at] = target
    for item in range(count):
        held[labels[item], pack[item]] = 0


@compiled
def pack_diverse_rows(
    weights: FloatArray, labels: IntArray, num_gpus: int, num_labels: int
) -> tuple[IntArray, IntArray]:
    """``impl.steps.pack_diverse`` on every row."""
    rows, count = weights.shape
    pack = np.empty((rows, count), dtype=np.int64)
    rank = np.empty((rows, count), dtype=np.int64)
    order = np.empty(count, dtype=np.int64)
    load = np.empty(num_gpus, dtype=np.float64)
    size = np.empty(num_gpus, dtype=np.int64)
    held = np.zeros((num_labels, num_gpus), dtype=np.int64)
    queue = np.empty(num_gpus, dtype=np.int64)
    sort_space = np.empty(2 * count + 1, dtype=np.int64)
    for b in range(rows):
        sort_descending(weights[b], order, sort_space)
        pack_diverse_row(
            weights[b], labels[b], order, num_gpus, pack[b], rank[b], load, size, held, queue
        )
    return pack, rank


@compiled
def refine_swap_row(
    weights: FloatArray,
    num_gpus: int,
    pack: IntArray,
    rank: IntArray,
    members: IntArray,
    filled: IntArray,
    load: FloatArray,
    member_weights: FloatArray,
    not_heavy: BoolArray,
    every_member: BoolArray,
) -> bool:
    """``impl.steps.refine_swap`` on one row, in place on ``pack`` and ``rank``; whether
    it exchanged two replicas. Scratch space: ``members`` (``[gpus, cap]``), ``filled``,
    ``load`` and ``not_heavy`` (``gpus`` long), ``member_weights`` and ``every_member``
    (``cap`` long, all True)."""
    count = weights.shape[0]
    cap = count // num_gpus
    if num_gpus < 2 or cap < 2:
        return False
    # Members and loads in ascending replica index, as the reference sums them.
    for g in range(num_gpus):
        filled[g], load[g] = 0, 0.0
    for item in range(count):
        g = pack[item]
        members[g, filled[g]] = item
        filled[g] += 1
        load[g] += weights[item]
    heavy = 0
    for g in range(1, num_gpus):
        if load[g] > load[heavy]:
            heavy = g
    peak = load[heavy]
    not_heavy[:] = True
    not_heavy[heavy] = False
    lights = two_extremes(load, not_heavy, False)
    for p in range(cap):
        member_weights[p] = weights[members[heavy, p]]
    heavy_picks = two_extremes(member_weights, every_member, True)

    found = False
    best_peak, best_light, best_pa, best_pb = 0.0, -1, -1, -1
    for light in lights:
        if light < 0 or not load[heavy] > load[light]:
            continue
        for p in range(cap):
            member_weights[p] = weights[members[light, p]]
        light_picks = two_extremes(member_weights, every_member, False)
        other = -math.inf
        for g in range(num_gpus):
            if g != heavy and g != light:
                other = max(other, load[g])
        for pa in heavy_picks:
            for pb in light_picks:
                wa = weights[members[heavy, pa]]
                wb = weights[members[light, pb]]
                new_heavy = load[heavy] - wa + wb
                new_light = load[light] - wb + wa
                new_peak = max(new_heavy, new_light, other)
                if new_peak + GAIN_TOLERANCE < peak and (not found or new_peak < best_peak):
                    found = True
                    best_peak, best_light, best_pa, best_pb = new_peak, light, pa, pb
    if not found:
        return False
    a = members[heavy, best_pa]
    members[heavy, best_pa] = members[best_light, best_pb]
    members[best_light, best_pb] = a
    for g in (heavy, best_light):
        for p in range(cap):
            pack[members[g, p]] = g
            rank[members[g, p]] = p
    return True


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
def place_rows(
    row_experts: IntArray,
    row_loads: FloatArray,
    num_nodes: int,
    gpus_per_node: int,
    refined: bool,
    refine_a: bool,
    refine_b: bool,
    phy2log: IntArray,
    log2phy: IntArray,
    logcnt: IntArray,
    counts_refined: BoolArray,
    replicas_swapped: BoolArray,
) -> None:
    """Steps 2 to 4 on the (layer, node) rows of whole layers, one row at a time.

    Fills the layers' ``phy2log``, ``log2phy`` and ``logcnt`` and, per row, whether
    refinements A and B acted. Slot of replica ``j`` of row ``(layer, node)``:
    ``node * S + gpu * cap + rank``; its replica rank is how many replicas of its expert
    come before it in the layout.
    """
    rows, per_node = row_loads.shape
    slots = phy2log.shape[1] // num_nodes
    cap = slots // gpus_per_node
    # Scratch space, allocated once for all rows.
    counts = np.empty(per_node, dtype=np.int64)
    float_space = np.empty(per_node, dtype=np.float64)
    seen = np.empty(per_node, dtype=np.int64)
    layout = np.empty(slots, dtype=np.int64)
    weights = np.empty(slots, dtype=np.float64)
    order = np.empty(max(slots, 2 * per_node), dtype=np.int64)
    sort_space = np.empty(2 * max(slots, per_node) + 1, dtype=np.int64)
    pack = np.empty(slots, dtype=np.int64)
    rank = np.empty(slots, dtype=np.int64)
    gpu_load = np.empty(gpus_per_node, dtype=np.float64)
    size = np.empty(gpus_per_node, dtype=np.int64)
    queue = np.empty(gpus_per_node, dtype=np.int64)
    held = np.zeros((per_node, gpus_per_node), dtype=np.int64)
    members = np.empty((gpus_per_node, cap), dtype=np.int64)
    member_weights = np.empty(cap, dtype=np.float64)
    not_heavy = np.empty(gpus_per_node, dtype=np.bool_)
    every_member = np.ones(cap, dtype=np.bool_)
    for b in range(rows):
        layer, node = b // num_nodes, b % num_nodes
        if node == 0:
            log2phy[layer] = -1
        row = row_loads[b]
        if refined:
            water_fill_row(row, slots, counts, order, float_space, sort_space)
            if refine_a:
                counts_refined[b] = refine_counts_row(row, counts)
            # Layout by expert: all replicas of expert 0, then of expert 1, and so on.
            j = 0
            for i in range(per_node):
                replica_load = row[i] / counts[i]
                for _ in range(counts[i]):
                    layout[j] = i
                    weights[j] = replica_load
                    j += 1
            sort_descending(weights, order, sort_space)
            pack_diverse_row(
                weights,
                layout,
                order,
                gpus_per_node,
                pack,
                rank,
                gpu_load,
                size,
                held,
                queue,
            )
            if refine_b:
                replicas_swapped[b] = refine_swap_row(
                    weights,
                    gpus_per_node,
                    pack,
                    rank,
                    members,
                    size,
                    gpu_load,
                    member_weights,
                    not_heavy,
                    every_member,
                )
        else:
            replicate_greedy_row(row, slots, counts, layout)
            for j in range(slots):
                weights[j] = row[layout[j]] / counts[layout[j]]
            pack_balanced_row(
                weights, gpus_per_node, pack, rank, order, gpu_load, size, queue, sort_space
            )
        seen[:] = 0
        for j in range(slots):
            label = layout[j]
            expert = row_experts[b, label]
            slot = node * slots + pack[j] * cap + rank[j]
            phy2log[layer, slot] = expert
            log2phy[layer, expert, seen[label]] = slot
            seen[label] += 1
        for i in range(per_node):
            logcnt[layer, row_experts[b, i]] = counts[i]


# Layers per thread at least. Measured on 2 cores: 16 layers split in 2 blocks took 15 %
# less time than in one, 8 layers 10 % more; 16 leaves a margin.
MIN_LAYERS_PER_THREAD = 16
_executor: ThreadPoolExecutor | None = None


def default_threads() -> int:
    """Threads for the layer-parallel steps: the CPUs available, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def balance_arrays(
    loads: FloatArray,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    refined: bool,
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
    row_experts, row_loads = node_rows(loads, num_groups, num_nodes)
    return place_layers(
        row_experts,
        row_loads,
        num_replicas,
        num_nodes,
        num_gpus,
        refined=refined,
        refine_a=refine_a,
        refine_b=refine_b,
        threads=threads,
    )


def node_rows(loads: FloatArray, num_groups: int, num_nodes: int) -> tuple[IntArray, FloatArray]:
    """Step 1: groups to nodes; each (layer, node) row's experts in node-local order
    (``[L * N, E / N]``) and their loads."""
    num_experts = loads.shape[1]
    group_pack, group_rank = pack_balanced_rows(group_loads_rows(loads, num_groups), num_nodes)
    row_experts = node_local_experts_rows(
        group_pack, group_rank, num_nodes, num_experts // num_groups
    )
    return row_experts, gather_rows(loads, row_experts, num_nodes)


def place_layers(
    row_experts: IntArray,
    row_loads: FloatArray,
    num_replicas: int,
    num_nodes: int,
    num_gpus: int,
    *,
    refined: bool,
    refine_a: bool,
    refine_b: bool,
    threads: int | None = None,
) -> tuple[IntArray, IntArray, IntArray, BoolArray, BoolArray]:
    """Steps 2 to 4 on the rows of ``node_rows``: the outputs of ``balance_arrays``."""
    num_layers = row_experts.shape[0] // num_nodes
    num_experts = row_experts.shape[1] * num_nodes

    # Steps 2 to 4, in blocks of whole layers over up to ``threads`` threads. Layers are
    # independent, so the split does not change the result; the kernels release the GIL.
    phy2log = np.empty((num_layers, num_replicas), dtype=np.int64)
    log2phy = np.empty((num_layers, num_experts, num_replicas - num_experts + 1), dtype=np.int64)
    logcnt = np.empty((num_layers, num_experts), dtype=np.int64)
    counts_refined = np.zeros((num_layers, num_nodes), dtype=np.bool_)
    replicas_swapped = np.zeros((num_layers, num_nodes), dtype=np.bool_)
    wanted = default_threads() if threads is None else threads
    blocks = max(1, min(wanted, num_layers // MIN_LAYERS_PER_THREAD))

    def place(block: int) -> None:
        first, last = num_layers * block // blocks, num_layers * (block + 1) // blocks
        place_rows(
            row_experts[first * num_nodes : last * num_nodes],
            row_loads[first * num_nodes : last * num_nodes],
            num_nodes,
            num_gpus // num_nodes,
            refined,
            refine_a,
            refine_b,
            phy2log[first:last],
            log2phy[first:last],
            logcnt[first:last],
            counts_refined[first:last].reshape(-1),
            replicas_swapped[first:last].reshape(-1),
        )

    global _executor
    others = []
    if blocks > 1:
        if _executor is None or _executor._max_workers < blocks - 1:
            _executor = ThreadPoolExecutor(max_workers=blocks - 1, thread_name_prefix="eplb-fast")
        others = [_executor.submit(place, block) for block in range(1, blocks)]
    place(0)  # the calling thread takes the first block
    for other in others:
        other.result()
    return phy2log, log2phy, logcnt, counts_refined, replicas_swapped
