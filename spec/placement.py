"""The output contract of ``rebalance_experts`` (the DeepSeek layout).

A placement is three int64 arrays:

- ``phy2log[l, s]``: the logical expert held by physical slot ``s``; slot ``s`` lives on
  GPU ``s // (R / P)``.
- ``log2phy[l, e, k]``: the slot of replica ``k`` of expert ``e``, ``-1`` for ``k >= c[e]``.
- ``logcnt[l, e]``: ``c[e]``, the number of replicas of expert ``e``.

``check_placement`` returns every violation it finds, at most one per (code, layer),
each with a stable code and a message that says where and what.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from spec.problem import BalancingProblem, Policy
from spec.violations import Violation, ViolationCode


def as_int_array(value: object) -> tuple[npt.NDArray[np.int64] | None, str | None]:
    """The value as an int64 array, and a note when its type or dtype is not int64.

    Returns ``(None, note)`` when the value cannot be read as integers at all.
    """
    if isinstance(value, torch.Tensor):
        raw = value.detach().cpu().numpy()
        dtype_name = str(value.dtype)
        exact = value.dtype == torch.int64
    elif isinstance(value, np.ndarray):
        raw = value
        dtype_name = str(value.dtype)
        exact = value.dtype == np.int64
    else:
        return None, f"must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
    note = None if exact else f"must have dtype int64, got {dtype_name}"
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64), note
    if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
        return raw.astype(np.int64), note
    return None, note


def check_placement(
    problem: BalancingProblem, phy2log: object, log2phy: object, logcnt: object
) -> list[Violation]:
    """Every way ``(phy2log, log2phy, logcnt)`` breaks the contract for ``problem``.

    An empty list means the placement is valid. Checks that need a well-shaped input
    are skipped when its shape is wrong (the shape violation is reported instead).
    """
    violations: list[Violation] = []
    num_layers, num_experts = problem.num_layers, problem.num_experts
    num_replicas = problem.num_replicas

    arrays: dict[str, npt.NDArray[np.int64] | None] = {}
    for name, value in (("phy2log", phy2log), ("log2phy", log2phy), ("logcnt", logcnt)):
        array, note = as_int_array(value)
        if note is not None:
            violations.append(Violation(ViolationCode.DTYPE, f"{name} {note}"))
        arrays[name] = array

    expected = {
        "phy2log": (num_layers, num_replicas),
        "logcnt": (num_layers, num_experts),
    }
    for name, shape in expected.items():
        array = arrays[name]
        if array is not None and array.shape != shape:
            violations.append(
                Violation(ViolationCode.SHAPE, f"{name} has shape {array.shape}, expected {shape}")
            )
            arrays[name] = None
    l2p = arrays["log2phy"]
    if l2p is not None and (l2p.ndim != 3 or l2p.shape[:2] != (num_layers, num_experts)):
        violations.append(
            Violation(
                ViolationCode.SHAPE,
                f"log2phy has shape {l2p.shape}, expected ({num_layers}, {num_experts}, K)",
            )
        )
        arrays["log2phy"] = None

    p2l, cnt, l2p = arrays["phy2log"], arrays["logcnt"], arrays["log2phy"]
    for layer in range(num_layers):
        violations.extend(_check_layer(problem, layer, p2l, l2p, cnt))
    return violations


def _check_layer(
    problem: BalancingProblem,
    layer: int,
    phy2log: npt.NDArray[np.int64] | None,
    log2phy: npt.NDArray[np.int64] | None,
    logcnt: npt.NDArray[np.int64] | None,
) -> list[Violation]:
    found: list[Violation] = []

    def report(code: ViolationCode, message: str) -> None:
        found.append(Violation(code, message, layer))

    num_experts, num_replicas = problem.num_experts, problem.num_replicas
    row = None if phy2log is None else phy2log[layer]
    if row is not None:
        bad = np.flatnonzero((row < 0) | (row >= num_experts))
        if bad.size:
            report(
                ViolationCode.EXPERT_OUT_OF_RANGE,
                f"phy2log[{layer}, {bad[0]}] = {row[bad[0]]} is not an expert id in "
                f"[0, {num_experts}) ({bad.size} slot(s) out of range)",
            )
            row = None  # the checks below need valid ids

    counts = None if logcnt is None else logcnt[layer]
    if counts is not None:
        low = np.flatnonzero(counts < 1)
        if low.size:
            report(
                ViolationCode.COUNT_BELOW_ONE,
                f"logcnt[{layer}, {low[0]}] = {counts[low[0]]}; every expert needs at least "
                f"one replica ({low.size} expert(s) below one)",
            )
        total = int(counts.sum())
        if total != num_replicas:
            report(
                ViolationCode.COUNT_SUM,
                f"logcnt[{layer}] sums to {total}, expected num_replicas = {num_replicas}",
            )

    if row is not None and counts is not None:
        held = np.bincount(row, minlength=num_experts)
        wrong = np.flatnonzero(held != counts)
        if wrong.size:
            e = int(wrong[0])
            report(
                ViolationCode.COUNT_MISMATCH,
                f"logcnt[{layer}, {e}] = {counts[e]} but phy2log holds expert {e} in "
                f"{held[e]} slot(s) ({wrong.size} expert(s) disagree)",
            )

    if log2phy is not None and counts is not None:
        found.extend(_check_log2phy(layer, row, log2phy[layer], counts, num_replicas))

    if row is not None and problem.policy is Policy.HIERARCHICAL:
        slot_node = np.arange(num_replicas) // problem.slots_per_node
        expert_group = row // problem.group_size
        for group in range(problem.num_groups):
            nodes = np.unique(slot_node[expert_group == group])
            if nodes.size > 1:
                report(
                    ViolationCode.GROUP_SPLIT,
                    f"group {group} (experts {group * problem.group_size}.."
                    f"{(group + 1) * problem.group_size - 1}) has replicas on nodes "
                    f"{nodes.tolist()}; under the hierarchical policy a group stays on one node",
                )
                break
    return found


def _check_log2phy(
    layer: int,
    phy2log_row: npt.NDArray[np.int64] | None,
    table: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    num_replicas: int,
) -> list[Violation]:
    found: list[Violation] = []
    width = table.shape[1]
    first: dict[ViolationCode, str] = {}
    hits: dict[ViolationCode, int] = {}

    def note(code: ViolationCode, message: str) -> None:
        first.setdefault(code, message)
        hits[code] = hits.get(code, 0) + 1

    for expert in range(table.shape[0]):
        count = int(counts[expert])
        listed = table[expert, : max(0, min(count, width))]
        padding = table[expert, max(0, count) :]
        if count > width:
            note(
                ViolationCode.LOG2PHY_SLOT,
                f"log2phy[{layer}, {expert}] has width {width}, too narrow for {count} replicas",
            )
        if padding.size and (padding != -1).any():
            k = max(0, count) + int(np.flatnonzero(padding != -1)[0])
            note(
                ViolationCode.LOG2PHY_PADDING,
                f"log2phy[{layer}, {expert}, {k}] = {table[expert, k]}, expected -1 past "
                f"the expert's {count} replica(s)",
            )
        in_range = (listed >= 0) & (listed < num_replicas)
        if not in_range.all():
            k = int(np.flatnonzero(~in_range)[0])
            note(
                ViolationCode.LOG2PHY_SLOT,
                f"log2phy[{layer}, {expert}, {k}] = {listed[k]} is not a slot in "
                f"[0, {num_replicas})",
            )
        valid = listed[in_range]
        if phy2log_row is not None:
            elsewhere = valid[phy2log_row[valid] != expert]
            if elsewhere.size:
                slot = int(elsewhere[0])
                note(
                    ViolationCode.LOG2PHY_SLOT,
                    f"log2phy[{layer}, {expert}] lists slot {slot}, which holds expert "
                    f"{phy2log_row[slot]}",
                )
        if np.unique(valid).size != valid.size:
            note(
                ViolationCode.LOG2PHY_DUPLICATE,
                f"log2phy[{layer}, {expert}] lists a slot twice: {listed.tolist()}",
            )
    for code, message in first.items():
        extra = f" ({hits[code]} expert(s) affected)" if hits[code] > 1 else ""
        found.append(Violation(code, message + extra, layer))
    return found


def placement_from_phy2log(
    phy2log: npt.NDArray[np.int64], num_experts: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The ``log2phy`` and ``logcnt`` that a ``phy2log`` implies.

    Replica ``k`` of an expert is its ``k``-th slot in ascending order; ``log2phy`` has the
    reference width ``R - E + 1`` (at least 1). Ids outside ``[0, E)`` are skipped, and
    replicas past the width are counted but not listed, so ``check_placement`` can still
    report them.
    """
    layers, replicas = phy2log.shape
    width = max(1, replicas - num_experts + 1)
    logcnt = np.zeros((layers, num_experts), dtype=np.int64)
    log2phy = np.full((layers, num_experts, width), -1, dtype=np.int64)
    layer, slot = np.nonzero((phy2log >= 0) & (phy2log < num_experts))
    expert = phy2log[layer, slot]
    np.add.at(logcnt, (layer, expert), 1)
    # Rank of each replica among its expert's in ascending slot order (nonzero's order).
    key = layer * num_experts + expert
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.searchsorted(sorted_key, sorted_key, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - starts
    listed = rank < width
    log2phy[layer[listed], expert[listed], rank[listed]] = slot[listed]
    return log2phy, logcnt
