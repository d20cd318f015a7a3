"""Rebalancing from a previous placement: transfers, local slot moves, and the contracts
of a rebalance and of a transfer schedule (definitions and reasons: docs/migration.md).

For one layer, an old placement ``previous[l]`` and a new one ``new[l]`` (``phy2log``
rows of the same cluster, GPU of slot ``s`` = ``s // (R / P)``):

- a **transfer** is a pair (expert ``e``, GPU ``g``) such that ``new`` holds ``e`` on
  ``g`` and ``previous`` does not: the weights of ``e`` must cross a link to reach
  ``g``. Several new replicas of ``e`` on ``g`` are one transfer (the others are local
  copies once it has arrived).
- a **local slot move** is a slot ``s`` of GPU ``g`` with ``new[s] = e != previous[s]``
  where ``previous`` already held ``e`` on ``g``: a copy inside the GPU.
- a transfer is **inter-node** when no GPU of the destination's node held ``e`` in
  ``previous`` (no choice of source avoids crossing between nodes), else intra-node.

A rebalance with a previous placement must give a valid placement with exactly the GPU
loads of its own stateless answer, up to relabeling the GPUs, and must keep every
expert that stays on a GPU in its old slot (``check_rebalance``). A transfer schedule
must deliver every transfer exactly once from a GPU that held the expert before, in
batches where each GPU exchanges with at most one peer (``check_schedule``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import torch

from spec.problem import BalancingProblem, Policy
from spec.violations import MigrationCode, Violation, ViolationCode

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# Columns of ``TransferSchedule.transfers``.
LAYER, BATCH, EXPERT, SOURCE, DESTINATION = range(5)


def network_nodes(problem: BalancingProblem) -> int:
    """The nodes transfers are reported over: ``num_nodes`` when it divides the GPUs
    (GPU ``g`` on node ``g // (P / N)``), else 1 (the global policy allows a node count
    that does not divide the GPUs; then no node layout is defined)."""
    return problem.num_nodes if problem.num_gpus % problem.num_nodes == 0 else 1


def phy2log_array(value: object, name: str) -> IntArray:
    """An int64 copy of a ``phy2log``-like argument; TypeError for a non-integer one."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer expert ids, got dtype {value.dtype}")
        return value.detach().cpu().numpy().astype(np.int64)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer expert ids, got dtype {value.dtype}")
        return value.astype(np.int64)
    raise TypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray of expert ids, got {type(value).__name__}"
    )


def validate_placement(problem: BalancingProblem, value: object, name: str) -> IntArray:
    """``value`` as an int64 ``[L, R]`` array after checking that it is a valid placement of
    ``problem``'s cluster; TypeError or ValueError naming ``name`` otherwise.

    A ``phy2log`` is valid exactly when its ids are experts, every expert has a slot and,
    under the hierarchical policy, every group's slots lie on one node: the ``log2phy``
    and ``logcnt`` derived from it then pass ``check_placement`` (vectorised here, as
    real placements are checked on every rebalance).
    """
    array = phy2log_array(value, name)
    expected = (problem.num_layers, problem.num_replicas)
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {expected} [layers, replicas], got {array.shape}")
    bad = np.argwhere((array < 0) | (array >= problem.num_experts))
    if bad.size:
        layer, slot = (int(i) for i in bad[0])
        raise ValueError(
            f"{name}[{layer}, {slot}] = {array[layer, slot]} is not an expert id in "
            f"[0, {problem.num_experts})"
        )
    num_layers, num_experts = problem.num_layers, problem.num_experts
    layer_base = np.arange(num_layers)[:, None]
    cells = num_layers * num_experts
    counts = np.bincount((layer_base * num_experts + array).ravel(), minlength=cells)
    missing = np.argwhere(counts.reshape(num_layers, num_experts) == 0)
    violation: Violation | None = None
    if missing.size:
        layer, expert = (int(i) for i in missing[0])
        violation = Violation(
            ViolationCode.COUNT_BELOW_ONE,
            f"expert {expert} has no slot; every expert needs at least one replica",
            layer,
        )
    elif problem.policy is Policy.HIERARCHICAL:
        groups = problem.num_groups
        key = (layer_base * groups + array // problem.group_size).ravel()
        node = np.tile(np.arange(problem.num_replicas) // problem.slots_per_node, num_layers)
        lowest = np.full(num_layers * groups, problem.num_nodes, dtype=np.int64)
        highest = np.full(num_layers * groups, -1, dtype=np.int64)
        np.minimum.at(lowest, key, node)
        np.maximum.at(highest, key, node)
        split = np.flatnonzero(lowest != highest)
        if split.size:
            layer, group = divmod(int(split[0]), groups)
            violation = Violation(
                ViolationCode.GROUP_SPLIT,
                f"group {group} has replicas on nodes {lowest[split[0]]} and "
                f"{highest[split[0]]}; under the hierarchical policy a group stays on one node",
                layer,
            )
    if violation is not None:
        raise ValueError(f"{name} is not a valid placement of this cluster: {violation}")
    return array


def gpu_expert_counts(phy2log: IntArray, num_gpus: int, num_experts: int) -> IntArray:
    """``[L, P, E]``: how many replicas of each expert each GPU holds."""
    num_layers, num_replicas = phy2log.shape
    gpu = np.arange(num_replicas) // (num_replicas // num_gpus)
    index = (np.arange(num_layers)[:, None] * num_gpus + gpu[None, :]) * num_experts + phy2log
    counts = np.bincount(index.ravel(), minlength=num_layers * num_gpus * num_experts)
    result: IntArray = counts.reshape(num_layers, num_gpus, num_experts).astype(np.int64)
    return result


def needed_transfers(
    previous: IntArray, new: IntArray, num_gpus: int, num_experts: int
) -> BoolArray:
    """``[L, P, E]``: True where ``new`` holds the expert on the GPU and ``previous`` does
    not (one transfer each)."""
    result: BoolArray = (gpu_expert_counts(new, num_gpus, num_experts) > 0) & (
        gpu_expert_counts(previous, num_gpus, num_experts) == 0
    )
    return result


@dataclass(frozen=True)
class TransferCounts:
    """What turning ``previous`` into ``new`` costs, per layer.

    ``per_gpu[l, g]``: transfers GPU ``g`` receives; ``inter_node[l]``: transfers that no
    GPU of the destination's node can serve; ``local_moves[l]``: slots filled by a copy
    inside their GPU; ``rewritten[l]``: slots whose expert changes.
    """

    per_gpu: IntArray
    inter_node: IntArray
    local_moves: IntArray
    rewritten: IntArray

    @property
    def per_layer(self) -> IntArray:
        result: IntArray = self.per_gpu.sum(-1)
        return result

    @property
    def intra_node(self) -> IntArray:
        result: IntArray = self.per_layer - self.inter_node
        return result

    @property
    def total(self) -> int:
        return int(self.per_gpu.sum())


def count_transfers(
    previous: IntArray, new: IntArray, *, num_experts: int, num_gpus: int, num_nodes: int = 1
) -> TransferCounts:
    """The transfers, inter-node transfers and local slot moves from ``previous`` to ``new``
    (both ``[L, R]`` ``phy2log`` arrays of one cluster with ``num_nodes`` nodes)."""
    if previous.shape != new.shape:
        raise ValueError(f"previous has shape {previous.shape}, new has shape {new.shape}")
    if num_gpus % num_nodes:
        raise ValueError(f"num_nodes ({num_nodes}) must divide num_gpus ({num_gpus})")
    num_layers, num_replicas = new.shape
    old_held = gpu_expert_counts(previous, num_gpus, num_experts) > 0
    new_held = gpu_expert_counts(new, num_gpus, num_experts) > 0
    needed = new_held & ~old_held
    per_node = num_gpus // num_nodes
    node_held = old_held.reshape(num_layers, num_nodes, per_node, num_experts).any(2)
    at_destination_node = np.repeat(node_held, per_node, axis=1)
    inter = (needed & ~at_destination_node).sum((1, 2))
    gpu = np.arange(num_replicas) // (num_replicas // num_gpus)
    layer = np.arange(num_layers)[:, None]
    changed = new != previous
    local = changed & old_held[layer, gpu[None, :], new]
    return TransferCounts(
        per_gpu=needed.sum(-1).astype(np.int64),
        inter_node=inter.astype(np.int64),
        local_moves=local.sum(-1).astype(np.int64),
        rewritten=changed.sum(-1).astype(np.int64),
    )


def kept_slot_shortfall(
    previous: IntArray, new: IntArray, num_gpus: int, num_experts: int
) -> IntArray:
    """``[L, P, E]``: how many more slots of the GPU could have kept the expert in place.

    Slot preservation asks that, for every expert ``e`` on GPU ``g``,
    ``min(old count, new count)`` of its slots there hold ``e`` in both placements: the
    most that can stay put. The result is that minimum less the slots that do.
    """
    num_layers, num_replicas = new.shape
    old = gpu_expert_counts(previous, num_gpus, num_experts)
    fresh = gpu_expert_counts(new, num_gpus, num_experts)
    same = np.where(new == previous, new, -1)
    gpu = np.arange(num_replicas) // (num_replicas // num_gpus)
    layer = np.arange(num_layers)[:, None]
    index = ((layer * num_gpus + gpu[None, :]) * num_experts + same)[same >= 0]
    kept = np.bincount(index, minlength=num_layers * num_gpus * num_experts).reshape(old.shape)
    result: IntArray = (np.minimum(old, fresh) - kept).astype(np.int64)
    return result


def exact_gpu_loads(loads: FloatArray, phy2log: IntArray, num_gpus: int) -> list[list[Fraction]]:
    """Each GPU's load per layer as an exact rational (counts taken from ``phy2log``)."""
    num_layers, num_replicas = phy2log.shape
    cap = num_replicas // num_gpus
    result = []
    for layer in range(num_layers):
        row = phy2log[layer].tolist()
        counts = Counter(row)
        weights = [Fraction(float(w)) for w in loads[layer]]
        result.append(
            [
                sum((weights[e] / counts[e] for e in row[g * cap : (g + 1) * cap]), Fraction(0))
                for g in range(num_gpus)
            ]
        )
    return result


def same_gpu_loads(
    loads: FloatArray, first: IntArray, second: IntArray, num_gpus: int
) -> BoolArray:
    """``[L]``: whether two placements give the same multiset of GPU loads, exactly.

    A GPU's load is fixed by its experts' loads and replica counts, so placements whose
    GPUs hold the same multisets of (load, count) agree at once; otherwise the loads are
    compared as exact rationals.
    """
    num_layers, num_replicas = first.shape
    cap = num_replicas // num_gpus
    result = np.ones(num_layers, dtype=np.bool_)
    for layer in range(num_layers):
        signatures = []
        for placement in (first, second):
            row = placement[layer]
            counts = np.bincount(row, minlength=loads.shape[1])
            pairs = np.stack([loads[layer, row], counts[row]], axis=-1).reshape(num_gpus, cap, 2)
            signatures.append(sorted(tuple(sorted(map(tuple, gpu.tolist()))) for gpu in pairs))
        if signatures[0] == signatures[1]:
            continue
        exact = [
            sorted(exact_gpu_loads(loads[layer : layer + 1], p[layer : layer + 1], num_gpus)[0])
            for p in (first, second)
        ]
        result[layer] = exact[0] == exact[1]
    return result


def check_rebalance(
    problem: BalancingProblem,
    previous: object,
    phy2log: object,
    stateless: object,
    *,
    fewest_transfers: IntArray | None = None,
) -> list[Violation]:
    """Every way ``phy2log``, a rebalance of ``problem`` from ``previous``, breaks the
    contract. ``stateless`` is the same balancer's answer without ``previous``;
    ``fewest_transfers[l]``, when given, is the fewest transfers of layer ``l`` among
    placements equivalent to ``stateless`` (as ``impl.migrate`` finds them).

    ``previous`` and ``stateless`` must be valid placements (ValueError otherwise). An
    invalid ``phy2log`` gives one ``placement-invalid`` violation and no other check.
    """
    old = validate_placement(problem, previous, "previous")
    reference = validate_placement(problem, stateless, "stateless")
    try:
        new = validate_placement(problem, phy2log, "phy2log")
    except (TypeError, ValueError) as error:
        return [Violation(MigrationCode.PLACEMENT_INVALID, str(error))]
    found: list[Violation] = []
    same = same_gpu_loads(problem.loads, new, reference, problem.num_gpus)
    for layer in np.flatnonzero(~same).tolist():
        found.append(
            Violation(
                MigrationCode.BALANCE_CHANGED,
                "the multiset of GPU loads differs from the stateless placement's",
                layer,
            )
        )
    shortfall = kept_slot_shortfall(old, new, problem.num_gpus, problem.num_experts)
    for layer in range(problem.num_layers):
        bad = np.argwhere(shortfall[layer] > 0)
        if bad.size:
            gpu, expert = (int(i) for i in bad[0])
            found.append(
                Violation(
                    MigrationCode.SLOT_NOT_KEPT,
                    f"GPU {gpu} keeps expert {expert} in {shortfall[layer, gpu, expert]} slot(s) "
                    f"fewer than it could ({bad.shape[0]} (GPU, expert) pair(s) short)",
                    layer,
                )
            )
    if fewest_transfers is not None:
        if np.shape(fewest_transfers) != (problem.num_layers,):
            raise ValueError(
                f"fewest_transfers must have shape ({problem.num_layers},), "
                f"got {np.shape(fewest_transfers)}"
            )
        counts = count_transfers(
            old, new, num_experts=problem.num_experts, num_gpus=problem.num_gpus
        ).per_layer
        for layer in np.flatnonzero(counts > np.asarray(fewest_transfers)).tolist():
            found.append(
                Violation(
                    MigrationCode.TRANSFERS_ABOVE_FEWEST,
                    f"{counts[layer]} transfers where an equivalent placement needs "
                    f"{int(fewest_transfers[layer])}",
                    layer,
                )
            )
    found.sort(key=lambda v: (-1 if v.layer is None else v.layer, v.code.value))
    return found


@dataclass(frozen=True)
class TransferSchedule:
    """When and from where each transfer arrives.

    ``transfers`` is ``[T, 5]`` int64, one row ``(layer, batch, expert, source,
    destination)`` per transfer (columns ``LAYER`` .. ``DESTINATION``);
    ``num_batches[l]`` is the number of batches of layer ``l``, which run one after the
    other (layers too, in order). Within a batch every GPU is paired with at most one
    peer, and may send to it and receive from it (an exchange).
    """

    transfers: IntArray
    num_batches: IntArray

    def batches(self, layer: int) -> list[list[tuple[int, int, int]]]:
        """The ``(expert, source, destination)`` triples of each batch of ``layer``."""
        rows = self.transfers[self.transfers[:, LAYER] == layer]
        return [
            [
                (int(r[EXPERT]), int(r[SOURCE]), int(r[DESTINATION]))
                for r in rows[rows[:, BATCH] == b]
            ]
            for b in range(int(self.num_batches[layer]))
        ]


def link_counts(schedule: TransferSchedule, num_gpus: int, num_nodes: int) -> IntArray:
    """``[L, N, N]``: transfers from node ``a`` to node ``b`` in each layer (the diagonal
    holds the intra-node ones)."""
    if num_gpus % num_nodes:
        raise ValueError(f"num_nodes ({num_nodes}) must divide num_gpus ({num_gpus})")
    num_layers = len(schedule.num_batches)
    per_node = num_gpus // num_nodes
    rows = schedule.transfers
    index = (rows[:, LAYER] * num_nodes + rows[:, SOURCE] // per_node) * num_nodes + rows[
        :, DESTINATION
    ] // per_node
    counts = np.bincount(index, minlength=num_layers * num_nodes * num_nodes)
    result: IntArray = counts.reshape(num_layers, num_nodes, num_nodes).astype(np.int64)
    return result


def check_schedule(
    problem: BalancingProblem,
    previous: object,
    phy2log: object,
    schedule: TransferSchedule,
    *,
    exchanges: bool = True,
) -> list[Violation]:
    """Every way ``schedule`` fails to turn ``previous`` into ``phy2log`` (both valid
    placements of ``problem``; ValueError otherwise).

    With ``exchanges=False`` the stricter rule of engines that let a GPU only send or
    only receive in a batch (one directed peer) is checked instead.
    """
    old = validate_placement(problem, previous, "previous")
    new = validate_placement(problem, phy2log, "phy2log")
    num_layers, num_gpus, num_experts = problem.num_layers, problem.num_gpus, problem.num_experts
    malformed = _schedule_shape_problem(schedule, num_layers, num_gpus, num_experts)
    if malformed is not None:
        return [Violation(MigrationCode.SCHEDULE_MALFORMED, malformed)]
    rows = schedule.transfers.astype(np.int64)
    batches = schedule.num_batches.astype(np.int64)
    old_held = gpu_expert_counts(old, num_gpus, num_experts) > 0
    needed = (gpu_expert_counts(new, num_gpus, num_experts) > 0) & ~old_held

    found: list[Violation] = []

    def report(code: MigrationCode, layer: int, message: str, hits: int) -> None:
        extra = f" ({hits} affected)" if hits > 1 else ""
        found.append(Violation(code, message + extra, layer))

    layer_of, batch, expert = rows[:, LAYER], rows[:, BATCH], rows[:, EXPERT]
    source, destination = rows[:, SOURCE], rows[:, DESTINATION]
    key = (layer_of * num_gpus + destination) * num_experts + expert
    delivered = np.bincount(key, minlength=num_layers * num_gpus * num_experts).reshape(
        needed.shape
    )
    unneeded = ~needed[layer_of, destination, expert]
    lacking = ~old_held[layer_of, source, expert]
    for layer in range(num_layers):
        mine = layer_of == layer
        missing = np.argwhere(needed[layer] & (delivered[layer] == 0))
        if missing.size:
            gpu, e = (int(i) for i in missing[0])
            report(
                MigrationCode.TRANSFER_MISSING,
                layer,
                f"expert {e} must reach GPU {gpu} but no transfer brings it",
                missing.shape[0],
            )
        twice = np.argwhere(needed[layer] & (delivered[layer] > 1))
        if twice.size:
            gpu, e = (int(i) for i in twice[0])
            report(
                MigrationCode.TRANSFER_DUPLICATED,
                layer,
                f"expert {e} reaches GPU {gpu} {delivered[layer, gpu, e]} times",
                twice.shape[0],
            )
        extra = np.flatnonzero(mine & unneeded)
        if extra.size:
            i = int(extra[0])
            report(
                MigrationCode.TRANSFER_UNNEEDED,
                layer,
                f"transfer of expert {expert[i]} to GPU {destination[i]}, which either held it "
                f"already or does not hold it in the new placement",
                extra.size,
            )
        empty_handed = np.flatnonzero(mine & lacking)
        if empty_handed.size:
            i = int(empty_handed[0])
            report(
                MigrationCode.SOURCE_LACKS_EXPERT,
                layer,
                f"GPU {source[i]} sends expert {expert[i]} but did not hold it in the old "
                f"placement",
                empty_handed.size,
            )
        busy = _busy_ranks(batch[mine], source[mine], destination[mine], exchanges)
        if busy:
            b, rank, peers = busy[0]
            report(
                MigrationCode.RANK_BUSY_TWICE,
                layer,
                f"GPU {rank} talks to {peers} in batch {b}; at most one "
                f"{'peer' if exchanges else 'directed peer'} per batch",
                len(busy),
            )
        used = np.unique(batch[mine])
        declared = int(batches[layer])
        outside = used[used >= declared]
        unused = sorted(set(range(declared)) - set(used.tolist()))
        if outside.size or unused:
            what = (
                f"batch {int(outside[0])} is used"
                if outside.size
                else f"batch {unused[0]} is empty"
            )
            report(
                MigrationCode.BATCH_COUNT,
                layer,
                f"the schedule declares {declared} batch(es) but {what}",
                int(outside.size) + len(unused),
            )
    return found


def _schedule_shape_problem(
    schedule: TransferSchedule, num_layers: int, num_gpus: int, num_experts: int
) -> str | None:
    """Why the schedule's arrays cannot be read, or None."""
    rows, batches = schedule.transfers, schedule.num_batches
    if not isinstance(rows, np.ndarray) or rows.dtype.kind not in "iu":
        return "transfers must be an integer numpy array"
    if rows.ndim != 2 or rows.shape[1] != 5:
        return f"transfers must have shape [T, 5], got {rows.shape}"
    if not isinstance(batches, np.ndarray) or batches.dtype.kind not in "iu":
        return "num_batches must be an integer numpy array"
    if batches.shape != (num_layers,):
        return f"num_batches must have shape ({num_layers},), got {batches.shape}"
    if (batches < 0).any():
        return "num_batches must be non-negative"
    limits = {
        LAYER: ("layer", num_layers),
        EXPERT: ("expert", num_experts),
        SOURCE: ("source", num_gpus),
        DESTINATION: ("destination", num_gpus),
    }
    for column, (name, limit) in limits.items():
        bad = np.flatnonzero((rows[:, column] < 0) | (rows[:, column] >= limit))
        if bad.size:
            return f"transfers[{bad[0]}] has {name} {rows[bad[0], column]}, outside [0, {limit})"
    bad = np.flatnonzero(rows[:, BATCH] < 0)
    if bad.size:
        return f"transfers[{bad[0]}] has a negative batch {rows[bad[0], BATCH]}"
    return None


def _busy_ranks(
    batch: IntArray, source: IntArray, destination: IntArray, exchanges: bool
) -> list[tuple[int, int, list[int]]]:
    """``(batch, rank, peers)`` for every rank linked to more than one peer in a batch
    (with ``exchanges=False``, to more than one directed peer: sending and receiving
    count as two)."""
    links: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for b, s, d in zip(batch.tolist(), source.tolist(), destination.tolist(), strict=True):
        link = (min(s, d), max(s, d)) if exchanges else (s, d)
        for rank in (s, d):
            links.setdefault((b, rank), set()).add(link)
    busy = []
    for (b, rank), held in sorted(links.items()):
        if len(held) > 1:
            peers = sorted({x for link in held for x in link if x != rank})
            busy.append((b, rank, peers))
    return busy
