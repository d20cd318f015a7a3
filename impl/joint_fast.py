"""The joint balancer's search (``impl.joint``), compiled, on all layers at once.

Each function repeats its counterpart in ``impl.joint`` operation for operation (the
same sums in the same order, the same strict comparisons, stable sorts for ties), so
the answer is identical to the readable one's (tests/test_joint.py). Compiled with
numba (``cache=True``: the first call in a fresh checkout compiles, later processes
load the cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from impl.joint import (
    ENUMERATION_LIMIT,
    MAX_DONORS,
    MAX_RECEIVERS,
    MOVES_PER_SLOT,
    SWAPS_PER_SLOT,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

F = TypeVar("F", bound=Callable[..., Any])


def compiled(function: F) -> F:
    """``numba.njit`` with an on-disk cache, keeping the function's type for mypy."""
    return cast(F, numba.njit(cache=True, nogil=True, error_model="numpy")(function))


@compiled
def replica_items(loads: FloatArray, counts: IntArray, labels: IntArray, items: FloatArray) -> None:
    """``labels[j]``, ``items[j]``: the expert and load of replica ``j``, expert by expert."""
    j = 0
    for e in range(loads.shape[0]):
        for _ in range(counts[e]):
            labels[j] = e
            items[j] = loads[e] / counts[e]
            j += 1


@compiled
def gpu_sums(items: FloatArray, gpu_of: IntArray, load: FloatArray) -> None:
    load[:] = 0.0
    for j in range(items.shape[0]):
        load[gpu_of[j]] += items[j]


@compiled
def heaviest(load: FloatArray) -> int:
    best = 0
    for g in range(1, load.shape[0]):
        if load[g] > load[best]:
            best = g
    return best


@compiled
def improve_by_exchanges(items: FloatArray, gpu_of: IntArray, load: FloatArray) -> None:
    count = items.shape[0]
    gpu_sums(items, gpu_of, load)
    for _ in range(SWAPS_PER_SLOT * count):
        h = heaviest(load)
        best_peak, best_a, best_b = load[h], -1, -1
        for a in range(count):
            if gpu_of[a] != h:
                continue
            for b in range(count):
                q = gpu_of[b]
                if q == h:
                    continue
                delta = items[a] - items[b]
                if delta <= 0.0:
                    continue
                pair_peak = max(load[h] - delta, load[q] + delta)
                if pair_peak < best_peak:
                    best_peak, best_a, best_b = pair_peak, a, b
        if best_a < 0:
            return
        q = gpu_of[best_b]
        delta = items[best_a] - items[best_b]
        gpu_of[best_a] = q
        gpu_of[best_b] = h
        load[h] -= delta
        load[q] += delta


@compiled
def pack_counts(
    loads: FloatArray,
    counts: IntArray,
    num_gpus: int,
    gpu_of: IntArray,
    labels: IntArray,
    items: FloatArray,
    load: FloatArray,
) -> float:
    """Fill ``gpu_of`` for the replicas of ``counts``; return the peak."""
    replica_items(loads, counts, labels, items)
    count = items.shape[0]
    cap = count // num_gpus
    order = np.argsort(-items, kind="mergesort")
    if cap <= 2:
        for position in range(count):
            j = order[position]
            gpu_of[j] = position if position < num_gpus else 2 * num_gpus - 1 - position
    else:
        load[:] = 0.0
        size = np.zeros(num_gpus, dtype=np.int64)
        for position in range(count):
            j = order[position]
            target = -1
            for g in range(num_gpus):
                if size[g] < cap and (target < 0 or load[g] < load[target]):
                    target = g
            gpu_of[j] = target
            load[target] += items[j]
            size[target] += 1
        improve_by_exchanges(items, gpu_of, load)
    gpu_sums(items, gpu_of, load)
    peak: float = load.max()
    return peak


@compiled
def count_vector_total(num_experts: int, num_slots: int, limit: int) -> int:
    k = min(num_experts - 1, num_slots - num_experts)
    value = 1
    for j in range(k):
        value = value * (num_slots - 1 - j) // (j + 1)
        if value > limit:
            return limit + 1
    return value


@compiled
def next_count_vector(counts: IntArray) -> bool:
    """The next ``c >= 1`` of the same sum in lexicographic order; False after the last."""
    n = counts.shape[0]
    for i in range(n - 2, -1, -1):
        rest = 0
        for k in range(i + 1, n):
            rest += counts[k]
        if rest > n - 1 - i:  # the suffix can give one up
            counts[i] += 1
            for k in range(i + 1, n - 1):
                counts[k] = 1
            counts[n - 1] = rest - 1 - (n - 2 - i)
            return True
    return False


@compiled
def start_node(
    loads: FloatArray,
    starts: IntArray,
    num_gpus: int,
    best_counts: IntArray,
    best_gpu: IntArray,
    labels: IntArray,
    items: FloatArray,
    load: FloatArray,
) -> float:
    """``impl.joint.start_node``: ``starts`` is ``[k, n]``; the best into ``best_*``."""
    n = loads.shape[0]
    num_slots = 0
    for e in range(n):
        num_slots += starts[0, e]
    gpu_of = np.empty(num_slots, dtype=np.int64)
    best = np.inf
    found = False
    if count_vector_total(n, num_slots, ENUMERATION_LIMIT) <= ENUMERATION_LIMIT:
        counts = np.ones(n, dtype=np.int64)
        counts[n - 1] = num_slots - n + 1
        while True:
            peak = pack_counts(loads, counts, num_gpus, gpu_of, labels, items, load)
            if not found or peak < best:
                best, found = peak, True
                best_counts[:] = counts
                best_gpu[:] = gpu_of
            if not next_count_vector(counts):
                break
        return best
    for k in range(starts.shape[0]):
        counts = starts[k].copy()
        peak = pack_counts(loads, counts, num_gpus, gpu_of, labels, items, load)
        if not found or peak < best:
            best, found = peak, True
            best_counts[:] = counts
            best_gpu[:] = gpu_of
    return best


@compiled
def improve_counts(
    loads: FloatArray,
    peak: float,
    counts: IntArray,
    gpu: IntArray,
    num_gpus: int,
    floor: float,
    labels: IntArray,
    items: FloatArray,
    load: FloatArray,
) -> float:
    """``impl.joint.improve_counts``, in place on ``counts`` and ``gpu``."""
    n = loads.shape[0]
    num_slots = gpu.shape[0]
    trial = np.empty(n, dtype=np.int64)
    trial_gpu = np.empty(num_slots, dtype=np.int64)
    chosen_counts = np.empty(n, dtype=np.int64)
    chosen_gpu = np.empty(num_slots, dtype=np.int64)
    on_heaviest = np.zeros(n, dtype=np.bool_)
    receiver_key = np.empty(n)
    donor_key = np.empty(n)
    for _ in range(MOVES_PER_SLOT * num_slots):
        if peak <= floor:
            break
        replica_items(loads, counts, labels, items)
        gpu_sums(items, gpu, load)
        h = heaviest(load)
        on_heaviest[:] = False
        for j in range(num_slots):
            if gpu[j] == h:
                on_heaviest[labels[j]] = True
        receivers, donors = 0, 0
        for e in range(n):
            receiver_key[e] = -(loads[e] / counts[e]) if on_heaviest[e] else np.inf
            donor_key[e] = loads[e] / (counts[e] - 1) if counts[e] >= 2 else np.inf
            receivers += on_heaviest[e]
            donors += counts[e] >= 2
        receiver_order = np.argsort(receiver_key, kind="mergesort")[: min(receivers, MAX_RECEIVERS)]
        donor_order = np.argsort(donor_key, kind="mergesort")[: min(donors, MAX_DONORS)]
        chosen_peak = peak
        moved = False
        for receiver in receiver_order:
            for donor in donor_order:
                if donor == receiver:
                    continue
                trial[:] = counts
                trial[donor] -= 1
                trial[receiver] += 1
                value = pack_counts(loads, trial, num_gpus, trial_gpu, labels, items, load)
                if value < chosen_peak:
                    chosen_peak, moved = value, True
                    chosen_counts[:] = trial
                    chosen_gpu[:] = trial_gpu
        if not moved:
            break
        peak = chosen_peak
        counts[:] = chosen_counts
        gpu[:] = chosen_gpu
    return peak


@compiled
def balance_layers(
    loads: FloatArray,
    experts: IntArray,
    starts: IntArray,
    num_slots: int,
    num_gpus: int,
    phy2log: IntArray,
    logcnt: IntArray,
) -> None:
    """``impl.joint.balance_layer`` and ``write_node`` for every layer."""
    num_layers, num_nodes, n = experts.shape
    cap = num_slots // num_gpus
    node_loads = np.empty((num_nodes, n))
    counts = np.empty((num_nodes, n), dtype=np.int64)
    gpu = np.empty((num_nodes, num_slots), dtype=np.int64)
    peaks = np.empty(num_nodes)
    node_starts = np.empty((starts.shape[0], n), dtype=np.int64)
    labels = np.empty(num_slots, dtype=np.int64)
    items = np.empty(num_slots)
    load = np.empty(num_gpus)
    new_counts = np.empty(n, dtype=np.int64)
    new_gpu = np.empty(num_slots, dtype=np.int64)
    for layer in range(num_layers):
        for node in range(num_nodes):
            for i in range(n):
                node_loads[node, i] = loads[layer, experts[layer, node, i]]
                for k in range(starts.shape[0]):
                    node_starts[k, i] = starts[k, layer, experts[layer, node, i]]
            peaks[node] = start_node(
                node_loads[node],
                node_starts,
                num_gpus,
                counts[node],
                gpu[node],
                labels,
                items,
                load,
            )
        for _ in range(MOVES_PER_SLOT * num_slots * num_nodes):
            busiest = heaviest(peaks)
            others = 0.0
            first = True
            for node in range(num_nodes):
                if node != busiest and (first or peaks[node] > others):
                    others, first = peaks[node], False
            new_counts[:] = counts[busiest]
            new_gpu[:] = gpu[busiest]
            improved = improve_counts(
                node_loads[busiest],
                peaks[busiest],
                new_counts,
                new_gpu,
                num_gpus,
                others,
                labels,
                items,
                load,
            )
            if not improved < peaks[busiest]:
                break
            peaks[busiest] = improved
            counts[busiest] = new_counts
            gpu[busiest] = new_gpu
        for node in range(num_nodes):
            filled = np.zeros(num_gpus, dtype=np.int64)
            j = 0
            for i in range(n):
                expert = experts[layer, node, i]
                logcnt[layer, expert] = counts[node, i]
                for _ in range(counts[node, i]):
                    g = gpu[node, j]
                    phy2log[layer, node * num_slots + g * cap + filled[g]] = expert
                    filled[g] += 1
                    j += 1


def joint_arrays(
    loads: FloatArray, experts: IntArray, starts: IntArray, num_slots: int, num_gpus: int
) -> tuple[IntArray, IntArray]:
    """``impl.joint.joint_placement``'s search: ``experts`` ``[L, N, n]``, ``starts``
    ``[k, L, E]`` start counts; returns ``(phy2log, logcnt)``."""
    num_layers, num_nodes, _ = experts.shape
    phy2log = np.full((num_layers, num_nodes * num_slots), -1, dtype=np.int64)
    logcnt = np.zeros((num_layers, loads.shape[1]), dtype=np.int64)
    balance_layers(
        np.ascontiguousarray(loads, dtype=np.float64),
        np.ascontiguousarray(experts, dtype=np.int64),
        np.ascontiguousarray(starts, dtype=np.int64),
        num_slots,
        num_gpus,
        phy2log,
        logcnt,
    )
    return phy2log, logcnt


@compiled
def fill_log2phy(phy2log: IntArray, log2phy: IntArray) -> None:
    num_layers, num_replicas = phy2log.shape
    filled = np.zeros(log2phy.shape[1], dtype=np.int64)
    for layer in range(num_layers):
        filled[:] = 0
        for slot in range(num_replicas):
            expert = phy2log[layer, slot]
            log2phy[layer, expert, filled[expert]] = slot
            filled[expert] += 1


def log2phy_arrays(phy2log: IntArray, num_experts: int, width: int) -> IntArray:
    """``log2phy`` of a valid ``phy2log``: each expert's slots in ascending order (as
    ``spec.placement.placement_from_phy2log``)."""
    log2phy = np.full((phy2log.shape[0], num_experts, width), -1, dtype=np.int64)
    fill_log2phy(np.ascontiguousarray(phy2log), log2phy)
    return log2phy
