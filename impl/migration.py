"""Rebalancing from a previous placement with the fewest transfers (docs/migration.md).

Three steps, each a pure function of ``phy2log`` arrays, vectorised over layers where
it matters:

1. ``relabel_gpus``: per layer, the GPU permutation (under the hierarchical policy, one
   that maps whole nodes onto whole nodes) that moves the new placement's GPU contents
   so that the fewest transfers are needed, then the fewest inter-node ones, then the
   fewest local slot moves. Exact: an assignment problem per pair of nodes, then one
   over the nodes on those optimal costs (the inner problems are independent once the
   nodes are matched); under the global policy one assignment over all GPUs.
2. ``keep_slots``: inside each GPU, every expert that stays keeps its old slot (as many
   of its replicas as stay); incoming experts fill the freed slots in order.
3. ``schedule_transfers``: a source for every transfer (a GPU of the destination's node
   when one held the expert) and batches in which each GPU talks to one peer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from spec.migration import (
    TransferSchedule,
    gpu_expert_counts,
)

IntArray = npt.NDArray[np.int64]


def assign(cost: IntArray) -> tuple[IntArray, int]:
    """The column given to each row by a least-cost perfect matching, and its cost."""
    rows, columns = linear_sum_assignment(cost)
    assert (rows == np.arange(cost.shape[0])).all()
    return np.asarray(columns, dtype=np.int64), int(cost[rows, columns].sum())


def relabel_costs(
    previous: IntArray, new: IntArray, *, num_experts: int, num_gpus: int, num_nodes: int = 1
) -> IntArray:
    """``[L, P, P]``: the cost of putting new GPU ``h``'s contents on GPU ``g``.

    One integer ranks three counts lexicographically: ``(transfers * (R + 1) +
    inter-node transfers) * (R + 1) + local slot moves``. Each count is at most ``R`` per
    layer, so the sum over any assignment ranks assignments the same way.
    """
    num_layers, num_replicas = new.shape
    old = gpu_expert_counts(previous, num_gpus, num_experts).astype(np.float64)
    fresh = gpu_expert_counts(new, num_gpus, num_experts).astype(np.float64)
    old_held = (old > 0).astype(np.float64)
    new_held = (fresh > 0).astype(np.float64)

    def pairs(first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]) -> IntArray:
        """``[L, H, G]``: ``sum_e first[l, h, e] * second[l, g, e]`` (exact small integers)."""
        result: IntArray = np.matmul(first, second.transpose(0, 2, 1)).round().astype(np.int64)
        return result

    distinct = new_held.sum(-1).astype(np.int64)
    transfers = distinct[:, :, None] - pairs(new_held, old_held)
    per_node = num_gpus // num_nodes
    node_held = old_held.reshape(num_layers, num_nodes, per_node, num_experts).max(2)
    inter = np.repeat(distinct[:, :, None] - pairs(new_held, node_held), per_node, axis=2)
    # Local slot moves after slot preservation: sum_e [old > 0] * max(0, new - old), with
    # min(new, old) = sum_k [new >= k] * [old >= k].
    local = pairs(fresh, old_held)
    for k in range(1, int(min(fresh.max(), old.max())) + 1):
        local -= pairs((fresh >= k).astype(np.float64), (old >= k).astype(np.float64))
    weight = num_replicas + 1
    result: IntArray = (transfers * weight + inter) * weight + local
    return result


def relabel_gpus(
    previous: IntArray,
    new: IntArray,
    *,
    num_experts: int,
    num_gpus: int,
    num_nodes: int = 1,
    keep_nodes: bool = False,
) -> IntArray:
    """``[L, P]``: ``gpu_of[l, h]``, the GPU that new GPU ``h``'s contents move to.

    The permutation minimises (transfers, inter-node transfers, local slot moves) in
    that order. ``keep_nodes`` (the hierarchical policy) allows only permutations that
    map each node's GPUs onto one node's GPUs; ``num_nodes`` must divide ``num_gpus``.
    """
    if num_gpus % num_nodes:
        raise ValueError(f"num_nodes ({num_nodes}) must divide num_gpus ({num_gpus})")
    costs = relabel_costs(
        previous, new, num_experts=num_experts, num_gpus=num_gpus, num_nodes=num_nodes
    )
    num_layers = new.shape[0]
    gpu_of = np.empty((num_layers, num_gpus), dtype=np.int64)
    if not keep_nodes or num_nodes == 1:
        for layer in range(num_layers):
            gpu_of[layer], _ = assign(costs[layer])
        return gpu_of
    per_node = num_gpus // num_nodes
    for layer in range(num_layers):
        blocks = costs[layer].reshape(num_nodes, per_node, num_nodes, per_node)
        inner_cost = np.empty((num_nodes, num_nodes), dtype=np.int64)
        inner_columns = np.empty((num_nodes, num_nodes, per_node), dtype=np.int64)
        for source in range(num_nodes):
            for target in range(num_nodes):
                columns, value = assign(blocks[source, :, target, :])
                inner_columns[source, target] = columns
                inner_cost[source, target] = value
        node_of, _ = assign(inner_cost)
        for source in range(num_nodes):
            target = int(node_of[source])
            gpu_of[layer, source * per_node : (source + 1) * per_node] = (
                target * per_node + inner_columns[source, target]
            )
    return gpu_of


def slots_of_gpus(gpu_of: IntArray, num_replicas: int) -> IntArray:
    """``[L, R]``: where each slot goes when whole GPUs move as ``gpu_of`` says (the order
    inside a GPU kept)."""
    num_gpus = gpu_of.shape[1]
    cap = num_replicas // num_gpus
    slot = np.arange(num_replicas)
    result: IntArray = gpu_of[:, slot // cap] * cap + slot % cap
    return result


def apply_slot_map(phy2log: IntArray, slot_of: IntArray) -> IntArray:
    """The placement with slot ``s``'s expert moved to slot ``slot_of[l, s]``."""
    result = np.empty_like(phy2log)
    np.put_along_axis(result, slot_of, phy2log, axis=1)
    return result


def move_log2phy(log2phy: IntArray, slot_of: IntArray) -> IntArray:
    """``log2phy`` after slot ``s`` moved to ``slot_of[l, s]`` (replica order and the
    ``-1`` padding kept)."""
    num_layers = log2phy.shape[0]
    flat = log2phy.reshape(num_layers, -1)
    moved = np.take_along_axis(slot_of, np.maximum(flat, 0), axis=1)
    result: IntArray = np.where(flat >= 0, moved, -1).reshape(log2phy.shape)
    return result


def occurrence_index(keys: IntArray) -> IntArray:
    """For each entry of a ``[L, R]`` key array, how many equal keys precede it in its row."""
    num_layers, width = keys.shape
    flat = (keys - keys.min() + 1) + np.arange(num_layers)[:, None] * (keys.max() - keys.min() + 2)
    flat = flat.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.ones(ordered.size, dtype=np.bool_)
    starts[1:] = ordered[1:] != ordered[:-1]
    position = np.arange(ordered.size)
    run_start = np.maximum.accumulate(np.where(starts, position, 0))
    result = np.empty(ordered.size, dtype=np.int64)
    result[order] = position - run_start
    return result.reshape(num_layers, width)


def keep_slots(previous: IntArray, new: IntArray, *, num_experts: int, num_gpus: int) -> IntArray:
    """``[L, R]``: the slot inside its GPU that each slot of ``new`` moves to.

    For each expert ``e`` on GPU ``g``, the first ``min(old count, new count)`` of its
    new replicas there take the slots that held ``e`` before (in slot order); the other
    new replicas fill the remaining slots of ``g`` in slot order. GPU contents are
    unchanged; the most slots possible keep their expert.
    """
    num_layers, num_replicas = new.shape
    cap = num_replicas // num_gpus
    gpu = np.arange(num_replicas) // cap
    layer = np.arange(num_layers)[:, None]
    old_key = (layer * num_gpus + gpu[None, :]) * num_experts + previous
    new_key = (layer * num_gpus + gpu[None, :]) * num_experts + new
    old_code = (old_key * cap + occurrence_index(old_key)).ravel()
    new_code = (new_key * cap + occurrence_index(new_key)).ravel()
    order = np.argsort(old_code)
    position = np.minimum(np.searchsorted(old_code[order], new_code), old_code.size - 1)
    kept = old_code[order][position] == new_code
    target = np.empty(new_code.size, dtype=np.int64)
    target[kept] = order[position[kept]]
    free = ~np.isin(old_code, new_code)
    target[~kept] = np.flatnonzero(free)  # both in (layer, slot) order, equal per GPU
    flat_slot = target - np.repeat(np.arange(num_layers) * num_replicas, num_replicas)
    result: IntArray = flat_slot.reshape(num_layers, num_replicas)
    return result


@dataclass(frozen=True)
class Migration:
    """A new placement relabeled and slot-preserved against an old one.

    ``phy2log`` is the result; ``slot_of[l, s]`` is where slot ``s`` of the given new
    placement went; ``gpu_of[l, h]`` is where its GPU ``h`` went.
    """

    phy2log: IntArray
    slot_of: IntArray
    gpu_of: IntArray


def migrate(
    previous: IntArray,
    new: IntArray,
    *,
    num_experts: int,
    num_gpus: int,
    num_nodes: int = 1,
    keep_nodes: bool = False,
    relabel: bool = True,
) -> Migration:
    """``new`` relabeled for the fewest transfers from ``previous`` (``relabel=False``:
    GPUs stay where they are), then slot-preserved. GPU load multisets are unchanged
    (per node too when ``keep_nodes``)."""
    num_layers, num_replicas = new.shape
    if relabel:
        gpu_of = relabel_gpus(
            previous,
            new,
            num_experts=num_experts,
            num_gpus=num_gpus,
            num_nodes=num_nodes,
            keep_nodes=keep_nodes,
        )
    else:
        gpu_of = np.tile(np.arange(num_gpus, dtype=np.int64), (num_layers, 1))
    moved = slots_of_gpus(gpu_of, num_replicas)
    relabeled = apply_slot_map(new, moved)
    inside = keep_slots(previous, relabeled, num_experts=num_experts, num_gpus=num_gpus)
    slot_of = np.take_along_axis(inside, moved, axis=1)
    return Migration(apply_slot_map(new, slot_of), slot_of, gpu_of)


def schedule_transfers(
    previous: IntArray, new: IntArray, *, num_experts: int, num_gpus: int, num_nodes: int = 1
) -> TransferSchedule:
    """A transfer schedule from ``previous`` to ``new`` that passes ``check_schedule``.

    Sources: for each transfer, a GPU that held the expert, on the destination's node
    when there is one (so exactly the unavoidable transfers cross nodes); among those,
    one already paired with the destination, else the one with the fewest peers so far
    (then the fewest sends, then the lowest id). Transfers with the fewest candidate
    sources choose first. Batches: the pairs of GPUs that exchange anything are coloured
    first-fit, pairs at the busiest GPUs first, so that every GPU is in at most one pair
    per batch; all transfers of a pair (both ways) go in its batch. With ``D`` the most
    peers any GPU has, the batches number at least ``D`` (each batch gives a GPU one
    peer) and at most ``2 D - 1`` (a pair meets at most ``2 D - 2`` others).
    """
    num_layers = new.shape[0]
    old_held = gpu_expert_counts(previous, num_gpus, num_experts) > 0
    needed = (gpu_expert_counts(new, num_gpus, num_experts) > 0) & ~old_held
    per_node = num_gpus // num_nodes
    rows: list[tuple[int, int, int, int, int]] = []
    num_batches = np.zeros(num_layers, dtype=np.int64)
    for layer in range(num_layers):
        wanted = [(int(g), int(e)) for g, e in np.argwhere(needed[layer])]
        holders: dict[int, list[int]] = {}
        for gpu, expert in np.argwhere(old_held[layer]).tolist():
            holders.setdefault(expert, []).append(gpu)
        options: dict[tuple[int, int], list[int]] = {}
        for destination, expert in wanted:
            node = destination // per_node
            near = [g for g in holders[expert] if g // per_node == node]
            options[(destination, expert)] = near or holders[expert]
        peers: list[set[int]] = [set() for _ in range(num_gpus)]
        sends = [0] * num_gpus
        by_pair: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for destination, expert in sorted(wanted, key=lambda t: (len(options[t]), t[1], t[0])):
            source = min(
                options[(destination, expert)],
                key=lambda s: (destination not in peers[s], len(peers[s]), sends[s], s),
            )
            peers[source].add(destination)
            peers[destination].add(source)
            sends[source] += 1
            pair = (min(source, destination), max(source, destination))
            by_pair.setdefault(pair, []).append((expert, source, destination))
        busy: list[set[int]] = [set() for _ in range(num_gpus)]  # batches each GPU is in
        pairs = sorted(by_pair, key=lambda p: (-max(len(peers[p[0]]), len(peers[p[1]])), p))
        for a, b in pairs:
            batch = 0
            while batch in busy[a] or batch in busy[b]:
                batch += 1
            busy[a].add(batch)
            busy[b].add(batch)
            for expert, source, destination in by_pair[(a, b)]:
                rows.append((layer, batch, expert, source, destination))
            num_batches[layer] = max(num_batches[layer], batch + 1)
    transfers = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return TransferSchedule(transfers=transfers, num_batches=num_batches)
