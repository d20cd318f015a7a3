"""The fewest transfers a rebalance needs when its peak may exceed the best by ``eps``.

For one layer with an old placement ``previous[l]`` and new loads ``w``: over every
valid placement of the cluster (counts and slots both free) whose peak GPU load is at
most ``budget = (1 + eps) * best known peak``, the least number of transfers
(``spec.migration``: (expert, GPU) pairs held now and not before).

The problem splits like the relabeling of ``impl.migration``: a placement puts each
block of groups (one block per node, under the hierarchical policy) on one node, and
once the split and the matching of blocks to nodes are fixed, the nodes are
independent problems. So the optimum is the least, over the splits, of a least-cost
matching of blocks to nodes whose costs are the optima of (block, node) problems; a
lower bound on every (block, node) problem gives a lower bound the same way.

One (block, node) problem, with CP-SAT (``solve_node``): ``x[g][e]`` replicas of ``e`` on
GPU ``g`` of the node, ``c[e] = sum_g x[g][e] >= 1``, ``R / P`` per GPU, presence
``y[g][e] = (x >= 1)``; the load ``e`` puts on ``g`` is ``w_e * x / c``, given by a table
over ``(c, x)`` in integers scaled by the lcm of every count and denominator (exactly
when that stays below ``INTEGER_BUDGET``, else at a power-of-two resolution with the
limit relaxed by the rounding, so that the bound stays proven); every GPU at most the
budget; minimise the presences the old placement lacks. Every solution is rebuilt,
checked with ``spec`` and its peak computed exactly before it counts.

- ``fewest_transfers_exact``: every (block, node) problem solved; for tiny layers.
- ``fewest_transfers_interval``: at real sizes. Each (block, node) problem has an
  analytical lower bound (an expert of load ``w`` needs at least ``ceil(w / budget)``
  GPUs, since a GPU carries at most ``budget`` of it, so that many less the node's GPUs
  that held it are new presences; a block whose joint bound exceeds the budget cannot
  go anywhere); CP-SAT tightens the problems of the most promising splits and of the
  best candidate's, and builds placements. The interval is [least over splits, best
  placement], the placements being the old one, the caller's candidates and the
  oracle's own.
- ``tradeoff_curve``: the answer for each of a list of ``eps``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from ortools.sat.python import cp_model
from scipy.optimize import linear_sum_assignment

from oracle.cpsat import SOLVER_NAME, SolverSettings, integer_bound, solve
from oracle.exact import INTEGER_BUDGET, as_fractions
from oracle.joint import joint_lower_bound, replica_listing
from oracle.pipeline import (
    MAX_SPLITS,
    certify_layer,
    certify_row,
    node_experts,
    optimal_layer,
    split_count,
    splits_of,
)
from oracle.result import SolveResult, Status
from spec.migration import (
    count_transfers,
    exact_gpu_loads,
    gpu_expert_counts,
    validate_placement,
)
from spec.problem import BalancingProblem

IntArray = npt.NDArray[np.int64]
Split = tuple[tuple[int, ...], ...]

IMPOSSIBLE = 2**40  # a matching cost that marks a (block, node) pair as infeasible


@dataclass(frozen=True)
class MigrationAnswer:
    """An oracle answer on transfers: ``result.bound <= fewest <= result.objective``
    transfers for a peak at most ``budget``; ``phy2log`` (one layer) reaches
    ``result.objective``."""

    result: SolveResult
    budget: Fraction
    phy2log: tuple[int, ...] | None


def peak_budget(best_peak: Fraction, eps: Fraction | float | int) -> Fraction:
    """``(1 + eps) * best_peak``, exactly (a float ``eps`` is read as its exact value)."""
    slack = Fraction(eps)
    if slack < 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    return (1 + slack) * Fraction(best_peak)


def single_layer(problem: BalancingProblem, layer: int) -> BalancingProblem:
    return BalancingProblem(
        problem.loads[layer : layer + 1],
        problem.num_replicas,
        problem.num_groups,
        problem.num_nodes,
        problem.num_gpus,
    )


def placement_peak(problem: BalancingProblem, layer: int, phy2log_row: Sequence[int]) -> Fraction:
    """The exact peak GPU load of a one-layer placement under ``problem``'s loads."""
    row = np.asarray([phy2log_row], dtype=np.int64)
    return max(exact_gpu_loads(problem.loads[layer : layer + 1], row, problem.num_gpus)[0])


def row_transfers(problem: BalancingProblem, old_row: IntArray, new_row: IntArray) -> int:
    return count_transfers(
        np.asarray([old_row], dtype=np.int64),
        np.asarray([new_row], dtype=np.int64),
        num_experts=problem.num_experts,
        num_gpus=problem.num_gpus,
    ).total


def checked_row(problem: BalancingProblem, layer: int, row: Sequence[int], name: str) -> IntArray:
    """``row`` after checking it is a valid one-layer placement (ValueError otherwise)."""
    array = validate_placement(
        single_layer(problem, layer), np.asarray([row], dtype=np.int64), name
    )
    result: IntArray = array[0]
    return result


def previous_row(problem: BalancingProblem, layer: int, previous: object) -> IntArray:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < problem.num_layers:
        raise ValueError(f"layer must be an int in [0, {problem.num_layers}), got {layer!r}")
    result: IntArray = validate_placement(problem, previous, "previous")[layer]
    return result


def presences_needed(weights: Sequence[Fraction], budget: Fraction) -> list[int]:
    """For each expert, the fewest GPUs that can hold it within ``budget``:
    ``ceil(w / budget)``, and at least 1 (``IMPOSSIBLE`` when ``budget`` is 0 and
    ``w > 0``)."""
    needed = []
    for w in weights:
        if w == 0:
            needed.append(1)
        elif budget <= 0:
            needed.append(IMPOSSIBLE)
        else:
            needed.append(max(1, math.ceil(w / budget)))
    return needed


@dataclass(frozen=True)
class NodeAnswer:
    """One (block, node) problem: at least ``bound`` transfers, and ``transfers`` reached
    by ``gpu_experts`` (the experts of each GPU of the node, as indices into the block);
    ``feasible`` False when it is proven that no placement meets the budget."""

    feasible: bool
    bound: int
    transfers: int | None
    gpu_experts: tuple[tuple[int, ...], ...] | None
    proved: bool


def block_presences(
    weights: Sequence[Fraction], num_gpus: int, num_slots: int, budget: Fraction
) -> list[int] | None:
    """What a node of ``num_gpus`` GPUs and ``num_slots`` slots must give a block of
    experts within ``budget``: the fewest GPUs each expert is on
    (``presences_needed``); None when no node can hold the block (an expert needs more
    GPUs than the node has, the presences more slots, or the joint bound exceeds the
    budget). It does not depend on the node's old contents."""
    need = presences_needed(weights, budget)
    if max(need) > num_gpus or sum(need) > num_slots:
        return None
    if joint_lower_bound(list(weights), num_slots, num_gpus) > budget:
        return None
    return need


def presences_bound(need: Sequence[int], had: Sequence[int]) -> int:
    """New presences at least: each expert's needed GPUs less those that held it."""
    return sum(max(0, n - h) for n, h in zip(need, had, strict=True))


def analytical_node_bound(
    weights: Sequence[Fraction],
    old_held: Sequence[Sequence[bool]],
    num_slots: int,
    budget: Fraction,
) -> int | None:
    """A lower bound on one (block, node) problem's transfers; None when it is proven
    infeasible (an expert needs more GPUs than the node has, the presences need more
    slots than it has, or the joint bound exceeds the budget)."""
    gpus = len(old_held)
    need = block_presences(weights, gpus, num_slots, budget)
    if need is None:
        return None
    had = [sum(1 for g in range(gpus) if old_held[g][e]) for e in range(len(weights))]
    return presences_bound(need, had)


def node_loads(weights: Sequence[Fraction], gpu_experts: Sequence[Sequence[int]]) -> list[Fraction]:
    counts = [0] * len(weights)
    for experts in gpu_experts:
        for e in experts:
            counts[e] += 1
    return [sum((weights[e] / counts[e] for e in experts), Fraction(0)) for experts in gpu_experts]


def solve_node(
    weights: Sequence[Fraction],
    old_held: Sequence[Sequence[bool]],
    num_slots: int,
    budget: Fraction,
    settings: SolverSettings,
    hint: Sequence[Sequence[int]] | None = None,
) -> NodeAnswer:
    """The fewest transfers that put ``len(weights)`` experts on the node's GPUs
    (``old_held[g][e]``: GPU ``g`` held expert ``e`` before) within ``budget``."""
    analytical = analytical_node_bound(weights, old_held, num_slots, budget)
    if analytical is None:
        return NodeAnswer(False, 0, None, None, True)
    n, gpus = len(weights), len(old_held)
    cap = num_slots // gpus
    most = num_slots - n + 1
    common = 1
    for c in range(1, most + 1):
        common = math.lcm(common, c)
    for w in weights:
        common = math.lcm(common, w.denominator)
    total = sum(weights, Fraction(0))
    is_exact = total * common <= INTEGER_BUDGET
    scale = Fraction(common)
    if not is_exact:
        scale = Fraction(1)
        while total * scale * 2 <= INTEGER_BUDGET:
            scale *= 2
        while total * scale > INTEGER_BUDGET:
            scale /= 2

    def share(e: int, c: int, x: int) -> int:
        return round(weights[e] * x / c * scale)

    heaviest = sum(share(e, 1, 1) for e in range(n))  # no GPU load can exceed it
    hint_fits = hint is not None and max(node_loads(weights, hint)) <= budget

    def attempt(limit: int, time_limit_s: float) -> tuple[int, int, list[list[int]] | None]:
        """(status code, proven bound, experts per GPU) with every GPU load <= limit."""
        model = cp_model.CpModel()
        per_gpu = min(cap, most)
        count = [model.new_int_var(1, most, f"c{e}") for e in range(n)]
        held = [[model.new_int_var(0, per_gpu, f"x{g}_{e}") for e in range(n)] for g in range(gpus)]
        present = [[model.new_bool_var(f"y{g}_{e}") for e in range(n)] for g in range(gpus)]
        load = [
            [model.new_int_var(0, share(e, 1, 1), f"t{g}_{e}") for e in range(n)]
            for g in range(gpus)
        ]
        for e in range(n):
            model.add(sum(held[g][e] for g in range(gpus)) == count[e])
            table = [
                (c, x, share(e, c, x)) for c in range(1, most + 1) for x in range(min(c, cap) + 1)
            ]
            for g in range(gpus):
                model.add_allowed_assignments([count[e], held[g][e], load[g][e]], table)
                model.add(held[g][e] >= present[g][e])
                model.add(held[g][e] <= per_gpu * present[g][e])
        for g in range(gpus):
            model.add(sum(held[g]) == cap)
            model.add(sum(load[g]) <= min(limit, heaviest))
        arrivals = [present[g][e] for g in range(gpus) for e in range(n) if not old_held[g][e]]
        if arrivals:
            model.add(sum(arrivals) >= analytical)
            model.minimize(sum(arrivals))
        if hint is not None:
            totals = [sum(h.count(e) for h in hint) for e in range(n)]
            for e in range(n):
                model.add_hint(count[e], totals[e])
                for g in range(gpus):
                    here = list(hint[g]).count(e)
                    model.add_hint(held[g][e], here)
                    model.add_hint(present[g][e], here > 0)
                    model.add_hint(load[g][e], share(e, max(totals[e], 1), here))
        local = SolverSettings(
            time_limit_s=time_limit_s, seed=settings.seed, workers=settings.workers
        )
        solver, code = solve(local, model, hint_fits, "migration")
        if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return code, integer_bound(solver) if arrivals else 0, None
        bound = integer_bound(solver) if arrivals else 0
        experts = [
            [e for e in range(n) for _ in range(int(solver.value(held[g][e])))] for g in range(gpus)
        ]
        return code, bound, experts

    def transfers_of(experts: Sequence[Sequence[int]]) -> int:
        return sum(1 for g in range(gpus) for e in set(experts[g]) if not old_held[g][e])

    # Exact integers: the limit is the budget rounded down. Rounded shares (each off by
    # at most 1/2, at most ``cap`` on a GPU): the limit relaxed by cap / 2 keeps every
    # placement within the budget, so the bound stays proven; a solution is kept only if
    # its exact peak meets the budget, else a second solve with the limit tightened by
    # cap / 2 looks for one that does.
    relaxed = math.floor(budget * scale + (0 if is_exact else Fraction(cap, 2)))
    code, bound, experts = attempt(relaxed, settings.time_limit_s)
    if code == cp_model.INFEASIBLE:
        return NodeAnswer(False, 0, None, None, True)
    bound = max(bound, analytical)
    if experts is not None and max(node_loads(weights, experts)) > budget:
        if is_exact:
            raise AssertionError("a CP-SAT placement exceeds the budget on exact integers")
        tight = math.floor(budget * scale - Fraction(cap, 2))
        second = attempt(tight, settings.time_limit_s) if tight >= 0 else None
        experts = second[2] if second is not None else None
    if experts is None:
        return NodeAnswer(True, bound, None, None, False)
    if max(node_loads(weights, experts)) > budget:
        raise AssertionError("a CP-SAT placement exceeds the budget after tightening")
    transfers = transfers_of(experts)
    bound = min(bound, transfers)
    return NodeAnswer(True, bound, transfers, tuple(tuple(g) for g in experts), bound == transfers)


def place_with_counts(
    weights: Sequence[Fraction],
    old_held: Sequence[Sequence[bool]],
    counts: Sequence[int],
    budget: Fraction,
    settings: SolverSettings,
    hint: Sequence[Sequence[int]] | None = None,
) -> tuple[int, tuple[tuple[int, ...], ...]] | None:
    """The fewest transfers found for the node with the replica counts fixed (then each
    replica's load ``w / c`` is a constant and the model is linear), and the placement;
    None when none is found within the time limit. Not a bound: the counts are fixed."""
    n, gpus = len(weights), len(old_held)
    cap = sum(counts) // gpus
    loads = [weights[e] / counts[e] for e in range(n)]
    total = sum(weights, Fraction(0))
    scale = Fraction(1)
    if total > 0:
        while total * scale * 2 <= INTEGER_BUDGET:
            scale *= 2
        while total * scale > INTEGER_BUDGET:
            scale /= 2
    # Each rounded replica load is off by at most 1/2 and a GPU holds ``cap`` of them:
    # a limit tightened by cap / 2 admits only placements within the budget.
    limit = math.floor(budget * scale - Fraction(cap, 2))
    if limit < 0:
        return None
    model = cp_model.CpModel()
    held = [
        [model.new_int_var(0, min(cap, counts[e]), f"x{g}_{e}") for e in range(n)]
        for g in range(gpus)
    ]
    present = [[model.new_bool_var(f"y{g}_{e}") for e in range(n)] for g in range(gpus)]
    scaled = [round(x * scale) for x in loads]
    for e in range(n):
        model.add(sum(held[g][e] for g in range(gpus)) == counts[e])
        for g in range(gpus):
            model.add(held[g][e] >= present[g][e])
            model.add(held[g][e] <= cap * present[g][e])
    for g in range(gpus):
        model.add(sum(held[g]) == cap)
        model.add(sum(scaled[e] * held[g][e] for e in range(n)) <= limit)
    arrivals = [present[g][e] for g in range(gpus) for e in range(n) if not old_held[g][e]]
    if arrivals:
        model.minimize(sum(arrivals))
    if hint is not None:
        for g in range(gpus):
            for e in range(n):
                here = list(hint[g]).count(e)
                model.add_hint(held[g][e], here)
                model.add_hint(present[g][e], here > 0)
    solver, code = solve(settings, model, False, "migration with fixed counts")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    experts = tuple(
        tuple(e for e in range(n) for _ in range(int(solver.value(held[g][e]))))
        for g in range(gpus)
    )
    if max(node_loads(weights, experts)) > budget:
        raise AssertionError("a fixed-count placement exceeds the budget")
    transfers = sum(1 for g in range(gpus) for e in set(experts[g]) if not old_held[g][e])
    return transfers, experts


@dataclass
class LayerSearch:
    """The (block, node) problems of one layer and what is known about each."""

    problem: BalancingProblem
    layer: int
    old: IntArray
    budget: Fraction
    settings: SolverSettings
    weights: list[Fraction]
    analytical: dict[tuple[tuple[int, ...], int], int | None]
    solved: dict[tuple[tuple[int, ...], int], NodeAnswer]
    balanced: dict[tuple[int, ...], list[list[int]]]
    presences: dict[tuple[int, ...], list[int] | None]  # block_presences, per block
    gpus_holding: IntArray  # [N, E]: GPUs of each node that held each expert before

    @classmethod
    def start(
        cls,
        problem: BalancingProblem,
        layer: int,
        old: IntArray,
        budget: Fraction,
        settings: SolverSettings,
        presences: dict[tuple[int, ...], list[int] | None] | None = None,
    ) -> LayerSearch:
        """``presences``: a cache of ``block_presences`` to share between searches of the
        same layer loads and budget (they do not depend on the old placement)."""
        weights = as_fractions(problem.loads[layer].tolist())
        held = gpu_expert_counts(
            np.asarray([old], dtype=np.int64), problem.num_gpus, problem.num_experts
        )[0]
        holding = (held > 0).reshape(problem.packing_nodes, -1, problem.num_experts).sum(1)
        return cls(
            problem,
            layer,
            old,
            budget,
            settings,
            weights,
            {},
            {},
            {},
            {} if presences is None else presences,
            holding.astype(np.int64),
        )

    def block_experts(self, block: Sequence[int]) -> list[int]:
        return node_experts(self.problem, block)

    def node_gpus(self, node: int) -> range:
        per_node = self.problem.gpus_per_node
        return range(node * per_node, (node + 1) * per_node)

    def old_held(self, block: Sequence[int], node: int) -> list[list[bool]]:
        cap = self.problem.slots_per_gpu
        experts = self.block_experts(block)
        held = []
        for gpu in self.node_gpus(node):
            here = set(self.old[gpu * cap : (gpu + 1) * cap].tolist())
            held.append([e in here for e in experts])
        return held

    def balanced_placement(self, block: tuple[int, ...]) -> list[list[int]]:
        """A low-peak placement of the block on a node (``certify_row``), as the experts
        (block indices) of each GPU: counts and a start for ``place_with_counts``."""
        if block not in self.balanced:
            weights = [self.weights[e] for e in self.block_experts(block)]
            answer = certify_row(weights, self.problem.slots_per_node, self.problem.gpus_per_node)
            assert answer.solution is not None
            assert answer.solution.counts is not None
            assert answer.solution.pack_of is not None
            gpu_experts: list[list[int]] = [[] for _ in range(self.problem.gpus_per_node)]
            listing = replica_listing(answer.solution.counts)
            for label, gpu in zip(listing, answer.solution.pack_of, strict=True):
                gpu_experts[gpu].append(label)
            self.balanced[block] = gpu_experts
        return self.balanced[block]

    def lower(self, block: tuple[int, ...], node: int) -> int | None:
        """The best known lower bound of a (block, node) problem (None: infeasible)."""
        key = (block, node)
        if key in self.solved:
            answer = self.solved[key]
            return answer.bound if answer.feasible else None
        if key not in self.analytical:
            experts = self.block_experts(block)
            if block not in self.presences:
                self.presences[block] = block_presences(
                    [self.weights[e] for e in experts],
                    self.problem.gpus_per_node,
                    self.problem.slots_per_node,
                    self.budget,
                )
            need = self.presences[block]
            self.analytical[key] = (
                None
                if need is None
                else presences_bound(need, self.gpus_holding[node, experts].tolist())
            )
        return self.analytical[key]

    def solve(
        self,
        block: tuple[int, ...],
        node: int,
        hint: Sequence[Sequence[int]] | None,
        exhaustive: bool,
    ) -> None:
        """Solve a (block, node) problem: exactly (``exhaustive``), or for a placement
        with the hint's replica counts (none without a hint)."""
        key = (block, node)
        if key in self.solved:
            return
        lower = self.lower(block, node)
        weights = [self.weights[e] for e in self.block_experts(block)]
        held = self.old_held(block, node)
        if lower is None:
            self.solved[key] = NodeAnswer(False, 0, None, None, True)
        elif exhaustive:
            self.solved[key] = solve_node(
                weights, held, self.problem.slots_per_node, self.budget, self.settings, hint
            )
        elif hint is not None:
            counts = [sum(list(h).count(e) for h in hint) for e in range(len(weights))]
            found = place_with_counts(weights, held, counts, self.budget, self.settings, hint)
            if found is not None:
                transfers, experts = found
                self.solved[key] = NodeAnswer(True, lower, transfers, experts, False)

    def matching(
        self, split: Split, cost: Callable[[tuple[int, ...], int], int | None]
    ) -> tuple[int, list[int]]:
        """The least total of ``cost(block, node)`` over matchings of the split's blocks
        to the nodes, and the node of each block (``IMPOSSIBLE`` or more: none works)."""
        nodes = len(split)
        table = np.zeros((nodes, nodes), dtype=np.int64)
        for i, block in enumerate(split):
            for node in range(nodes):
                value = cost(block, node)
                table[i, node] = IMPOSSIBLE if value is None else value
        rows, columns = linear_sum_assignment(table)
        return int(table[rows, columns].sum()), [int(c) for c in columns]

    def assemble(self, split: Split, node_of: Sequence[int]) -> list[int] | None:
        """The placement of the solved problems of ``split`` (None if one has none)."""
        cap = self.problem.slots_per_gpu
        row = [-1] * self.problem.num_replicas
        for block, node in zip(split, node_of, strict=True):
            answer = self.solved.get((block, node))
            if answer is None or answer.gpu_experts is None:
                return None
            experts = self.block_experts(block)
            for gpu, held in zip(self.node_gpus(node), answer.gpu_experts, strict=True):
                row[gpu * cap : (gpu + 1) * cap] = [experts[i] for i in held]
        return row


def split_of_row(problem: BalancingProblem, row: Sequence[int]) -> tuple[Split, list[int]]:
    """The split of a valid placement's groups over the nodes, in ``group_splits``' form,
    and the node of each of its blocks."""
    if problem.packing_nodes == 1:
        return ((0,),), [0]
    groups_on: dict[int, set[int]] = {}
    for slot, e in enumerate(row):
        groups_on.setdefault(slot // problem.slots_per_node, set()).add(e // problem.group_size)
    blocks = sorted((tuple(sorted(g)), node) for node, g in groups_on.items())
    return tuple(b for b, _ in blocks), [node for _, node in blocks]


def node_hint(
    problem: BalancingProblem, row: Sequence[int], block: Sequence[int], node: int
) -> list[list[int]] | None:
    """The candidate's contents of ``node`` as block indices, if it holds ``block`` there."""
    experts = node_experts(problem, block)
    index = {e: i for i, e in enumerate(experts)}
    cap = problem.slots_per_gpu
    per_node = problem.gpus_per_node
    hint = []
    for gpu in range(node * per_node, (node + 1) * per_node):
        held = row[gpu * cap : (gpu + 1) * cap]
        if any(e not in index for e in held):
            return None
        hint.append([index[e] for e in held])
    return hint


def fewest_transfers(
    problem: BalancingProblem,
    layer: int,
    previous: object,
    budget: Fraction,
    *,
    candidates: Sequence[Sequence[int]] = (),
    settings: SolverSettings | None = None,
    exhaustive: bool,
    splits_to_solve: int = 1,
) -> MigrationAnswer:
    """The shared search of ``fewest_transfers_exact`` (``exhaustive``) and
    ``fewest_transfers_interval``."""
    settings = settings or SolverSettings()
    start = time.perf_counter()
    old = previous_row(problem, layer, previous)
    budget = Fraction(budget)
    search = LayerSearch.start(problem, layer, old, budget, settings)
    checked = [
        checked_row(problem, layer, list(c), f"candidates[{i}]") for i, c in enumerate(candidates)
    ]
    # Explicit placements: the old one and the candidates, if they meet the budget.
    best: tuple[int, list[int]] | None = None
    for explicit in [old, *checked]:
        if placement_peak(problem, layer, explicit.tolist()) <= budget:
            transfers = row_transfers(problem, old, explicit)
            if best is None or transfers < best[0]:
                best = (transfers, explicit.tolist())
    too_many = split_count(problem) > MAX_SPLITS
    if exhaustive and too_many:
        raise ValueError("too many group splits for the exhaustive migration oracle")
    splits = [] if too_many else splits_of(problem)

    # Which splits CP-SAT works on: all (exhaustive), or the most promising by the
    # analytical bounds and the split of the best explicit placement.
    ranked = sorted(
        (search.matching(split, search.lower)[0], index) for index, split in enumerate(splits)
    )
    chosen: list[tuple[Split, list[int] | None]] = []
    if exhaustive:
        chosen = [(split, None) for split in splits]
    else:
        chosen = [(splits[i], None) for value, i in ranked[:splits_to_solve] if value < IMPOSSIBLE]
        if best is not None and best[0] > 0:
            chosen.append(split_of_row(problem, best[1]))
    hint_rows = [r.tolist() for r in checked] + ([best[1]] if best is not None else [])
    for split, fixed in chosen:
        node_of = fixed if fixed is not None else search.matching(split, search.lower)[1]
        pairs = (
            [(block, node) for block in split for node in range(len(split))]
            if exhaustive
            else list(zip(split, node_of, strict=True))
        )
        for block, node in pairs:
            hint = next(
                (h for r in hint_rows if (h := node_hint(problem, r, block, node)) is not None),
                None,
            )
            if hint is None and not exhaustive:
                hint = search.balanced_placement(block)
            search.solve(block, node, hint, exhaustive)

        def solved_cost(block: tuple[int, ...], node: int) -> int | None:
            answer = search.solved.get((block, node))
            return None if answer is None else answer.transfers

        total, node_of = search.matching(split, solved_cost)
        if total < IMPOSSIBLE:
            built = search.assemble(split, node_of)
            assert built is not None
            verified = checked_row(problem, layer, built, "the oracle's placement")
            if placement_peak(problem, layer, built) > budget:
                raise AssertionError("the oracle's placement exceeds the budget")
            transfers = row_transfers(problem, old, verified)
            if transfers != total:
                raise AssertionError(f"node transfers sum to {total}, spec counts {transfers}")
            if best is None or transfers < best[0]:
                best = (transfers, built)

    if too_many:
        lower = relaxed_lower_bound(search)
    else:
        values = [search.matching(split, search.lower)[0] for split in splits]
        least = min(values, default=IMPOSSIBLE)
        lower = None if least >= IMPOSSIBLE else least
    elapsed = time.perf_counter() - start
    name = SOLVER_NAME + (" per (block, node)" if exhaustive else " + analytical bounds")
    parameters = settings.describe() | {
        "splits_to_solve": splits_to_solve,
        "exhaustive": exhaustive,
    }
    if lower is None:
        if best is not None:
            raise AssertionError("a placement meets a budget proven infeasible")
        result = SolveResult.infeasible(
            "migration",
            Fraction(0),
            elapsed,
            name,
            parameters,
            note="no placement meets the budget",
        )
        return MigrationAnswer(result, budget, None)
    if best is None:
        result = SolveResult.unknown("migration", Fraction(lower), elapsed, name, parameters)
        return MigrationAnswer(result, budget, None)
    lower = min(lower, best[0])
    status = Status.OPTIMAL if lower == best[0] else Status.FEASIBLE
    result = SolveResult(
        "migration",
        status,
        Fraction(best[0]),
        Fraction(lower),
        None,
        elapsed,
        name,
        parameters,
        note="the placement is in MigrationAnswer.phy2log",
    )
    return MigrationAnswer(result, budget, tuple(best[1]))


def relaxed_lower_bound(search: LayerSearch) -> int | None:
    """Too many splits to list: groups to nodes as a transportation problem with the
    per-group bounds, which only drops constraints."""
    problem = search.problem
    groups, nodes = problem.packing_groups, problem.packing_nodes
    columns = [n for n in range(nodes) for _ in range(groups // nodes)]
    table = np.zeros((groups, len(columns)), dtype=np.int64)
    for group in range(groups):
        experts = node_experts(problem, (group,))
        need = presences_needed([search.weights[e] for e in experts], search.budget)
        for j, node in enumerate(columns):
            held = search.old_held((group,), node)
            if max(need) > problem.gpus_per_node:
                table[group, j] = IMPOSSIBLE
                continue
            table[group, j] = sum(
                max(0, need[i] - sum(row[i] for row in held)) for i in range(len(experts))
            )
    rows, cols = linear_sum_assignment(table)
    value = int(table[rows, cols].sum())
    return None if value >= IMPOSSIBLE else value


def analytical_lower_bounds(
    problem: BalancingProblem,
    layer: int,
    previous_rows: Sequence[Sequence[int]],
    budget: Fraction,
) -> list[int | None]:
    """For each old placement of ``layer`` (one ``phy2log`` row each), the analytical
    lower bound of ``fewest_transfers_interval`` on the fewest transfers to a placement
    with peak at most ``budget``, without any CP-SAT (None: no placement meets the
    budget). The bound of ``fewest_transfers_interval`` is at least this one; the
    requirements of each block of groups are computed once for all the rows."""
    budget = Fraction(budget)
    settings = SolverSettings()
    presences: dict[tuple[int, ...], list[int] | None] = {}
    too_many = split_count(problem) > MAX_SPLITS
    splits = [] if too_many else splits_of(problem)
    bounds: list[int | None] = []
    for index, row in enumerate(previous_rows):
        old = checked_row(problem, layer, list(row), f"previous_rows[{index}]")
        search = LayerSearch.start(problem, layer, old, budget, settings, presences)
        if too_many:
            bounds.append(relaxed_lower_bound(search))
            continue
        least = min((search.matching(split, search.lower)[0] for split in splits), default=0)
        bounds.append(None if least >= IMPOSSIBLE else least)
    return bounds


def fewest_transfers_exact(
    problem: BalancingProblem,
    layer: int,
    previous: object,
    budget: Fraction,
    settings: SolverSettings | None = None,
) -> MigrationAnswer:
    """The least number of transfers from ``previous[layer]`` to any placement of
    ``layer`` with peak at most ``budget``: every (block, node) problem solved with
    CP-SAT (tiny layers). ``OPTIMAL`` only when every problem that matters was proved."""
    return fewest_transfers(problem, layer, previous, budget, settings=settings, exhaustive=True)


def fewest_transfers_interval(
    problem: BalancingProblem,
    layer: int,
    previous: object,
    budget: Fraction,
    candidates: Sequence[Sequence[int]] = (),
    *,
    settings: SolverSettings | None = None,
    splits_to_solve: int = 1,
) -> MigrationAnswer:
    """A certified interval on the fewest transfers for a peak at most ``budget`` at real
    sizes: analytical bounds for every (block, node) problem, CP-SAT (with
    ``settings.time_limit_s`` each) on the nodes of the ``splits_to_solve`` most
    promising splits and of the best explicit placement's split."""
    return fewest_transfers(
        problem,
        layer,
        previous,
        budget,
        candidates=candidates,
        settings=settings,
        exhaustive=False,
        splits_to_solve=splits_to_solve,
    )


def best_known_peak(
    problem: BalancingProblem,
    layer: int,
    candidates: Sequence[Sequence[int]] = (),
    *,
    exact: bool = False,
    settings: SolverSettings | None = None,
) -> Fraction:
    """The lowest peak known for ``layer``: the proven optimum when ``exact`` (tiny
    layers), else the least of ``certify_layer``'s placement and the candidates'."""
    if exact:
        answer = optimal_layer(problem, layer, settings)
        if answer.result.status is not Status.OPTIMAL or answer.result.objective is None:
            raise RuntimeError("the exact layer oracle did not prove its optimum")
        return answer.result.objective
    certified = certify_layer(problem, layer).result.objective
    assert certified is not None
    peaks = [
        placement_peak(problem, layer, checked_row(problem, layer, c, "candidate").tolist())
        for c in candidates
    ]
    return min([certified, *peaks])


@dataclass(frozen=True)
class TradeoffPoint:
    """The fewest transfers for a peak at most ``(1 + eps) * best`` lie in
    ``[lower, upper]`` (``upper`` None when no placement within the budget is known,
    ``lower`` None when none exists)."""

    eps: Fraction
    budget: Fraction
    lower: int | None
    upper: int | None
    status: Status


def tradeoff_curve(
    problem: BalancingProblem,
    layer: int,
    previous: object,
    eps_values: Sequence[Fraction | float | int],
    *,
    best_peak: Fraction | None = None,
    candidates: Sequence[Sequence[int]] = (),
    exact: bool = False,
    settings: SolverSettings | None = None,
    splits_to_solve: int = 1,
) -> list[TradeoffPoint]:
    """Peak against transfers for one layer: for each ``eps``, the fewest transfers of a
    placement with peak at most ``(1 + eps)`` times the best known (``best_peak``, or
    ``best_known_peak``), exactly when ``exact``, else as a certified interval."""
    best = (
        best_peak
        if best_peak is not None
        else best_known_peak(problem, layer, candidates, exact=exact, settings=settings)
    )
    points = []
    for eps in eps_values:
        budget = peak_budget(best, eps)
        if exact:
            answer = fewest_transfers_exact(problem, layer, previous, budget, settings)
        else:
            answer = fewest_transfers_interval(
                problem,
                layer,
                previous,
                budget,
                candidates,
                settings=settings,
                splits_to_solve=splits_to_solve,
            )
        result = answer.result
        lower = None if result.status is Status.INFEASIBLE else int(result.bound)
        upper = None if result.objective is None else int(result.objective)
        points.append(TradeoffPoint(Fraction(eps), budget, lower, upper, result.status))
    return points
