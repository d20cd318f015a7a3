"""The joint balancer: replica counts and their placement chosen together, node by node.

The reference chooses a node's replica counts first (the fewest that minimise the
heaviest replica) and packs them afterwards; the counts that minimise the heaviest
replica are not always those that allow the lightest busiest GPU (FlashLB's example:
``[600, 560, 120, 120, 20, 10, 10, 10]`` on 8 GPUs of 2 slots, reference 232, optimum
590/3). This balancer judges every count vector by the packing it allows:

1. Groups to nodes: the reference's step 1 (``pack_balanced`` on group loads).
2. In each node, start points: the reference's counts (water-filling and refinement A)
   and the baseline's (one replica at a time to the hottest expert), taken from their
   placements.
3. ``pack_counts`` packs one count vector: replicas heaviest first (ties: lower replica
   index, replicas listed expert by expert); one slot per GPU: one replica each; two
   slots per GPU: the ``k``-th heaviest with the ``k``-th lightest (optimal for these
   replicas: an exchange argument); more: each onto the lightest GPU with room, then
   exchanges between the heaviest GPU and another while they lower the pair's maximum.
4. Count moves (``improve_counts``): one replica from a donor (one of the few experts
   with two or more that lose least by giving one up) to a receiver (one of the
   heaviest experts with a replica on the busiest GPU), the best move kept while it
   lowers the node's peak. The node with the highest peak is improved
   first; the layer's peak is the highest node's, so nodes already below it keep
   their start point.
5. Small nodes (at most ``ENUMERATION_LIMIT`` count vectors): every count vector is
   packed, the best kept.
6. Per layer, the placement with the lowest peak (``spec.peak_gpu_load``) among this
   one, the reference's and the baseline's: never above either.

Guarantees (tests/test_joint.py): a valid placement; a peak never above the
reference's or the baseline's on the same input; deterministic; and when a node has at
most ``ENUMERATION_LIMIT`` count vectors and a GPU at most 2 slots, the node's
placement is optimal for its experts (every count vector is tried, each packed
optimally), so under the global policy (one packing node) the layer's peak is the
proven optimum. ``fast=True`` runs the same steps compiled (``impl.joint_fast``) with
an identical answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from impl.balancer import BalanceResult, balance, node_local_experts
from spec.objectives import peak_gpu_load
from spec.placement import placement_from_phy2log
from spec.problem import BalancingProblem

IntArray = npt.NDArray[np.int64]

# Nodes with at most this many count vectors (C(S - 1, n - 1)) are searched exhaustively.
ENUMERATION_LIMIT = 10_000
# The most exchanges one packing makes, per slot of the node.
SWAPS_PER_SLOT = 4
# The most count moves one node makes, per slot of the node.
MOVES_PER_SLOT = 2
# The receivers and donors each count move considers.
MAX_RECEIVERS = 3
MAX_DONORS = 4


@dataclass(frozen=True)
class NodePlacement:
    """One node's answer: ``counts[i]`` replicas of local expert ``i``, replicas listed
    expert by expert, ``gpu_of[j]`` the node-local GPU of replica ``j``, and the peak
    GPU load (each GPU's replicas summed in replica order)."""

    peak: float
    counts: tuple[int, ...]
    gpu_of: tuple[int, ...]


def replica_items(loads: Sequence[float], counts: Sequence[int]) -> tuple[list[int], list[float]]:
    """The expert and the load of each replica, expert by expert."""
    labels = [e for e, c in enumerate(counts) for _ in range(c)]
    return labels, [loads[e] / counts[e] for e in labels]


def gpu_sums(items: Sequence[float], gpu_of: Sequence[int], num_gpus: int) -> list[float]:
    """Each GPU's load, its replicas summed in replica order."""
    load = [0.0] * num_gpus
    for item, gpu in zip(items, gpu_of, strict=True):
        load[gpu] += item
    return load


def heaviest(load: Sequence[float]) -> int:
    """The GPU with the highest load (ties: lower index)."""
    best = 0
    for g in range(1, len(load)):
        if load[g] > load[best]:
            best = g
    return best


def improve_by_exchanges(items: Sequence[float], gpu_of: list[int], num_gpus: int) -> None:
    """Exchange a replica of the heaviest GPU with a lighter one elsewhere, the exchange
    with the lowest maximum of the two GPUs first, while that maximum is below the
    heaviest GPU's load (at most ``SWAPS_PER_SLOT`` exchanges per replica)."""
    count = len(items)
    load = gpu_sums(items, gpu_of, num_gpus)
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
        gpu_of[best_a], gpu_of[best_b] = q, h
        load[h] -= delta
        load[q] += delta


def pack_counts(loads: Sequence[float], counts: Sequence[int], num_gpus: int) -> NodePlacement:
    """Pack the replicas of ``counts`` onto ``num_gpus`` GPUs of equal slot counts."""
    _, items = replica_items(loads, counts)
    count = len(items)
    cap = count // num_gpus
    order = sorted(range(count), key=lambda j: (-items[j], j))
    gpu_of = [0] * count
    if cap <= 2:
        for position, j in enumerate(order):
            gpu_of[j] = position if position < num_gpus else 2 * num_gpus - 1 - position
    else:
        load = [0.0] * num_gpus
        size = [0] * num_gpus
        for j in order:
            target = -1
            for g in range(num_gpus):
                if size[g] < cap and (target < 0 or load[g] < load[target]):
                    target = g
            gpu_of[j] = target
            load[target] += items[j]
            size[target] += 1
        improve_by_exchanges(items, gpu_of, num_gpus)
    peak = max(gpu_sums(items, gpu_of, num_gpus))
    return NodePlacement(peak, tuple(counts), tuple(gpu_of))


def count_vectors(num_experts: int, num_slots: int) -> Iterator[list[int]]:
    """Every ``c >= 1`` with ``sum c = num_slots``, lexicographically (first expert's
    count smallest first)."""
    if num_experts == 1:
        yield [num_slots]
        return
    for first in range(1, num_slots - num_experts + 2):
        for rest in count_vectors(num_experts - 1, num_slots - first):
            yield [first, *rest]


def count_vector_total(num_experts: int, num_slots: int, limit: int) -> int:
    """``C(S - 1, n - 1)`` capped at ``limit + 1``."""
    k = min(num_experts - 1, num_slots - num_experts)
    value = 1
    for j in range(k):
        value = value * (num_slots - 1 - j) // (j + 1)
        if value > limit:
            return limit + 1
    return value


def improve_counts(
    loads: Sequence[float], start: NodePlacement, num_gpus: int, floor: float
) -> NodePlacement:
    """Count moves: one replica from a donor to a receiver, the move with the lowest peak
    kept while it lowers the peak; the search stops once the peak is at most ``floor``
    (another node is at least that busy). Receivers: the ``MAX_RECEIVERS`` experts with
    a replica on the busiest GPU whose replicas are heaviest; donors: the
    ``MAX_DONORS`` experts with two or more replicas whose replicas would stay lightest
    after giving one up (ties: lower index)."""
    best = start
    num_slots = len(best.gpu_of)
    for _ in range(MOVES_PER_SLOT * num_slots):
        if best.peak <= floor:
            break
        labels, items = replica_items(loads, best.counts)
        h = heaviest(gpu_sums(items, best.gpu_of, num_gpus))
        on_heaviest = {labels[j] for j in range(num_slots) if best.gpu_of[j] == h}
        receivers = sorted(on_heaviest, key=lambda e: (-(loads[e] / best.counts[e]), e))
        donors = sorted(
            (e for e, c in enumerate(best.counts) if c >= 2),
            key=lambda e: (loads[e] / (best.counts[e] - 1), e),
        )
        chosen = best
        for receiver in receivers[:MAX_RECEIVERS]:
            for donor in donors[:MAX_DONORS]:
                if donor == receiver:
                    continue
                trial = list(best.counts)
                trial[donor] -= 1
                trial[receiver] += 1
                packed = pack_counts(loads, trial, num_gpus)
                if packed.peak < chosen.peak:
                    chosen = packed
        if chosen is best:
            break
        best = chosen
    return best


def best_of(placements: Sequence[NodePlacement]) -> NodePlacement:
    """The lowest peak (ties: the first)."""
    best = placements[0]
    for placement in placements[1:]:
        if placement.peak < best.peak:
            best = placement
    return best


def start_node(
    loads: Sequence[float], starts: Sequence[Sequence[int]], num_gpus: int
) -> NodePlacement:
    """A node's start: every count vector when there are at most ``ENUMERATION_LIMIT``,
    else the best of the packed ``starts``."""
    n, num_slots = len(loads), sum(starts[0])
    if count_vector_total(n, num_slots, ENUMERATION_LIMIT) <= ENUMERATION_LIMIT:
        return best_of([pack_counts(loads, c, num_gpus) for c in count_vectors(n, num_slots)])
    return best_of([pack_counts(loads, c, num_gpus) for c in starts])


def balance_layer(
    node_loads: Sequence[Sequence[float]],
    node_starts: Sequence[Sequence[Sequence[int]]],
    num_gpus: int,
) -> list[NodePlacement]:
    """Every node's placement: start points, then count moves on the busiest node while
    that lowers the layer's peak."""
    nodes = [
        start_node(loads, starts, num_gpus)
        for loads, starts in zip(node_loads, node_starts, strict=True)
    ]
    num_slots = len(nodes[0].gpu_of)
    for _ in range(MOVES_PER_SLOT * num_slots * len(nodes)):
        busiest = heaviest([p.peak for p in nodes])
        others = max((p.peak for n, p in enumerate(nodes) if n != busiest), default=0.0)
        improved = improve_counts(node_loads[busiest], nodes[busiest], num_gpus, others)
        if not improved.peak < nodes[busiest].peak:
            break  # the busiest node is stuck: the layer's peak is settled
        nodes[busiest] = improved
    return nodes


def write_node(
    problem: BalancingProblem,
    layer: int,
    node: int,
    experts: Sequence[int],
    placement: NodePlacement,
    phy2log: IntArray,
    logcnt: IntArray,
) -> None:
    """Slots ``node * S + gpu * cap + rank`` (rank: replica order on the GPU)."""
    cap = problem.slots_per_gpu
    labels = [e for e, c in enumerate(placement.counts) for _ in range(c)]
    filled = [0] * problem.gpus_per_node
    for label, gpu in zip(labels, placement.gpu_of, strict=True):
        slot = node * problem.slots_per_node + gpu * cap + filled[gpu]
        filled[gpu] += 1
        phy2log[layer, slot] = experts[label]
    for label, expert in enumerate(experts):
        logcnt[layer, expert] = placement.counts[label]


def node_experts_of(problem: BalancingProblem) -> IntArray:
    """``[L, N, n]``: the global ids of each node's experts in node-local order (step 1)."""
    return np.asarray(
        [node_local_experts(problem, layer) for layer in range(problem.num_layers)],
        dtype=np.int64,
    ).reshape(problem.num_layers, problem.packing_nodes, problem.experts_per_node)


def joint_placement(
    problem: BalancingProblem, starts: Sequence[IntArray], fast: bool = False
) -> tuple[IntArray, IntArray]:
    """The joint search alone (steps 1-5), from the ``logcnt`` of each placement in
    ``starts``: ``(phy2log, logcnt)``."""
    experts = node_experts_of(problem)
    if fast:
        from impl.joint_fast import joint_arrays  # numba is loaded only for the fast path

        return joint_arrays(
            problem.loads, experts, np.stack(starts), problem.slots_per_node, problem.gpus_per_node
        )
    phy2log = np.full((problem.num_layers, problem.num_replicas), -1, dtype=np.int64)
    logcnt = np.zeros((problem.num_layers, problem.num_experts), dtype=np.int64)
    for layer in range(problem.num_layers):
        node_loads = [[float(problem.loads[layer, e]) for e in ids] for ids in experts[layer]]
        node_starts = [[[int(c[layer, e]) for e in ids] for c in starts] for ids in experts[layer]]
        placements = balance_layer(node_loads, node_starts, problem.gpus_per_node)
        for node, placement in enumerate(placements):
            write_node(problem, layer, node, experts[layer, node], placement, phy2log, logcnt)
    return phy2log, logcnt


def balance_joint(problem: BalancingProblem, *, fast: bool = False) -> BalanceResult:
    """The joint balancer on ``problem``: per layer the lowest peak among the joint
    search, the reference and the baseline (``spec.peak_gpu_load``; ties: the joint
    search, then the reference). ``fast=True``: the compiled path, identical answer."""
    reference = balance(problem, fast=fast)
    baseline = balance(problem, variant="baseline", fast=fast)
    phy2log, logcnt = joint_placement(problem, [reference.logcnt, baseline.logcnt], fast)
    candidates = [
        (phy2log, logcnt),
        (reference.phy2log, reference.logcnt),
        (baseline.phy2log, baseline.logcnt),
    ]
    peaks = np.stack([peak_gpu_load(problem.loads, p, c, problem.num_gpus) for p, c in candidates])
    chosen = np.argmin(peaks, axis=0)  # the first of the lowest
    layers = np.arange(problem.num_layers)
    best_phy2log = np.stack([p for p, _ in candidates])[chosen, layers]
    best_logcnt = np.stack([c for _, c in candidates])[chosen, layers]
    if fast:
        from impl.joint_fast import log2phy_arrays

        log2phy = log2phy_arrays(best_phy2log, problem.num_experts, problem.log2phy_width)
    else:
        log2phy, _ = placement_from_phy2log(best_phy2log, problem.num_experts)
    unchanged = np.zeros((problem.num_layers, problem.packing_nodes), dtype=np.bool_)
    return BalanceResult(best_phy2log, log2phy, best_logcnt, unchanged, unchanged.copy())
