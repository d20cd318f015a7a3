"""A certified lower bound on the transfers a budgeted rebalance needs, strong enough to
compare with real answers (docs/migration.md, section 12).

The bound keeps the structure of ``oracle.migration``: groups split over the nodes and
the blocks matched to the nodes, each (block, node) problem bounded on its own, the
least over splits and matchings taken. What is new is the per-node bound, a **load
flow** relaxation that keeps which GPU held which expert:

    every expert ``e`` of the block sends its new load ``w_e`` to the node's GPUs, each
    GPU receives at most the peak budget ``B``; load sent along a pair ``(g, e)`` that
    the old placement had is free; a GPU that lacked ``e`` must become a new presence
    of ``e`` (a transfer) to receive any of it, and then carries at most ``min(w_e, B)``
    of it, so each unit sent there costs at least ``1 / min(w_e, B)`` transfers.

Every placement with peak at most ``B`` gives such a flow (a GPU carries ``w_e x / c``
of ``e`` with ``x`` replicas of ``c``, at most ``B`` in all), whose cost is at most its
transfers; so the least cost of the flow, a min-cost flow problem, is a lower bound.
It is solved exactly in integers after a rounding that can only lower it: the loads are
counted in units of ``B / SCALE`` rounded down, the GPU capacity is exactly ``SCALE``
units, and the unit costs are rounded down at a resolution of ``1 / COST_SCALE``
transfer (``ortools``' ``SimpleMinCostFlow``). A block that cannot be routed at all is
proven infeasible on that node. The per-node bound is the larger of this and the
analytical one (``ceil(w / B)`` GPUs per expert less those that held it).

Only the (block, node) pairs of the currently best matchings are tightened with the
flow (``max_rounds`` times, the best matching recomputed after each): every other pair
keeps its analytical bound, which is also valid, so the least over all matchings is a
lower bound at every round.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from ortools.graph.python import min_cost_flow
from scipy.optimize import linear_sum_assignment

from oracle.cpsat import SolverSettings
from oracle.migration import IMPOSSIBLE, LayerSearch, checked_row
from oracle.pipeline import MAX_SPLITS, split_count, splits_of
from spec.problem import BalancingProblem

IntArray = npt.NDArray[np.int64]

SCALE = 1 << 20  # load units per budget
COST_SCALE = 1 << 20  # cost units per transfer
MAX_PERMUTED_NODES = 6  # up to here every matching is listed; beyond, one assignment each


def flow_node_bound(
    weights: Sequence[Fraction], old_held: Sequence[Sequence[bool]], budget: Fraction
) -> int | None:
    """The load-flow lower bound on one (block, node) problem's transfers: ``weights``
    of the block's experts, ``old_held[g][e]`` whether GPU ``g`` of the node held expert
    ``e``; None when no flow exists (no placement meets ``budget`` on this node)."""
    gpus, experts = len(old_held), len(weights)
    if budget <= 0:
        return None if any(w > 0 for w in weights) else 0
    supply = [math.floor(w * SCALE / budget) for w in weights]
    if sum(supply) > gpus * SCALE:
        return None
    flow = min_cost_flow.SimpleMinCostFlow()
    sink = experts + gpus
    units = np.asarray(supply, dtype=np.int64)
    carry = np.minimum(units, SCALE)
    # 1 / min(w, B) transfers per unit of B / SCALE, rounded down.
    unit_cost = (COST_SCALE * SCALE) // np.maximum(carry, 1)
    held = np.asarray(old_held, dtype=np.bool_).reshape(gpus, experts)
    used = np.flatnonzero(units > 0)
    tails = np.repeat(used, gpus)
    heads = experts + np.tile(np.arange(gpus), used.size)
    capacities = np.repeat(carry[used], gpus)
    costs = np.where(held[:, used].T.ravel(), 0, np.repeat(unit_cost[used], gpus))
    flow.add_arcs_with_capacity_and_unit_cost(
        np.concatenate([tails, experts + np.arange(gpus)]),
        np.concatenate([heads, np.full(gpus, sink)]),
        np.concatenate([capacities, np.full(gpus, SCALE)]),
        np.concatenate([costs, np.zeros(gpus, dtype=np.int64)]),
    )
    flow.set_nodes_supplies(np.arange(experts), units)
    flow.set_node_supply(sink, -sum(supply))
    status = flow.solve()
    if status == flow.INFEASIBLE:
        return None
    if status != flow.OPTIMAL:
        raise RuntimeError(f"min-cost flow ended with status {status}")
    # The unit costs were floor(COST_SCALE * SCALE / units) >= COST_SCALE * SCALE / (units + 1)
    # only when rounded; dividing by COST_SCALE * SCALE and taking the ceiling of
    # the exact rational is safe because every cost was rounded down.
    return math.ceil(Fraction(flow.optimal_cost(), COST_SCALE * SCALE))


def _or_impossible(value: int | None) -> int:
    return IMPOSSIBLE if value is None else value


def least_matching(table: IntArray, members: IntArray) -> tuple[int, int, IntArray]:
    """The least total of ``table[block, node]`` over every split (rows of block indices
    in ``members``) and every matching of its blocks to the nodes: the value, the split
    and the node of each of its blocks. Costs at ``IMPOSSIBLE`` or more mark a pair that
    cannot be used; the value is then ``IMPOSSIBLE`` or more."""
    count, nodes = members.shape
    if nodes <= MAX_PERMUTED_NODES:
        orders = np.asarray(list(itertools.permutations(range(nodes))), dtype=np.int64)
        costs = np.minimum(table[members[:, None, :], orders[None, :, :]], IMPOSSIBLE).sum(-1)
        split_at, order = np.unravel_index(int(np.argmin(costs)), costs.shape)
        return int(costs[split_at, order]), int(split_at), orders[order]
    best: tuple[int, int, IntArray] | None = None
    for index in range(count):
        sub = np.minimum(table[members[index]], IMPOSSIBLE)
        rows, columns = linear_sum_assignment(sub)
        value = int(sub[rows, columns].sum())
        if best is None or value < best[0]:
            best = (value, index, np.asarray(columns, dtype=np.int64))
    assert best is not None
    return best


@dataclass(frozen=True)
class TransferBound:
    """A certified lower bound on the fewest transfers to a placement with peak at most
    ``budget``: ``bound`` (None: no placement meets it), the analytical bound alone
    (``analytical``), how many (block, node) pairs were tightened by the flow, and
    whether the best matching's pairs were all tightened (``settled``)."""

    bound: int | None
    analytical: int | None
    tightened: int
    settled: bool


def transfer_lower_bound(
    problem: BalancingProblem,
    layer: int,
    previous_row: Sequence[int],
    budget: Fraction,
    *,
    max_rounds: int = 12,
    presences: dict[tuple[int, ...], list[int] | None] | None = None,
) -> TransferBound:
    """The load-flow bound of one layer (module docstring). ``presences`` is a cache
    of block requirements shared between old placements of the same loads and budget."""
    budget = Fraction(budget)
    old = checked_row(problem, layer, list(previous_row), "previous_row")
    if split_count(problem) > MAX_SPLITS:
        raise ValueError(f"more than {MAX_SPLITS} group splits: too many for this bound")
    search = LayerSearch.start(problem, layer, old, budget, SolverSettings(), presences)
    splits = splits_of(problem)
    blocks = sorted({block for split in splits for block in split})
    block_index = {block: i for i, block in enumerate(blocks)}
    nodes = len(splits[0])
    members = np.asarray([[block_index[b] for b in split] for split in splits], dtype=np.int64)
    table = np.asarray(
        [[_or_impossible(search.lower(block, node)) for node in range(nodes)] for block in blocks],
        dtype=np.int64,
    )
    analytical = least_matching(table, members)[0]
    tightened: set[tuple[int, int]] = set()
    settled = False
    value, split_at, node_of = least_matching(table, members)
    for _ in range(max_rounds):
        if value >= IMPOSSIBLE:
            settled = True
            break
        fresh = [
            (int(b), int(n))
            for b, n in zip(members[split_at], node_of, strict=True)
            if (int(b), int(n)) not in tightened
        ]
        if not fresh:
            settled = True
            break
        for b, n in fresh:
            block = blocks[b]
            weights = [search.weights[e] for e in search.block_experts(block)]
            flow = flow_node_bound(weights, search.old_held(block, n), budget)
            table[b, n] = IMPOSSIBLE if flow is None else max(int(table[b, n]), flow)
            tightened.add((b, n))
        value, split_at, node_of = least_matching(table, members)
    return TransferBound(
        None if value >= IMPOSSIBLE else value,
        None if analytical >= IMPOSSIBLE else analytical,
        len(tightened),
        settled,
    )
