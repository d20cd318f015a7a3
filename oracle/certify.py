"""Certified layer intervals whose lower bounds count whole replicas on whole slots.

The analytical bound (``joint_lower_bound``: the average GPU load, the heaviest replica
at the replication optimum) ignores that a GPU holds exactly ``cap`` whole replicas.
With 2 to 4 slots per GPU that leaves it several per cent below the optimum. Here a
node's least peak is bounded by the least, over every replica count vector ``c``, of a
lower bound on the packing of ``c``'s replicas (``packing_bound``):

- one slot per GPU: the heaviest replica (exact);
- two slots per GPU: the heaviest pairing of the ``k``-th heaviest with the ``k``-th
  lightest replica (exact: that pairing is an optimal packing, by an exchange argument);
- more: the heaviest replica with the ``cap - 1`` lightest, pigeonhole, and for the
  ``i + 1`` heaviest replicas the lesser of "two share a GPU" and "they lie on
  ``i + 1`` GPUs, which hold at least the lightest other replicas" (``i = G - 1``:
  the average GPU load); see ``packing_bound``.

Count vectors are enumerated after one valid pruning: given the peak ``U`` of a known
placement (``upper``), a vector giving expert ``e`` fewer than ``w_e / U`` replicas has
a replica above ``U`` and cannot bound below ``U``. The minimum over the rest, capped at
``U``, is a proven lower bound (the optimal placement's own vector is among them).
Bounds are evaluated in float64 and kept lowered by ``FLOAT_BAND`` (a float64 sum of at
most ``S`` non-negative terms errs by far less) until a vector reaches the front of the
queue, where its bound is recomputed in exact rationals. With two slots per GPU the
front vector's pairing is a placement at the bound: the node is solved. With more, the
front vector's packing is solved with CP-SAT (a few times, each time-limited) and its
bound raised to the proven one; the placements found lower ``U``. A node with more than
``max_vectors`` vectors keeps the analytical bound.

A layer's bound is the least, over every group split the contract allows, of the
largest bound of its nodes; nodes are bounded lazily (only those of the split that
currently decides the minimum), so a deadline or a vector cap anywhere leaves a valid
bound. Single process; CP-SAT with one worker and the settings' seed; ``time_limit_s``
bounds the whole layer.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from oracle.cpsat import Deadline, SolverSettings
from oracle.joint import joint_lower_bound, replica_listing
from oracle.packing import solve_packing
from oracle.pipeline import (
    MAX_SPLITS,
    LayerAnswer,
    cluster_lower_bound,
    layer_weights,
    node_experts,
    split_count,
    splits_of,
    verified_peak,
)
from oracle.replication import ceil_div
from oracle.result import SolveResult, Status
from spec.problem import BalancingProblem, Policy

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# The most count vectors one node's bound enumerates (more: the analytical bound).
MAX_COUNT_VECTORS = 200_000
# Count vectors evaluated together (memory: CHUNK x experts x largest count floats).
CHUNK = 4096
# Vectors whose float bound is within this relative distance of the float minimum are
# evaluated again exactly (float64 sums of a few terms err by far less).
FLOAT_BAND = 1e-9
# The lowest-bound count vectors one node keeps (the rest: the lowest of them, lowered).
MAX_KEPT = 4096
# CP-SAT packing solves per node (default), and the time limit of each (within the
# deadline).
PACKING_SOLVES = 4
PACKING_TIME_LIMIT_S = 1.0
SOLVER = "count-vector enumeration with slot-aware packing bounds"


def packing_bound(items: Sequence[Fraction], num_gpus: int) -> Fraction:
    """A proven lower bound on the heaviest GPU of any packing of ``items`` onto
    ``num_gpus`` GPUs of ``cap = len(items) / num_gpus`` slots; exact for ``cap <= 2``.

    With ``a_0 >= a_1 >= ...`` and ``k = cap >= 3``: the heaviest item with the
    ``k - 1`` lightest; pigeonhole (``oracle.packing.packing_lower_bound``); and for each
    ``i < G`` the lesser of two cases: two of the ``i + 1`` heaviest share a GPU (at
    least ``a_{i-1} + a_i`` and the ``k - 2`` lightest), or they lie on ``i + 1``
    distinct GPUs, which hold ``(i + 1)(k - 1)`` other items, at least the lightest
    ones, so the heaviest of them carries at least the average of the lot. ``i = G - 1``
    is the average GPU load.
    """
    ordered = sorted(items, reverse=True)
    count = len(ordered)
    cap = count // num_gpus
    if cap == 1:
        return ordered[0]
    if cap == 2:
        return max(ordered[i] + ordered[count - 1 - i] for i in range(num_gpus))
    zero = Fraction(0)

    def lightest(k: int) -> Fraction:
        return sum(ordered[count - k :], zero) if k > 0 else zero

    bound = ordered[0] + lightest(cap - 1)
    for j in range(1, cap):
        top = j * num_gpus + 1
        if top > count:
            break
        bound = max(bound, sum(ordered[top - j - 1 : top], zero) + lightest(cap - j - 1))
    heaviest_sum = ordered[0]
    for i in range(1, num_gpus):
        heaviest_sum += ordered[i]
        shared = ordered[i - 1] + ordered[i] + lightest(cap - 2)
        apart = (heaviest_sum + lightest((i + 1) * (cap - 1))) / (i + 1)
        bound = max(bound, min(shared, apart))
    return bound


def packing_bounds(ordered: FloatArray, num_gpus: int) -> FloatArray:
    """``packing_bound`` of each row of ``ordered`` (replica loads sorted heaviest
    first), in float64."""
    count = ordered.shape[1]
    cap = count // num_gpus
    if cap == 1:
        return ordered[:, 0].copy()
    if cap == 2:
        result: FloatArray = (ordered[:, :num_gpus] + ordered[:, ::-1][:, :num_gpus]).max(axis=1)
        return result
    # suffix[:, k]: the sum of the k lightest items
    suffix = np.concatenate(
        [np.zeros((ordered.shape[0], 1)), np.cumsum(ordered[:, ::-1], axis=1)], axis=1
    )
    prefix = np.cumsum(ordered, axis=1)
    bound: FloatArray = ordered[:, 0] + suffix[:, cap - 1]
    for j in range(1, cap):
        top = j * num_gpus + 1
        if top > count:
            break
        window = ordered[:, top - j - 1 : top].sum(axis=1)
        bound = np.maximum(bound, window + suffix[:, cap - j - 1])
    for i in range(1, num_gpus):
        shared = ordered[:, i - 1] + ordered[:, i] + suffix[:, cap - 2]
        apart = (prefix[:, i] + suffix[:, (i + 1) * (cap - 1)]) / (i + 1)
        bound = np.maximum(bound, np.minimum(shared, apart))
    return bound


def sorted_replicas(weights: FloatArray, counts: IntArray, num_slots: int) -> FloatArray:
    """``[V, S]``: each count vector's replica loads, heaviest first."""
    most = int(counts.max())
    share = weights[None, :] / counts
    grid = np.where(np.arange(most)[None, None, :] < counts[:, :, None], share[:, :, None], -1.0)
    flat = grid.reshape(counts.shape[0], -1)
    ordered: FloatArray = -np.sort(-flat, axis=1)[:, :num_slots]
    return ordered


@dataclass(frozen=True)
class NodeBound:
    """A proven lower bound on one node's least peak GPU load, and the best placement
    found on the way (``counts``, ``pack_of``, its ``peak``), if any."""

    bound: Fraction
    method: str
    vectors: int
    counts: tuple[int, ...] | None = None
    pack_of: tuple[int, ...] | None = None
    peak: Fraction | None = None


def fewest_counts(weights: Sequence[Fraction], upper: Fraction | None) -> list[int]:
    """``max(1, ceil(w / upper))``: fewer replicas than that put one above ``upper``."""
    if upper is None or upper <= 0:
        return [1] * len(weights)
    return [
        max(1, ceil_div(w.numerator * upper.denominator, w.denominator * upper.numerator))
        for w in weights
    ]


def vector_total(num_experts: int, extra: int, limit: int) -> int:
    """``C(n + extra - 1, extra)``, capped at ``limit + 1``."""
    value = 1
    for j in range(min(extra, num_experts - 1)):
        value = value * (num_experts + extra - 1 - j) // (j + 1)
        if value > limit:
            return limit + 1
    return value


def pairing(items: Sequence[Fraction], num_gpus: int) -> list[int]:
    """The GPU of each item: the ``k``-th heaviest with the ``k``-th lightest (one item
    per GPU when there are ``num_gpus``)."""
    order = sorted(range(len(items)), key=lambda j: (-items[j], j))
    pack_of = [0] * len(items)
    for position, j in enumerate(order):
        pack_of[j] = position if position < num_gpus else 2 * num_gpus - 1 - position
    return pack_of


def near_minimal_vectors(
    floats: FloatArray,
    fewest: Sequence[int],
    extra: int,
    total_vectors: int,
    num_gpus: int,
    cutoff: float,
    deadline: Deadline | None,
) -> tuple[list[tuple[float, tuple[int, ...]]], float] | None:
    """Every count vector (``fewest`` plus ``extra`` replicas handed out) with a float
    ``packing_bound`` below ``cutoff``: the ``MAX_KEPT`` lowest, and the lowest value
    left out (``inf`` if none). None when the deadline comes first."""
    n, num_slots = len(fewest), sum(fewest) + extra
    base = np.asarray(fewest, dtype=np.int64)
    combos = itertools.combinations_with_replacement(range(n), extra)
    kept: list[tuple[float, tuple[int, ...]]] = []
    left_out = math.inf
    for _ in range(0, total_vectors, CHUNK):
        if deadline is not None and deadline.expired():
            return None
        chunk = list(itertools.islice(combos, CHUNK))
        counts = np.tile(base, (len(chunk), 1))
        if extra:
            rows = np.repeat(np.arange(len(chunk)), extra)
            np.add.at(counts, (rows, np.asarray(chunk, dtype=np.int64).reshape(-1)), 1)
        values = packing_bounds(sorted_replicas(floats, counts, num_slots), num_gpus)
        for k in np.nonzero(values < cutoff)[0]:
            kept.append((float(values[k]), tuple(int(c) for c in counts[k])))
        if len(kept) > 2 * MAX_KEPT:
            kept.sort()
            left_out = min(left_out, kept[MAX_KEPT][0])
            del kept[MAX_KEPT:]
    kept.sort()
    if len(kept) > MAX_KEPT:
        left_out = min(left_out, kept[MAX_KEPT][0])
        del kept[MAX_KEPT:]
    return kept, left_out


def lowered(value: float) -> Fraction:
    """A float64 bound made safe: lowered by ``FLOAT_BAND`` (its rounding error is far
    smaller)."""
    return Fraction(value) * (1 - Fraction(FLOAT_BAND)) if math.isfinite(value) else Fraction(0)


def node_slot_bound(
    weights: Sequence[float | int | Fraction],
    num_slots: int,
    num_gpus: int,
    upper: Fraction | None = None,
    *,
    settings: SolverSettings | None = None,
    max_vectors: int = MAX_COUNT_VECTORS,
    packing_solves: int = PACKING_SOLVES,
    deadline: Deadline | None = None,
) -> NodeBound:
    """The least, over every count vector, of a proven bound on the packing of its
    replicas, capped at ``upper`` (the peak of a known placement of these experts, when
    given): at most the node's least peak GPU load.

    Vectors are taken lowest bound first. With two slots per GPU or fewer the bound is
    the packing's optimum (exact pairing), so the first vector decides and its pairing
    is a placement at the bound. With more, the lowest vector's packing is solved with
    CP-SAT (``oracle.packing.solve_packing``: one worker, ``settings``' seed, the time
    left) and its bound replaced by the proven one, until the lowest vector is one
    already solved, ``packing_solves`` solves are spent or the deadline comes.
    """
    settings = settings or SolverSettings()
    exact = [Fraction(w) for w in weights]
    n = len(exact)
    if n == 0 or num_slots < n or num_gpus < 1 or num_slots % num_gpus:
        raise ValueError(
            f"a node needs 1 <= experts ({n}) <= slots ({num_slots}), slots divisible by "
            f"GPUs ({num_gpus})"
        )
    analytical = joint_lower_bound(exact, num_slots, num_gpus)
    if upper is not None and upper <= analytical:
        return NodeBound(upper, "analytical", 0)
    fewest = fewest_counts(exact, upper)
    extra = num_slots - sum(fewest)
    if extra < 0:  # every vector puts a replica above upper
        assert upper is not None
        return NodeBound(upper, "count vectors", 0)
    total_vectors = vector_total(n, extra, max_vectors)
    if total_vectors > max_vectors:
        return NodeBound(analytical, f"analytical (more than {max_vectors} count vectors)", 0)
    cutoff = math.inf if upper is None else float(upper) * (1 + FLOAT_BAND)
    floats = np.asarray([float(w) for w in exact])
    listed = near_minimal_vectors(floats, fewest, extra, total_vectors, num_gpus, cutoff, deadline)
    if listed is None:
        return NodeBound(analytical, "analytical (time limit reached)", 0)
    kept, left_out = listed
    cap = num_slots // num_gpus
    # Heap entries: (bound, order, stage, counts); stage 0: a lowered float bound,
    # 1: the exact packing_bound, 2: final (exact pairing, or a CP-SAT bound).
    heap: list[tuple[Fraction, int, int, tuple[int, ...]]] = [
        (lowered(value), order, 0, counts) for order, (value, counts) in enumerate(kept)
    ]
    if math.isfinite(left_out):
        heap.append((lowered(left_out), len(heap), 2, ()))
    heapq.heapify(heap)
    best: tuple[Fraction, tuple[int, ...], tuple[int, ...]] | None = None
    solves = 0
    method = "count vectors"
    bound = upper
    while heap:
        value, order, stage, counts = heapq.heappop(heap)
        if upper is not None and value >= upper:
            break
        items = [exact[e] / counts[e] for e in replica_listing(counts)] if counts else []
        if stage == 0:
            heapq.heappush(
                heap, (packing_bound(items, num_gpus), order, 1 if cap > 2 else 2, counts)
            )
            continue
        if stage == 2:
            bound = value
            if cap <= 2 and counts:
                best = (value, counts, tuple(pairing(items, num_gpus)))
                method = "count vectors, exact pairing"
            break
        if solves >= packing_solves or (deadline is not None and deadline.expired()):
            bound = value
            method = "count vectors, packing solves cut short"
            break
        seconds = (
            PACKING_TIME_LIMIT_S
            if deadline is None
            else min(PACKING_TIME_LIMIT_S, max(deadline.remaining(), 1e-3))
        )
        solved = solve_packing(items, num_gpus, settings=replace(settings, time_limit_s=seconds))
        solves += 1
        method = "count vectors, packings solved with CP-SAT"
        if solved.objective is not None and solved.solution is not None:
            pack_of = solved.solution.pack_of
            assert pack_of is not None
            if best is None or solved.objective < best[0]:
                best = (solved.objective, counts, tuple(pack_of))
            if upper is None or solved.objective < upper:
                upper = solved.objective  # a placement: nothing above it matters
        heapq.heappush(heap, (max(value, solved.bound), order, 2, counts))
    if bound is None:  # nothing below the cap: every vector was out of reach
        bound = upper if upper is not None else analytical
    bound = max(bound, analytical)
    if upper is not None:
        bound = min(bound, upper)
    if best is None:
        return NodeBound(bound, method, total_vectors)
    return NodeBound(bound, method, total_vectors, best[1], best[2], best[0])


def node_peaks(
    problem: BalancingProblem, phy2log: Sequence[int], weights: Sequence[Fraction]
) -> list[Fraction]:
    """The exact peak of each packing node of a one-layer placement."""
    counts: dict[int, int] = {}
    for expert in phy2log:
        counts[expert] = counts.get(expert, 0) + 1
    cap = problem.slots_per_gpu
    per_gpu = [
        sum((weights[e] / counts[e] for e in phy2log[g * cap : (g + 1) * cap]), Fraction(0))
        for g in range(problem.num_gpus)
    ]
    per_node = problem.gpus_per_node
    return [max(per_gpu[n * per_node : (n + 1) * per_node]) for n in range(problem.packing_nodes)]


def node_blocks_of(problem: BalancingProblem, phy2log: Sequence[int]) -> list[tuple[int, ...]]:
    """The groups each packing node holds in a placement."""
    slots, size = problem.slots_per_node, problem.group_size
    return [
        tuple(sorted({int(e) // size for e in phy2log[n * slots : (n + 1) * slots]}))
        for n in range(problem.packing_nodes)
    ]


def write_node_slots(
    problem: BalancingProblem,
    row: list[int],
    node: int,
    block: tuple[int, ...],
    counts: Sequence[int],
    pack_of: Sequence[int],
) -> None:
    """Overwrite packing node ``node``'s slots with ``block``'s experts placed by
    ``counts`` and ``pack_of``."""
    experts = node_experts(problem, block)
    cap = problem.slots_per_gpu
    filled = [0] * problem.gpus_per_node
    for label, gpu in zip(replica_listing(counts), pack_of, strict=True):
        row[node * problem.slots_per_node + gpu * cap + filled[gpu]] = experts[label]
        filled[gpu] += 1


def improved_placement(
    problem: BalancingProblem,
    decided: tuple[tuple[int, ...], ...] | None,
    bounds: dict[tuple[int, ...], NodeBound],
    hint_split: tuple[tuple[int, ...], ...],
    hint: tuple[int, ...] | None,
    hint_peaks: Sequence[Fraction],
) -> tuple[tuple[tuple[int, ...], ...], list[int]] | None:
    """A placement from the node placements found while bounding: the hint with each
    node replaced where one of the same groups is lighter, or the deciding split's when
    every one of its nodes has one. None when there is nothing to build."""

    def found(block: tuple[int, ...]) -> NodeBound | None:
        known = bounds.get(block)
        return known if known is not None and known.peak is not None else None

    if hint is not None:
        row = list(hint)
        changed = False
        for node, block in enumerate(hint_split):
            known = found(block)
            if known is None or known.counts is None or known.pack_of is None:
                continue
            assert known.peak is not None
            if known.peak < hint_peaks[node]:
                write_node_slots(problem, row, node, block, known.counts, known.pack_of)
                changed = True
        return (hint_split, row) if changed else None
    if decided is None or any(found(b) is None for b in decided):
        return None
    row = [-1] * problem.num_replicas
    for node, block in enumerate(decided):
        known = found(block)
        assert known is not None
        assert known.counts is not None
        assert known.pack_of is not None
        write_node_slots(problem, row, node, block, known.counts, known.pack_of)
    return decided, row


def certify_layer_slots(
    problem: BalancingProblem,
    layer: int,
    hint: Sequence[int] | None = None,
    settings: SolverSettings | None = None,
    weights: Sequence[float | int | Fraction] | None = None,
    *,
    max_vectors: int = MAX_COUNT_VECTORS,
    packing_solves: int = PACKING_SOLVES,
) -> LayerAnswer:
    """A certified interval for one layer: below, the least over group splits of the
    largest ``node_slot_bound`` of their nodes (and the cluster-wide bound); above, the
    better of ``hint`` (a ``phy2log`` row, checked against ``spec``) and the exact
    pairings found on the way. ``OPTIMAL`` when they meet. ``settings.time_limit_s``
    bounds the whole call; what is not bounded by then keeps the analytical bound."""
    settings = settings or SolverSettings()
    start = time.perf_counter()
    deadline = settings.deadline()
    exact = layer_weights(problem, layer, weights)
    everywhere = cluster_lower_bound(problem, exact)
    upper: Fraction | None = None
    hint_node_peaks: list[Fraction] = []
    best_phy2log: tuple[int, ...] | None = None
    best_split: tuple[tuple[int, ...], ...] = ()
    if hint is not None:
        row = [int(e) for e in hint]
        upper = verified_peak(problem, layer, row, exact)
        best_phy2log = tuple(row)
        if problem.policy is Policy.HIERARCHICAL:
            best_split = tuple(node_blocks_of(problem, row))
        else:
            best_split = ((0,),)
        hint_node_peaks = node_peaks(problem, row, exact)
    if problem.policy is Policy.GLOBAL:
        splits: list[tuple[tuple[int, ...], ...]] = [((0,),)]
    elif split_count(problem) > MAX_SPLITS:
        splits = []
    else:
        splits = splits_of(problem)
    slots, gpus = problem.slots_per_node, problem.gpus_per_node
    bounds: dict[tuple[int, ...], NodeBound] = {}
    strong: set[tuple[int, ...]] = set()
    stopped = ""

    def node_weights(block: tuple[int, ...]) -> list[Fraction]:
        return [exact[e] for e in node_experts(problem, block)]

    for split in splits:
        for block in split:
            if block not in bounds:
                bounds[block] = NodeBound(
                    joint_lower_bound(node_weights(block), slots, gpus), "analytical", 0
                )
    # A block's bound can rise at most to its optimum: at most its node's peak in the
    # hint, or the layer's best peak.
    hinted = {} if best_phy2log is None else dict(zip(best_split, hint_node_peaks, strict=True))

    def potential(block: tuple[int, ...]) -> Fraction | None:
        return hinted.get(block, upper)

    def could_rise(block: tuple[int, ...], value: Fraction) -> bool:
        top = potential(block)
        return top is None or top > value

    lowest = everywhere
    decided: tuple[tuple[int, ...], ...] | None = None
    while splits:
        decided = min(splits, key=lambda s: max(bounds[b].bound for b in s))
        value = max(bounds[b].bound for b in decided)
        lowest = max(everywhere, value)
        # Blocks whose bound could still raise this split's maximum, most promising first.
        weak = [b for b in decided if b not in strong and could_rise(b, value)]
        if not weak:
            break
        if deadline.expired():
            stopped = "time limit reached"
            break
        weak.sort(key=lambda b: (potential(b) is not None, -(potential(b) or 0), bounds[b].bound))
        for block in weak[:1]:
            bounds[block] = node_slot_bound(
                node_weights(block),
                slots,
                gpus,
                upper,
                settings=settings,
                max_vectors=max_vectors,
                packing_solves=packing_solves,
                deadline=deadline,
            )
            strong.add(block)
    if not splits:
        stopped = f"more than {MAX_SPLITS} group splits; the bound is the cluster-wide one"
    if upper is not None:
        lowest = min(lowest, upper)
    # Node placements found while bounding improve the best placement known.
    found = improved_placement(problem, decided, bounds, best_split, best_phy2log, hint_node_peaks)
    if found is not None:
        peak = verified_peak(problem, layer, found[1], exact)
        if upper is None or peak < upper:
            upper, best_split, best_phy2log = peak, found[0], tuple(found[1])
    if upper is None:
        result = SolveResult.unknown(
            "layer",
            lowest,
            time.perf_counter() - start,
            SOLVER,
            settings.describe(),
            note=stopped or "no placement known: pass a hint",
        )
        return LayerAnswer(result, (), None)
    lowest = min(lowest, upper)
    status = Status.OPTIMAL if lowest == upper else Status.FEASIBLE
    result = SolveResult(
        "layer",
        status,
        upper,
        lowest,
        None,
        time.perf_counter() - start,
        SOLVER,
        {**settings.describe(), "max_vectors": max_vectors, "packing_solves": packing_solves},
        note=stopped,
    )
    return LayerAnswer(result, best_split, best_phy2log)
