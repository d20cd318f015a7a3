"""The whole problem: the least possible peak GPU load of each layer.

The problem is the contract's (``spec.check_placement``). Under the hierarchical policy
every group, with all its replicas, stays on one node; nodes may hold *unequal* numbers
of groups (docs/specification.md, "The hierarchical policy"). So a node holds at least
one group (its slots can only hold experts of groups on it) and at most
``floor(S / group_size)`` groups (every expert needs a slot on its node), and the
splits are the set partitions of the ``Gr`` groups into exactly ``N`` such blocks, nodes
being identical. Equal splits are one valid choice among them.

- ``optimal_layer``: the exact optimum of one layer on tiny instances. Every split gets
  an analytical bound; splits are tried in order of that bound, each node a joint
  replication-and-packing problem solved exactly with CP-SAT (memoised by node
  contents), until the next split's bound reaches the best placement found. One
  deadline (``time_limit_s``) bounds the whole solve; a solve cut short says so
  (``FEASIBLE`` or ``UNKNOWN`` with the best proven bound).
- ``certify_row`` / ``certify_layer``: a certified interval ``[lower, upper]`` at real
  sizes. Lower bounds are analytical (``joint_lower_bound`` per node, minimised over all
  splits); upper bounds come from an explicit placement found by the oracle's own
  heuristics, checked with ``spec``.

Loads are exact: pass ``weights`` (ints, floats or Fractions) beside the validated
problem, whose loads are their float64 roundings; without them the problem's float64
loads are the exact input.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from oracle.cpsat import SOLVER_NAME, Deadline, SolverSettings
from oracle.exact import as_fractions, scale_to_integers
from oracle.heuristics import even_out_by_swaps, greedy_packing, improve_by_swaps
from oracle.joint import joint_lower_bound, replica_listing, solve_joint
from oracle.replication import check_replication_input, counts_for_peak, optimal_peak
from oracle.result import Solution, SolveResult, Status
from spec.placement import check_placement, placement_from_phy2log
from spec.problem import BalancingProblem, Policy
from spec.solutions import heaviest_pack

# The most group splits the layer oracle (and layer_lower_bound) enumerates.
MAX_SPLITS = 20_000
# The most slots certify_row packs (its heuristics hold every replica).
MAX_CERTIFY_SLOTS = 4096

Split = tuple[tuple[int, ...], ...]


def equal_split_count_exceeds(num_groups: int, num_nodes: int, limit: int) -> bool:
    """Whether the splits into blocks of exactly ``Gr / N`` groups alone number more
    than ``limit`` (their count is the product of ``C(left - 1, size - 1)`` over the
    blocks; stops as soon as the product passes ``limit``)."""
    size = num_groups // num_nodes
    total, left = 1, num_groups
    for _ in range(num_nodes):
        total *= capped_comb(left - 1, size - 1, limit)
        if total > limit:
            return True
        left -= size
    return False


def capped_comb(n: int, k: int, limit: int) -> int:
    """``min(C(n, k), limit + 1)``, without computing a huge binomial: ``C(n, j)`` grows
    with ``j`` up to ``n / 2``, so the running product can stop once past ``limit``."""
    k = min(k, n - k)
    value = 1
    for j in range(k):
        value = value * (n - j) // (j + 1)
        if value > limit:
            return limit + 1
    return value


def count_splits(
    num_groups: int, num_nodes: int, max_per_node: int, *, limit: int = MAX_SPLITS
) -> int:
    """Set partitions of ``num_groups`` groups into exactly ``num_nodes`` non-empty,
    unordered blocks of at most ``max_per_node`` groups; ``limit + 1`` when there are
    more than ``limit`` (counted without listing them). Hierarchical splits only:
    ``num_nodes`` divides ``num_groups``, so that the equal splits, counted first,
    settle every large case."""
    if num_groups % num_nodes or max_per_node < num_groups // num_nodes:
        raise ValueError(
            f"count_splits needs num_nodes ({num_nodes}) to divide num_groups ({num_groups}) "
            f"and max_per_node ({max_per_node}) >= num_groups / num_nodes"
        )
    if num_nodes in (1, num_groups):
        return 1  # all groups on the one node, or one group per node
    if equal_split_count_exceeds(num_groups, num_nodes, limit):
        return limit + 1
    # ways[n]: partitions of n groups into the blocks so far. The block holding the
    # lowest remaining group has j groups: C(n - 1, j - 1) ways to pick the others.
    ways = [1] + [0] * num_groups
    for _ in range(num_nodes):
        ways = [
            min(
                limit + 1,
                sum(
                    math.comb(n - 1, j - 1) * ways[n - j]
                    for j in range(1, min(max_per_node, n) + 1)
                ),
            )
            for n in range(num_groups + 1)
        ]
        ways[0] = 0
    return ways[num_groups]


def group_splits(num_groups: int, num_nodes: int, max_per_node: int) -> Iterator[Split]:
    """Every set partition of groups ``0..Gr-1`` into exactly ``num_nodes`` non-empty
    blocks of at most ``max_per_node`` groups, each listed once (the block holding the
    lowest free group is formed first)."""

    def split(free: tuple[int, ...], nodes: int) -> Iterator[Split]:
        if nodes == 0:
            if not free:
                yield ()
            return
        first, rest = free[0], free[1:]
        for size in range(1, min(max_per_node, len(free)) + 1):
            left = len(free) - size
            if not nodes - 1 <= left <= (nodes - 1) * max_per_node:
                continue
            for others in itertools.combinations(rest, size - 1):
                remaining = tuple(g for g in rest if g not in others)
                for tail in split(remaining, nodes - 1):
                    yield ((first, *others), *tail)

    yield from split(tuple(range(num_groups)), num_nodes)


def max_groups_per_node(problem: BalancingProblem) -> int:
    """The most groups one node can hold: each of its experts needs one of its slots."""
    return problem.slots_per_node // problem.group_size


def split_count(problem: BalancingProblem) -> int:
    if problem.policy is Policy.GLOBAL:
        return 1
    return count_splits(problem.num_groups, problem.num_nodes, max_groups_per_node(problem))


def splits_of(problem: BalancingProblem) -> list[Split]:
    """Every split of the problem's groups over its nodes (at most ``MAX_SPLITS``)."""
    if problem.policy is Policy.GLOBAL:
        return [((0,),)]
    if split_count(problem) > MAX_SPLITS:
        raise ValueError(f"more than {MAX_SPLITS} group splits: too many to list")
    return list(group_splits(problem.num_groups, problem.num_nodes, max_groups_per_node(problem)))


def check_split(problem: BalancingProblem, split: Sequence[Sequence[int]]) -> Split:
    """``split`` as a tuple of blocks, after checking that the contract allows it."""
    nodes, groups = problem.packing_nodes, problem.packing_groups
    blocks = tuple(tuple(int(g) for g in block) for block in split)
    if len(blocks) != nodes:
        raise ValueError(f"split has {len(blocks)} blocks, expected one per node ({nodes})")
    listed = sorted(g for block in blocks for g in block)
    if listed != list(range(groups)):
        raise ValueError(f"split must list each of the {groups} groups exactly once")
    most = max_groups_per_node(problem) if problem.policy is Policy.HIERARCHICAL else 1
    for block in blocks:
        if not 1 <= len(block) <= most:
            raise ValueError(
                f"split block {list(block)} holds {len(block)} groups; a node holds 1..{most}"
            )
    return blocks


@dataclass(frozen=True)
class LayerAnswer:
    """The oracle's answer for one layer, with the split and placement behind it
    (both empty when no placement was found)."""

    result: SolveResult
    split: Split
    phy2log: tuple[int, ...] | None


def layer_weights(
    problem: BalancingProblem, layer: int, weights: Sequence[float | int | Fraction] | None
) -> list[Fraction]:
    """The exact loads of ``layer``: ``weights`` when given (each must round to the
    problem's float64 load), else the problem's float64 loads."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if not 0 <= layer < problem.num_layers:
        raise ValueError(f"layer must be in [0, {problem.num_layers}), got {layer}")
    row = problem.loads[layer].tolist()
    if weights is None:
        return as_fractions(row)
    exact = as_fractions(weights)
    if len(exact) != len(row):
        raise ValueError(f"weights has {len(exact)} values, expected {len(row)}")
    for expert, (value, rounded) in enumerate(zip(exact, row, strict=True)):
        if float(value) != rounded:
            raise ValueError(
                f"weights[{expert}] = {value} is not the problem's load {rounded!r} "
                "(each exact weight must round to the float64 load)"
            )
    return exact


def node_experts(problem: BalancingProblem, block: Sequence[int]) -> list[int]:
    """The experts of the groups in ``block``; under the global policy the one packing
    group ``(0,)`` holds every expert."""
    size = problem.group_size
    return [g * size + pos for g in block for pos in range(size)]


def placement_from_nodes(
    problem: BalancingProblem,
    split: Sequence[Sequence[int]],
    node_solutions: Sequence[Solution],
) -> list[int]:
    """``phy2log`` of one layer from each node's counts and replica packing."""
    cap = problem.slots_per_gpu
    phy2log = [-1] * problem.num_replicas
    for node, (block, solution) in enumerate(zip(split, node_solutions, strict=True)):
        experts = node_experts(problem, block)
        assert solution.counts is not None
        assert solution.pack_of is not None
        filled = [0] * problem.gpus_per_node
        for label, gpu in zip(replica_listing(solution.counts), solution.pack_of, strict=True):
            slot = node * problem.slots_per_node + gpu * cap + filled[gpu]
            filled[gpu] += 1
            phy2log[slot] = experts[label]
    return phy2log


def verified_peak(
    problem: BalancingProblem, layer: int, phy2log: Sequence[int], weights: Sequence[Fraction]
) -> Fraction:
    """Check a one-layer placement against ``spec`` and return its exact peak GPU load
    under the exact ``weights``."""
    slots = np.asarray([phy2log], dtype=np.int64)
    log2phy, counts = placement_from_phy2log(slots, problem.num_experts)
    single = BalancingProblem(
        problem.loads[layer : layer + 1],
        problem.num_replicas,
        problem.num_groups,
        problem.num_nodes,
        problem.num_gpus,
    )
    violations = check_placement(single, slots, log2phy, counts)
    if violations:
        raise AssertionError(f"oracle placement breaks the contract: {violations[0]}")
    items = [weights[e] / int(counts[0, e]) for e in phy2log]
    gpu_of = [s // problem.slots_per_gpu for s in range(problem.num_replicas)]
    return heaviest_pack(items, gpu_of, problem.num_gpus)


def cluster_lower_bound(problem: BalancingProblem, weights: Sequence[Fraction]) -> Fraction:
    """A bound that holds for every placement, whatever the split: a GPU holds at least
    the average, and some replica is at least the replication optimum over all slots."""
    return joint_lower_bound(weights, problem.num_replicas, problem.num_gpus)


def ranked_splits(
    problem: BalancingProblem, exact: Sequence[Fraction], deadline: Deadline
) -> list[tuple[Fraction, Split]] | None:
    """Every split with its analytical bound (the largest ``joint_lower_bound`` of its
    nodes), most promising first; None when the deadline comes first."""
    block_bounds: dict[tuple[int, ...], Fraction] = {}
    ranked: list[tuple[Fraction, Split]] = []
    for split in splits_of(problem):
        if deadline.expired():
            return None
        for block in split:
            if block not in block_bounds:
                node = [exact[e] for e in node_experts(problem, block)]
                block_bounds[block] = joint_lower_bound(
                    node, problem.slots_per_node, problem.gpus_per_node
                )
        ranked.append((max(block_bounds[b] for b in split), split))
    ranked.sort()
    return ranked


def optimal_layer(
    problem: BalancingProblem,
    layer: int,
    settings: SolverSettings | None = None,
    weights: Sequence[float | int | Fraction] | None = None,
) -> LayerAnswer:
    """The least peak GPU load of ``layer``, proven (``OPTIMAL``) on tiny instances.

    ``weights``: the layer's exact loads (default: the problem's float64 loads).
    ``settings.time_limit_s`` bounds the whole solve. With more than ``MAX_SPLITS``
    splits, or when the time runs out, the answer is ``FEASIBLE`` or ``UNKNOWN`` with
    the best bound proven so far.
    """
    settings = settings or SolverSettings()
    start = time.perf_counter()
    deadline = settings.deadline()
    exact = layer_weights(problem, layer, weights)
    everywhere = cluster_lower_bound(problem, exact)

    def unknown(bound: Fraction, note: str) -> LayerAnswer:
        result = SolveResult.unknown(
            "layer",
            bound,
            time.perf_counter() - start,
            SOLVER_NAME,
            settings.describe(),
            note=note,
        )
        return LayerAnswer(result, (), None)

    count = split_count(problem)
    if count > MAX_SPLITS:
        return unknown(
            everywhere,
            f"not solved: more than {MAX_SPLITS} group splits to try; the bound holds for "
            "every placement",
        )
    slots, gpus = problem.slots_per_node, problem.gpus_per_node
    ranked = ranked_splits(problem, exact, deadline)
    if ranked is None:
        return unknown(everywhere, "time limit reached while bounding the group splits")

    solved: dict[tuple[int, ...], SolveResult] = {}
    best: tuple[Fraction, Split, list[Solution]] | None = None
    proven: list[Fraction] = []  # per split tried: a proven bound on its best peak
    next_untried: Fraction | None = None  # the least analytical bound of the rest
    stopped = ""
    for index, (analytical, split) in enumerate(ranked):
        if best is not None and analytical >= best[0]:
            next_untried = analytical  # no split from here on can do better
            break
        results = []
        for block in split:
            if block not in solved:
                if deadline.expired():
                    break
                node = [exact[e] for e in node_experts(problem, block)]
                solved[block] = solve_joint(node, slots, gpus, settings=settings.within(deadline))
            results.append(solved[block])
        if len(results) < len(split):
            next_untried, stopped = analytical, "time limit reached"
            break
        proven.append(max(analytical, *(r.bound for r in results)))
        if all(r.objective is not None and r.solution is not None for r in results):
            objective = max(r.objective for r in results if r.objective is not None)
            if best is None or objective < best[0]:
                best = (objective, split, [r.solution for r in results if r.solution])
        if deadline.expired() and index + 1 < len(ranked):
            next_untried, stopped = ranked[index + 1][0], "time limit reached"
            break
    lowest = min([*proven, *([] if next_untried is None else [next_untried])])
    bound = max(lowest, everywhere)
    inexact = [r for r in solved.values() if not r.exact]
    resolution = max((r.resolution for r in inexact if r.resolution is not None), default=None)
    unproven = [r for r in solved.values() if r.status is not Status.OPTIMAL]
    if unproven and not stopped:
        stopped = f"a node solve is not proven optimal ({unproven[0].note or 'rounded'})"
    if best is None:
        return unknown(bound, stopped or "no placement found")
    objective, split, solutions = best
    phy2log = placement_from_nodes(problem, split, solutions)
    if verified_peak(problem, layer, phy2log, exact) != objective:
        raise AssertionError("the assembled placement does not reach the nodes' optimum")
    status = Status.OPTIMAL if objective == bound else Status.FEASIBLE
    return LayerAnswer(
        SolveResult(
            "layer",
            status,
            objective,
            bound,
            None,
            time.perf_counter() - start,
            SOLVER_NAME,
            settings.describe(),
            exact=not inexact,
            resolution=resolution,
            note="" if status is Status.OPTIMAL else stopped,
        ),
        split,
        tuple(phy2log),
    )


def pack_counts(
    exact: Sequence[Fraction],
    counts: Sequence[int],
    num_gpus: int,
    deadline: Deadline | None = None,
) -> tuple[Fraction, list[int]]:
    """Pack the replicas of ``counts`` (greedy, then exchanges until the deadline) and
    the exact peak."""
    labels = replica_listing(counts)
    items = [exact[e] / counts[e] for e in labels]
    integers = scale_to_integers(items).integers
    packing = greedy_packing(integers, num_gpus)
    assert packing is not None
    packing = even_out_by_swaps([float(x) for x in items], packing, num_gpus, deadline=deadline)
    packing = improve_by_swaps(integers, packing, num_gpus, None, deadline=deadline)
    return heaviest_pack(items, packing, num_gpus), packing


def certify_row(
    weights: Sequence[float | int | Fraction],
    num_slots: int,
    num_gpus: int,
    *,
    target_width: float = 1e-3,
    time_budget_s: float = 0.8,
    seed: int = 0,
) -> SolveResult:
    """A certified interval for one node (its experts fixed): the least peak GPU load over
    all counts and placements lies in ``[bound, objective]``.

    Bound: ``joint_lower_bound``. Objective: the best placement found from a few count
    vectors (the exact replication optimum; extra replicas to the heaviest experts; then,
    while the interval is wider than ``target_width`` of the bound and time remains,
    seeded single-replica moves), each packed greedily and improved by exchanges.
    """
    check_replication_input(weights, num_slots)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ValueError(f"num_gpus must be a positive int, got {num_gpus!r}")
    if num_slots % num_gpus:
        raise ValueError(f"num_slots ({num_slots}) must be divisible by num_gpus ({num_gpus})")
    if num_slots > MAX_CERTIFY_SLOTS:
        raise ValueError(
            f"num_slots ({num_slots}) is more than the {MAX_CERTIFY_SLOTS} slots certify_row packs"
        )
    start = time.perf_counter()
    deadline = Deadline(time_budget_s)
    exact = as_fractions(weights)
    n = len(exact)
    bound = joint_lower_bound(exact, num_slots, num_gpus)
    by_load = sorted(range(n), key=lambda i: (-exact[i], i))
    spread = [1] * n
    for k in range(num_slots - n):
        spread[by_load[k % n]] += 1
    best: tuple[Fraction, list[int], list[int]] | None = None
    rng = random.Random(seed)
    tried: set[tuple[int, ...]] = set()
    queue = [counts_for_peak(exact, num_slots, optimal_peak(exact, num_slots)), spread]
    goal = bound * (1 + Fraction(target_width))
    for _ in range(10_000):
        if not queue:
            assert best is not None
            donors = [i for i in range(n) if best[1][i] > 1]
            if not donors or n < 2 or deadline.expired():
                break
            moved = list(best[1])
            donor = rng.choice(donors)
            moved[donor] -= 1
            moved[rng.choice([i for i in range(n) if i != donor])] += 1
            queue.append(moved)
        counts = queue.pop(0)
        if tuple(counts) in tried:
            continue
        tried.add(tuple(counts))
        peak, packing = pack_counts(exact, counts, num_gpus, deadline)
        if best is None or peak < best[0]:
            best = (peak, list(counts), packing)
        if best[0] <= goal:
            break
    assert best is not None
    peak, counts, packing = best
    return SolveResult(
        "joint",
        Status.OPTIMAL if peak == bound else Status.FEASIBLE,
        peak,
        bound,
        Solution(counts=tuple(counts), pack_of=tuple(packing)),
        time.perf_counter() - start,
        "analytical bound + greedy and exchange heuristic",
        parameters={"target_width": target_width, "time_budget_s": time_budget_s, "seed": seed},
    )


def layer_lower_bound(
    problem: BalancingProblem,
    layer: int,
    weights: Sequence[float | int | Fraction] | None = None,
) -> Fraction:
    """A proven lower bound on the layer's least peak GPU load: the minimum over all
    group splits (equal or not) of the largest per-node ``joint_lower_bound`` (or, with
    more than ``MAX_SPLITS`` splits, the cluster-wide average and replication bound)."""
    exact = layer_weights(problem, layer, weights)
    everywhere = cluster_lower_bound(problem, exact)
    if problem.policy is Policy.GLOBAL or split_count(problem) > MAX_SPLITS:
        return everywhere
    cache: dict[tuple[int, ...], Fraction] = {}
    lowest: Fraction | None = None
    for split in splits_of(problem):
        worst = Fraction(0)
        for block in split:
            if block not in cache:
                node = [exact[e] for e in node_experts(problem, block)]
                cache[block] = joint_lower_bound(
                    node, problem.slots_per_node, problem.gpus_per_node
                )
            worst = max(worst, cache[block])
            if lowest is not None and worst >= lowest:
                break
        lowest = worst if lowest is None else min(lowest, worst)
    assert lowest is not None
    return max(lowest, everywhere)


def certify_layer(
    problem: BalancingProblem,
    layer: int,
    split: Sequence[Sequence[int]] | None = None,
    weights: Sequence[float | int | Fraction] | None = None,
) -> LayerAnswer:
    """A certified interval for one layer: ``layer_lower_bound`` below, and above the
    peak of a placement built node by node with ``certify_row`` on ``split`` (any split
    the contract allows; default: the equal split, groups ``g`` to node
    ``g // (Gr / N)``; the best split is not searched)."""
    start = time.perf_counter()
    exact = layer_weights(problem, layer, weights)
    if split is None:
        per_node = problem.packing_groups // problem.packing_nodes
        split = [
            tuple(range(n * per_node, (n + 1) * per_node)) for n in range(problem.packing_nodes)
        ]
    blocks = check_split(problem, split)
    solutions = []
    for block in blocks:
        experts = node_experts(problem, block)
        row = certify_row(
            [exact[e] for e in experts], problem.slots_per_node, problem.gpus_per_node
        )
        assert row.solution is not None
        solutions.append(row.solution)
    phy2log = placement_from_nodes(problem, blocks, solutions)
    upper = verified_peak(problem, layer, phy2log, exact)
    lower = layer_lower_bound(problem, layer, exact)
    status = Status.OPTIMAL if lower == upper else Status.FEASIBLE
    return LayerAnswer(
        SolveResult(
            "layer",
            status,
            upper,
            lower,
            None,
            time.perf_counter() - start,
            "analytical bound + greedy and exchange heuristic",
        ),
        blocks,
        tuple(phy2log),
    )
