"""Incremental rebalancing: start from the old placement and change only what the new
loads require (the budgeted problem of docs/migration.md, section 10).

Per layer:

1. **Groups to nodes** (hierarchical policy): keep every group on its old node unless the
   node's new load cannot fit under the limit (its load over its GPUs above it); then
   try the reassignments that move the fewest groups, least loaded first
   (``group_assignments``). The global policy has one node.
2. **Fill**: slots of groups that left a node are free; the groups that arrived take
   them, heaviest expert onto the lightest GPU with a free slot, and free slots left
   over get extra replicas of the expert with the heaviest replica (``fill_free_slots``).
3. **Repair** (``repair``): while the heaviest GPU is above the limit, apply the move
   that lowers it with the fewest added transfers (ties: the lowest resulting load of
   the GPUs it changes, then the lowest indices), among

   - a **swap** of one of its replicas with a replica on another GPU of its node;
   - a **replication**: one of its experts gets one more replica, in the slot of a
     replica of an expert with two or more (which loses one), anywhere in the node.

   Every move lowers the heaviest GPU and leaves every GPU it raises below that GPU's
   old load, so the sorted vector of GPU loads decreases strictly and the search ends.
   Transfers are counted against the old placement: a move that brings an expert
   back to a GPU that held it is free, and one that removes an expert brought earlier
   gives the transfer back.

The answer per layer is the incremental placement when its exact peak is within the
limit and it needs no more transfers than the **relabeled stateless answer**
(``impl.migrate`` of the reference's stateless placement); otherwise that relabeled
answer. So, by construction, a layer never ends above the limit (when the limit is at
least the stateless peak) and never needs more transfers than relabeling.

With a transfer budget instead of a tolerance (``max_transfers``), the repair has no
limit and only takes moves that keep the layer within the budget; groups stay on
their nodes; the answer is the lowest-peak placement it passed through, or the
relabeled stateless answer when that is within the budget and lower.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from impl.balancer import balance
from spec.budgeted import exact_peaks, peak_limits
from spec.migration import count_transfers, validate_placement
from spec.problem import BalancingProblem, Policy

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# A move must lower the heaviest GPU by more than this fraction of its load (and keep
# every GPU it raises that far below it), so that float rounding never loops.
PROGRESS = 1e-12
# The float limit the repair aims at is this fraction below the exact limit, so that
# the exact check after it rarely disagrees.
LIMIT_MARGIN = 1e-9
# Float GPU loads are sums of a GPU's slots, each within a relative 2**-53 of exact, so
# far within this relative error for any real cap; a float peak this far below a float
# limit is below the exact limit.
CERTAIN = 1e-12
MAX_GROUP_MOVES = 4
MAX_ASSIGNMENTS_TRIED = 6


@dataclass
class LayerState:
    """One layer being rebalanced: ``slots[g, j]`` (expert id), per-GPU counts
    ``held[g, e]``, totals ``count[e]``, what the old placement held, the GPU loads and
    the transfers so far."""

    weights: FloatArray
    slots: IntArray
    held: IntArray
    count: IntArray
    old_held: BoolArray
    gpu_node: IntArray
    load: FloatArray
    transfers: int

    @staticmethod
    def start(
        weights: FloatArray, slots: IntArray, old_held: BoolArray, gpu_node: IntArray
    ) -> LayerState:
        num_gpus, _ = slots.shape
        held = np.zeros((num_gpus, weights.size), dtype=np.int64)
        for gpu in range(num_gpus):
            np.add.at(held[gpu], slots[gpu], 1)
        state = LayerState(weights, slots, held, held.sum(0), old_held, gpu_node, np.zeros(0), 0)
        state.refresh()
        return state

    def refresh(self) -> None:
        """Recompute loads and transfers from the counts (no drift from updates)."""
        per_replica = np.divide(
            self.weights, self.count, out=np.zeros_like(self.weights), where=self.count > 0
        )
        self.load = (self.held @ per_replica).astype(np.float64)
        self.transfers = int(((self.held > 0) & ~self.old_held).sum())

    def gains(self, gpu: IntArray, expert: IntArray) -> IntArray:
        """1 where GPU ``gpu`` receiving ``expert`` is a new transfer."""
        result: IntArray = ((self.held[gpu, expert] == 0) & ~self.old_held[gpu, expert]).astype(
            np.int64
        )
        return result

    def losses(self, gpu: IntArray, expert: IntArray) -> IntArray:
        """1 where GPU ``gpu`` giving up one replica of ``expert`` gives a transfer back."""
        result: IntArray = ((self.held[gpu, expert] == 1) & ~self.old_held[gpu, expert]).astype(
            np.int64
        )
        return result

    def rewrite(self, gpu: int, position: int, expert: int) -> None:
        old = int(self.slots[gpu, position])
        self.held[gpu, old] -= 1
        self.count[old] -= 1
        self.slots[gpu, position] = expert
        self.held[gpu, expert] += 1
        self.count[expert] += 1


@dataclass(frozen=True)
class Move:
    """A swap of ``slots[gpu, position]`` with ``slots[other, other_position]``, or
    (``replicate``) slot ``(other, other_position)`` rewritten to ``expert``."""

    replicate: bool
    gpu: int
    position: int
    other: int
    other_position: int
    expert: int
    added: int
    changed_peak: float


def best_move(state: LayerState, gpu: int, allowance: int | None) -> Move | None:
    """The move that lowers GPU ``gpu`` (the heaviest) with the fewest added transfers,
    then the lowest load among the GPUs it changes, then swaps before replications,
    then the lowest candidate index; None when no move lowers it (or none fits in
    ``allowance`` added transfers)."""
    cap = state.slots.shape[1]
    top = float(state.load[gpu])
    ceiling = top - PROGRESS * max(top, 1.0)
    node_gpus = np.flatnonzero(state.gpu_node == state.gpu_node[gpu])
    here = int(np.searchsorted(node_gpus, gpu))
    slot_gpu = np.repeat(node_gpus, cap)
    slot_position = np.tile(np.arange(cap), node_gpus.size)
    slot_expert = state.slots[node_gpus].ravel()
    per_replica = state.weights / np.maximum(state.count, 1)
    best: tuple[int, float, int, int] | None = None  # (added, peak, kind, flat index)
    moves: list[Move] = []

    def consider(
        added: IntArray, peak: FloatArray, valid: BoolArray, make: Callable[[int, int, float], Move]
    ) -> None:
        nonlocal best
        if allowance is not None:
            valid = valid & (added <= allowance)
        if not valid.any():
            return
        flat_added = np.where(valid, added, np.iinfo(np.int64).max).ravel()
        least = int(flat_added.min())
        tied = np.flatnonzero(flat_added == least)
        index = int(tied[np.argmin(peak.ravel()[tied])])
        key = (least, float(peak.ravel()[index]), len(moves), index)
        if best is None or key < best:
            best = key
        moves.append(make(index, least, key[1]))

    # Swaps: (position i on gpu, expert a) with (slot k of another GPU h, expert b).
    mine = state.slots[gpu]
    mine_load = per_replica[mine]
    other = slot_gpu != gpu
    k_gpu, k_position, k_expert = slot_gpu[other], slot_position[other], slot_expert[other]
    if k_expert.size:
        k_load = per_replica[k_expert]
        new_mine = top - mine_load[:, None] + k_load[None, :]
        new_theirs = state.load[k_gpu][None, :] + mine_load[:, None] - k_load[None, :]
        changed = np.maximum(new_mine, new_theirs)
        gpu_column = np.full(cap, gpu)
        added = (
            state.gains(gpu_column[:, None], k_expert[None, :])
            + state.gains(k_gpu[None, :], mine[:, None])
            - state.losses(gpu_column[:, None], mine[:, None])
            - state.losses(k_gpu[None, :], k_expert[None, :])
        )
        valid = (mine[:, None] != k_expert[None, :]) & (changed < ceiling)

        def swap(index: int, least: int, peak: float) -> Move:
            i, k = divmod(index, k_expert.size)
            return Move(False, gpu, i, int(k_gpu[k]), int(k_position[k]), -1, least, peak)

        consider(added, changed, valid, swap)

    # Replications: expert a gets slot k of the node, of expert b (count >= 2): either a
    # is on gpu and k anywhere in the node (gpu's share of a drops), or k is on gpu and
    # a any expert of the node (gpu trades a replica of b for one of a).
    spare = state.count[slot_expert] >= 2
    on_gpu = np.unique(mine)
    in_node = np.setdiff1d(np.unique(slot_expert), on_gpu)
    for experts, where in ((on_gpu, spare), (in_node, spare & (slot_gpu == gpu))):
        r_gpu, r_position, r_expert = slot_gpu[where], slot_position[where], slot_expert[where]
        if not r_expert.size or not experts.size:
            continue
        w_a = state.weights[experts]
        c_a = state.count[experts].astype(np.float64)
        drop_a = w_a / c_a - w_a / (c_a + 1)  # per replica of a already there
        w_b = state.weights[r_expert]
        c_b = state.count[r_expert].astype(np.float64)
        rise_b = w_b / (c_b - 1) - w_b / c_b  # per replica of b left
        base_load = state.load[node_gpus]
        held = state.held[node_gpus]
        new = (
            base_load[None, None, :]
            - held[:, experts].T[:, None, :] * drop_a[:, None, None]
            + held[:, r_expert].T[None, :, :] * rise_b[None, :, None]
        )
        local = np.searchsorted(node_gpus, r_gpu)
        new[:, np.arange(r_expert.size), local] += w_a[:, None] / (c_a[:, None] + 1) - w_b[
            None, :
        ] / (c_b[None, :] - 1)
        raised = np.where(new > base_load[None, None, :], new, -np.inf).max(-1)
        changed_peak = np.maximum(raised, new[:, :, here])
        added = state.gains(r_gpu[None, :], experts[:, None]) - state.losses(
            r_gpu[None, :], r_expert[None, :]
        )
        valid = (experts[:, None] != r_expert[None, :]) & (changed_peak < ceiling)
        consider(added, changed_peak, valid, replication(gpu, experts, r_gpu, r_position))
    if best is None:
        return None
    return moves[best[2]]


def replication(
    gpu: int, experts: IntArray, r_gpu: IntArray, r_position: IntArray
) -> Callable[[int, int, float], Move]:
    """The replication move of a flat candidate index over ``experts`` x slots."""

    def make(index: int, least: int, peak: float) -> Move:
        ia, k = divmod(index, r_gpu.size)
        return Move(True, gpu, -1, int(r_gpu[k]), int(r_position[k]), int(experts[ia]), least, peak)

    return make


def apply_move(state: LayerState, move: Move) -> None:
    if move.replicate:
        state.rewrite(move.other, move.other_position, move.expert)
    else:
        mine = int(state.slots[move.gpu, move.position])
        theirs = int(state.slots[move.other, move.other_position])
        state.rewrite(move.gpu, move.position, theirs)
        state.rewrite(move.other, move.other_position, mine)
    state.refresh()


def repair(
    state: LayerState, limit: float, max_transfers: int | None = None, max_steps: int = 0
) -> IntArray:
    """Lower the heaviest GPU by ``best_move`` until every GPU is at most ``limit``, no
    move helps, or (with ``max_transfers``) none fits the budget. Returns the slots of
    the lowest-peak state seen (the last one when ``limit`` is reached)."""
    steps = max_steps or 40 * state.slots.size
    best_peak, best_slots = float(state.load.max()), state.slots.copy()
    for _ in range(steps):
        gpu = int(np.argmax(state.load))
        if state.load[gpu] <= limit:
            break
        allowance = None if max_transfers is None else max_transfers - state.transfers
        move = best_move(state, gpu, allowance)
        if move is None:
            break
        apply_move(state, move)
        peak = float(state.load.max())
        if peak < best_peak:
            best_peak, best_slots = peak, state.slots.copy()
    return best_slots


def group_nodes(problem: BalancingProblem, row: IntArray) -> IntArray:
    """The node of each group in a valid placement row (hierarchical policy)."""
    node = np.arange(problem.num_replicas) // problem.slots_per_node
    result = np.empty(problem.num_groups, dtype=np.int64)
    result[row // problem.group_size] = node
    return result


def group_assignments(
    problem: BalancingProblem, old_nodes: IntArray, group_loads: FloatArray, limit: float
) -> Iterator[IntArray]:
    """Group-to-node assignments whose nodes' mean GPU load fits ``limit``, where every
    node has a group and room for its groups' experts, moving the fewest groups first (up to
    ``MAX_GROUP_MOVES``), then by the heaviest node's load, then in enumeration order."""
    groups, nodes = problem.num_groups, problem.num_nodes
    most = problem.slots_per_node // problem.group_size
    for moved in range(0, min(MAX_GROUP_MOVES, groups) + 1):
        rows = []
        for chosen in itertools.combinations(range(groups), moved):
            choices = [[n for n in range(nodes) if n != old_nodes[g]] for g in chosen]
            for targets in itertools.product(*choices):
                assignment = old_nodes.copy()
                assignment[list(chosen)] = targets
                rows.append(assignment)
        table = np.asarray(rows, dtype=np.int64).reshape(-1, groups)
        one_hot = table[:, :, None] == np.arange(nodes)[None, None, :]
        per_node = one_hot.sum(1)
        fits_slots = (per_node.max(1) <= most) & (per_node.min(1) >= 1)
        heaviest = (one_hot * group_loads[None, :, None]).sum(1).max(1) / problem.gpus_per_node
        feasible = np.flatnonzero(fits_slots & (heaviest <= limit))
        for index in feasible[np.argsort(heaviest[feasible], kind="stable")]:
            yield table[index]


def fill_free_slots(
    weights: FloatArray, slots: IntArray, missing: Sequence[int], node_gpus: IntArray
) -> None:
    """Put every expert of ``missing`` (not held anywhere, count 0) in a free slot
    (``-1``) of ``node_gpus``, heaviest first onto the lightest GPU with one; then give
    the free slots left extra replicas of the expert with the heaviest replica, onto the
    lightest GPU with a free slot. Without enough free slots, the replica whose removal
    raises its expert the least (count 2 or more) is freed first."""
    node_experts = np.unique(slots[node_gpus][slots[node_gpus] >= 0])
    node_experts = np.union1d(node_experts, np.asarray(missing, dtype=np.int64))
    count = np.bincount(slots[node_gpus][slots[node_gpus] >= 0], minlength=weights.size)
    free = int((slots[node_gpus] < 0).sum())
    while free < len(missing):
        spare = node_experts[count[node_experts] >= 2]
        expert = int(spare[np.argmin(weights[spare] / (count[spare] - 1))])
        gpu, position = (int(i) for i in np.argwhere(slots == expert)[0])
        slots[gpu, position] = -1
        count[expert] -= 1
        free += 1

    def gpu_loads() -> FloatArray:
        per = np.divide(weights, count, out=np.zeros_like(weights), where=count > 0)
        values = np.where(slots[node_gpus] >= 0, per[np.maximum(slots[node_gpus], 0)], 0.0)
        result: FloatArray = values.sum(1)
        return result

    def place(expert: int) -> None:
        loads = gpu_loads()
        open_gpus = (slots[node_gpus] < 0).any(1)
        local = int(np.flatnonzero(open_gpus)[np.argmin(loads[open_gpus])])
        gpu = int(node_gpus[local])
        position = int(np.flatnonzero(slots[gpu] < 0)[0])
        slots[gpu, position] = expert
        count[expert] += 1

    for expert in sorted(missing, key=lambda e: (-weights[e], e)):
        place(int(expert))
    while (slots[node_gpus] < 0).any():
        per = weights[node_experts] / count[node_experts]
        place(int(node_experts[np.argmax(per)]))


def incremental_layer(
    problem: BalancingProblem, layer: int, old_row: IntArray, limit: float
) -> IntArray | None:
    """One layer rebalanced from ``old_row`` to a peak at most ``limit`` (floats), or
    None when the search does not get there."""
    weights = np.asarray(problem.loads[layer], dtype=np.float64)
    cap = problem.slots_per_gpu
    gpu_count = problem.num_gpus
    old_slots = old_row.reshape(gpu_count, cap)
    old_held = np.zeros((gpu_count, problem.num_experts), dtype=np.bool_)
    old_held[np.repeat(np.arange(gpu_count), cap), old_row] = True
    if problem.policy is not Policy.HIERARCHICAL:
        state = LayerState.start(
            weights, old_slots.copy(), old_held, np.zeros(gpu_count, dtype=np.int64)
        )
        slots = repair(state, limit)
        return slots.ravel() if state.load.max() <= limit else None
    gpu_node = np.arange(gpu_count) // problem.gpus_per_node
    old_nodes = group_nodes(problem, old_row)
    group_loads = weights.reshape(problem.num_groups, problem.group_size).sum(1)
    for tried, assignment in enumerate(group_assignments(problem, old_nodes, group_loads, limit)):
        if tried >= MAX_ASSIGNMENTS_TRIED:
            break
        slots = old_slots.copy()
        group_of_slot = slots // problem.group_size
        slot_node = np.repeat(gpu_node, cap).reshape(gpu_count, cap)
        slots[assignment[group_of_slot] != slot_node] = -1
        state_slots = slots
        for node in range(problem.num_nodes):
            arriving = np.flatnonzero((assignment == node) & (old_nodes != node))
            missing = [
                int(e)
                for g in arriving
                for e in range(g * problem.group_size, (g + 1) * problem.group_size)
            ]
            node_gpus = np.flatnonzero(gpu_node == node)
            if missing or (state_slots[node_gpus] < 0).any():
                fill_free_slots(weights, state_slots, missing, node_gpus)
        state = LayerState.start(weights, state_slots, old_held, gpu_node)
        repair(state, limit)
        if state.load.max() <= limit:
            return state.slots.ravel().copy()
    return None


def float_peaks(loads: FloatArray, phy2log: IntArray, num_gpus: int) -> FloatArray:
    """``[L]``: each layer's peak GPU load in float64."""
    num_layers = phy2log.shape[0]
    counts = np.stack([np.bincount(row, minlength=loads.shape[1]) for row in phy2log])
    per_slot = np.take_along_axis(loads / np.maximum(counts, 1), phy2log, axis=1)
    result: FloatArray = per_slot.reshape(num_layers, num_gpus, -1).sum(-1).max(-1)
    return result


@dataclass(frozen=True)
class IncrementalResult:
    """A budgeted rebalance: ``phy2log`` ``[L, R]``; per layer, the spec's transfer
    count, whether the relabeled stateless answer was taken, and the relabeled
    stateless answer's transfers (what the guarantee compares with)."""

    phy2log: IntArray
    transfers: IntArray
    fell_back: BoolArray
    relabeled_transfers: IntArray


def rebalance_incremental(
    problem: BalancingProblem,
    previous: object,
    *,
    eps: float | Fraction | None = None,
    reference_peaks: Sequence[Fraction | float] | None = None,
    max_transfers: int | None = None,
    fast: bool = False,
    threads: int | None = None,
) -> IncrementalResult:
    """Rebalance ``problem`` from ``previous`` (a valid ``[L, R]`` placement) either for
    the fewest transfers with every layer's peak at most ``(1 + eps)`` times its
    reference peak (``eps``; by default the reference balancer's stateless peak), or for
    the lowest peak with at most ``max_transfers`` transfers per layer. Exactly one of
    ``eps`` and ``max_transfers`` must be given. ``fast=True`` computes the stateless
    answer with the compiled balancer (``impl.fast``, identical output; ``threads``
    caps its threads), so the answer is the same."""
    old = validate_placement(problem, previous, "previous")
    if (eps is None) == (max_transfers is None):
        raise ValueError("give exactly one of eps (a tolerance) and max_transfers (a budget)")
    if max_transfers is not None and (
        isinstance(max_transfers, bool) or not isinstance(max_transfers, int) or max_transfers < 0
    ):
        raise ValueError(f"max_transfers must be a non-negative int, got {max_transfers!r}")
    relabeled = balance(problem, previous=old, fast=fast, threads=threads).phy2log
    num_experts, num_gpus = problem.num_experts, problem.num_gpus
    relabeled_transfers = count_transfers(
        old, relabeled, num_experts=num_experts, num_gpus=num_gpus
    ).per_layer
    result = relabeled.copy()
    fell_back = np.ones(problem.num_layers, dtype=np.bool_)
    stateless_peaks = float_peaks(problem.loads, relabeled, num_gpus)
    if eps is not None:
        slack = float(peak_limits([1.0], eps)[0]) - 1.0  # checks eps
        if reference_peaks is not None and len(reference_peaks) != problem.num_layers:
            raise ValueError(
                f"reference_peaks must have one entry per layer ({problem.num_layers}), "
                f"got {len(reference_peaks)}"
            )
        given = None if reference_peaks is None else peak_limits(reference_peaks, eps)
        for layer in range(problem.num_layers):
            limit = (
                (1 + slack) * float(stateless_peaks[layer])
                if given is None
                else float(given[layer])
            )
            row = incremental_layer(problem, layer, old[layer], limit * (1 - LIMIT_MARGIN))
            if row is None:
                continue
            candidate = row[None, :]
            transfers = count_transfers(
                old[layer : layer + 1], candidate, num_experts=num_experts, num_gpus=num_gpus
            ).total
            if transfers > relabeled_transfers[layer]:
                continue
            peak = float(float_peaks(problem.loads[layer : layer + 1], candidate, num_gpus)[0])
            if peak > limit * (1 - CERTAIN):
                # Too close for floats to tell: compare exactly.
                loads = problem.loads[layer : layer + 1]
                exact_limit = (
                    peak_limits(exact_peaks(loads, relabeled[layer : layer + 1], num_gpus), eps)[0]
                    if given is None
                    else given[layer]
                )
                if exact_peaks(loads, candidate, num_gpus)[0] > exact_limit:
                    continue
            result[layer] = row
            fell_back[layer] = False
    else:
        assert max_transfers is not None
        for layer in range(problem.num_layers):
            row = budget_layer(problem, layer, old[layer], max_transfers)
            peak = float(float_peaks(problem.loads[layer : layer + 1], row[None, :], num_gpus)[0])
            if relabeled_transfers[layer] <= max_transfers and stateless_peaks[layer] < peak:
                continue
            result[layer] = row
            fell_back[layer] = False
    transfers_now = count_transfers(old, result, num_experts=num_experts, num_gpus=num_gpus)
    return IncrementalResult(result, transfers_now.per_layer, fell_back, relabeled_transfers)


def budget_layer(
    problem: BalancingProblem, layer: int, old_row: IntArray, max_transfers: int
) -> IntArray:
    """The lowest-peak placement the repair reaches from ``old_row`` with at most
    ``max_transfers`` transfers (groups stay on their nodes)."""
    weights = np.asarray(problem.loads[layer], dtype=np.float64)
    cap = problem.slots_per_gpu
    gpu_count = problem.num_gpus
    old_held = np.zeros((gpu_count, problem.num_experts), dtype=np.bool_)
    old_held[np.repeat(np.arange(gpu_count), cap), old_row] = True
    hierarchical = problem.policy is Policy.HIERARCHICAL
    gpu_node = (
        np.arange(gpu_count) // problem.gpus_per_node
        if hierarchical
        else np.zeros(gpu_count, dtype=np.int64)
    )
    state = LayerState.start(weights, old_row.reshape(gpu_count, cap).copy(), old_held, gpu_node)
    slots = repair(state, -1.0, max_transfers=max_transfers)
    result: IntArray = slots.ravel().copy()
    return result


def placement_arrays(phy2log: IntArray, num_experts: int) -> tuple[IntArray, IntArray, IntArray]:
    """``(phy2log, log2phy, logcnt)`` in the reference layout, replicas in slot order."""
    num_layers, num_replicas = phy2log.shape
    logcnt = np.zeros((num_layers, num_experts), dtype=np.int64)
    log2phy = np.full((num_layers, num_experts, num_replicas - num_experts + 1), -1, np.int64)
    for layer in range(num_layers):
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, logcnt[layer, expert]] = slot
            logcnt[layer, expert] += 1
    return phy2log, log2phy, logcnt


def rebalance_experts_incremental(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    previous: torch.Tensor | npt.NDArray[np.integer[Any]] | None = None,
    *,
    eps: float = 0.01,
    max_transfers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeepSeek's signature with the old placement (keyword ``previous`` or sixth):
    ``rebalance_incremental`` within ``eps`` of the reference's stateless peak (default
    1 %), or with ``max_transfers`` per layer when given; without an old placement, the
    reference's stateless answer. CPU int64 tensors ``(phy2log, log2phy, logcnt)``."""
    problem = BalancingProblem(weight, num_replicas, num_groups, num_nodes, num_gpus)
    if previous is None:
        stateless = balance(problem)
        return (
            torch.from_numpy(stateless.phy2log),
            torch.from_numpy(stateless.log2phy),
            torch.from_numpy(stateless.logcnt),
        )
    if max_transfers is None:
        result = rebalance_incremental(problem, previous, eps=eps)
    else:
        result = rebalance_incremental(problem, previous, max_transfers=max_transfers)
    arrays = placement_arrays(result.phy2log, problem.num_experts)
    return (
        torch.from_numpy(arrays[0]),
        torch.from_numpy(arrays[1]),
        torch.from_numpy(arrays[2]),
    )


__all__ = [
    "IncrementalResult",
    "rebalance_experts_incremental",
    "rebalance_incremental",
]
