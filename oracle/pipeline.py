"""The whole problem: the least possible peak GPU load of each layer.

- ``optimal_layer``: the exact optimum of one layer on tiny instances. Under the
  hierarchical policy every split of the groups over the (identical) nodes is tried
  (8 groups on 4 nodes: 105 splits); each node is then a joint replication-and-packing
  problem, solved exactly with CP-SAT (memoised by node contents).
- ``certify_row`` / ``certify_layer``: a certified interval ``[lower, upper]`` at real
  sizes. Lower bounds are analytical (``joint_lower_bound`` per node, minimised over all
  splits); upper bounds come from an explicit placement found by the oracle's own
  heuristics, checked with ``spec``.
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

from oracle.cpsat import SOLVER_NAME, SolverSettings
from oracle.exact import as_fractions, scale_to_integers
from oracle.heuristics import even_out_by_swaps, greedy_packing, improve_by_swaps
from oracle.joint import joint_lower_bound, replica_listing, solve_joint
from oracle.replication import counts_for_peak, optimal_peak
from oracle.result import Solution, SolveResult, Status
from spec.placement import check_placement, placement_from_phy2log
from spec.problem import BalancingProblem, Policy
from spec.solutions import heaviest_pack

MAX_SPLITS = 20_000


def count_splits(num_groups: int, num_nodes: int) -> int:
    """Ways to split ``num_groups`` groups into ``num_nodes`` unordered equal blocks."""
    size = num_groups // num_nodes
    total = 1
    left = num_groups
    for _ in range(num_nodes):
        total *= math.comb(left - 1, size - 1)
        left -= size
    return total


def group_splits(num_groups: int, num_nodes: int) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every split of groups ``0..Gr-1`` into ``num_nodes`` blocks of ``Gr / N``, each
    block listed once (the block holding the lowest free group is formed first)."""
    size = num_groups // num_nodes

    def split(free: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], ...]]:
        if not free:
            yield ()
            return
        first, rest = free[0], free[1:]
        for others in itertools.combinations(rest, size - 1):
            block = (first, *others)
            remaining = tuple(g for g in rest if g not in others)
            for tail in split(remaining):
                yield (block, *tail)

    yield from split(tuple(range(num_groups)))


@dataclass(frozen=True)
class LayerAnswer:
    """The oracle's answer for one layer, with the split and placement behind it."""

    result: SolveResult
    split: tuple[tuple[int, ...], ...]
    phy2log: tuple[int, ...] | None


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


def verified_peak(problem: BalancingProblem, layer: int, phy2log: Sequence[int]) -> Fraction:
    """Check a one-layer placement against ``spec`` and return its exact peak GPU load."""
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
    weights = as_fractions(problem.loads[layer].tolist())
    items = [weights[e] / int(counts[0, e]) for e in phy2log]
    gpu_of = [s // problem.slots_per_gpu for s in range(problem.num_replicas)]
    return heaviest_pack(items, gpu_of, problem.num_gpus)


def splits_of(problem: BalancingProblem) -> list[tuple[tuple[int, ...], ...]]:
    if problem.policy is Policy.GLOBAL:
        return [((0,),)]
    return list(group_splits(problem.num_groups, problem.num_nodes))


def optimal_layer(
    problem: BalancingProblem, layer: int, settings: SolverSettings | None = None
) -> LayerAnswer:
    """The exact least peak GPU load of ``layer`` (tiny instances: one joint CP-SAT solve
    per distinct node content)."""
    settings = settings or SolverSettings()
    start = time.perf_counter()
    weights = as_fractions(problem.loads[layer].tolist())
    splits = splits_of(problem)
    if len(splits) > MAX_SPLITS:
        raise ValueError(f"{len(splits)} group splits: too many for the exact layer oracle")
    cache: dict[tuple[int, ...], SolveResult] = {}
    best: tuple[Fraction, Fraction, tuple[tuple[int, ...], ...], list[Solution]] | None = None
    lowest_bound: Fraction | None = None
    for split in splits:
        results = []
        for block in split:
            key = tuple(sorted(block))
            if key not in cache:
                experts = node_experts(problem, block)
                cache[key] = solve_joint(
                    [weights[e] for e in experts],
                    problem.slots_per_node,
                    problem.gpus_per_node,
                    settings=settings,
                )
            results.append(cache[key])
        if any(r.objective is None or r.solution is None for r in results):
            raise RuntimeError("a node of a tiny layer found no solution within the time limit")
        split_objective = max(r.objective for r in results if r.objective is not None)
        split_bound = max(r.bound for r in results)
        lowest_bound = split_bound if lowest_bound is None else min(lowest_bound, split_bound)
        if best is None or split_objective < best[0]:
            best = (
                split_objective,
                split_bound,
                split,
                [r.solution for r in results if r.solution],
            )
    assert best is not None
    assert lowest_bound is not None
    objective, _, split, solutions = best
    phy2log = placement_from_nodes(problem, split, solutions)
    if verified_peak(problem, layer, phy2log) != objective:
        raise AssertionError("the assembled placement does not reach the nodes' optimum")
    status = Status.OPTIMAL if objective == lowest_bound else Status.FEASIBLE
    return LayerAnswer(
        SolveResult(
            "layer",
            status,
            objective,
            lowest_bound,
            None,
            time.perf_counter() - start,
            SOLVER_NAME,
            settings.describe(),
            note="the placement is in LayerAnswer.phy2log",
        ),
        split,
        tuple(phy2log),
    )


def pack_counts(
    exact: Sequence[Fraction], counts: Sequence[int], num_gpus: int
) -> tuple[Fraction, list[int]]:
    """Pack the replicas of ``counts`` (greedy, then exchanges) and the exact peak."""
    labels = replica_listing(counts)
    items = [exact[e] / counts[e] for e in labels]
    integers = scale_to_integers(items).integers
    packing = greedy_packing(integers, num_gpus)
    assert packing is not None
    packing = even_out_by_swaps([float(x) for x in items], packing, num_gpus)
    packing = improve_by_swaps(integers, packing, num_gpus, None)
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
    start = time.perf_counter()
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
            if not donors or n < 2 or time.perf_counter() - start > time_budget_s:
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
        peak, packing = pack_counts(exact, counts, num_gpus)
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


def layer_lower_bound(problem: BalancingProblem, layer: int) -> Fraction:
    """A proven lower bound on the layer's least peak GPU load: the minimum over all
    group splits of the largest per-node ``joint_lower_bound`` (or, with too many
    splits, the cluster-wide average and replication bounds)."""
    weights = as_fractions(problem.loads[layer].tolist())
    if problem.policy is Policy.GLOBAL:
        return joint_lower_bound(weights, problem.num_replicas, problem.num_gpus)
    if count_splits(problem.num_groups, problem.num_nodes) > MAX_SPLITS:
        total = sum(weights, Fraction(0))
        return max(total / problem.num_gpus, optimal_peak(weights, problem.num_replicas))
    cache: dict[tuple[int, ...], Fraction] = {}
    lowest: Fraction | None = None
    for split in splits_of(problem):
        worst = Fraction(0)
        for block in split:
            if block not in cache:
                node = [weights[e] for e in node_experts(problem, block)]
                cache[block] = joint_lower_bound(
                    node, problem.slots_per_node, problem.gpus_per_node
                )
            worst = max(worst, cache[block])
            if lowest is not None and worst >= lowest:
                break
        lowest = worst if lowest is None else min(lowest, worst)
    assert lowest is not None
    return lowest


def certify_layer(
    problem: BalancingProblem, layer: int, split: Sequence[Sequence[int]] | None = None
) -> LayerAnswer:
    """A certified interval for one layer: ``layer_lower_bound`` below, and above the
    peak of a placement built node by node with ``certify_row`` on ``split`` (default:
    the split the oracle's lower bound favours is not searched; groups ``g`` go to node
    ``g // (Gr / N)``)."""
    start = time.perf_counter()
    weights = as_fractions(problem.loads[layer].tolist())
    if split is None:
        per_node = problem.packing_groups // problem.packing_nodes
        split = [
            tuple(range(n * per_node, (n + 1) * per_node)) for n in range(problem.packing_nodes)
        ]
    solutions = []
    for block in split:
        experts = node_experts(problem, block)
        row = certify_row(
            [weights[e] for e in experts], problem.slots_per_node, problem.gpus_per_node
        )
        assert row.solution is not None
        solutions.append(row.solution)
    phy2log = placement_from_nodes(problem, split, solutions)
    upper = verified_peak(problem, layer, phy2log)
    lower = layer_lower_bound(problem, layer)
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
            note="the placement is in LayerAnswer.phy2log",
        ),
        tuple(tuple(b) for b in split),
        tuple(phy2log),
    )
