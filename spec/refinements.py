"""The contracts of the two refinement steps, each on its own inputs.

Refinement A (after water-filling) maps ``(loads w, counts c)`` of one node row to new
counts. It must keep ``len(c)``, ``sum(c)`` and ``c >= 1``; it may move at most one
replica from one expert (the donor) to another (the receiver), and only when that
lowers the peak replica load ``max_i w_i / c_i`` by more than ``GAIN_TOLERANCE``.

Refinement B (after diverse packing) maps ``(replica weights, labels, gpu, rank)`` of one
node to a new ``(gpu, rank)``. It must keep a full assignment: every replica on one GPU,
exactly ``cap`` replicas per GPU, ranks ``0..cap-1`` once each on every GPU. It may
exchange at most two replicas between two GPUs (and renumber the ranks of those two
GPUs), and only when that lowers the peak GPU load by more than ``GAIN_TOLERANCE``.
Labels do not constrain it; ``duplicate_labels_added`` measures what it does to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from spec.objectives import peak_replica_load
from spec.violations import RefinementRule, Violation

GAIN_TOLERANCE = 1e-9
"""A refinement acts only when the peak drops by more than this (absolute)."""

ROUNDING_SLACK = 1e-12
"""Relative slack for GPU-load sums, which the refinement and the check may round apart."""


def check_count_refinement(
    loads: Sequence[float], before: Sequence[int], after: Sequence[int]
) -> list[Violation]:
    """Every way ``after`` breaks refinement A's contract, given its input ``before``."""
    found: list[Violation] = []
    if len(after) != len(before) or len(before) != len(loads):
        return [
            Violation(
                RefinementRule.LENGTH,
                f"counts have length {len(after)}, expected {len(before)}",
            )
        ]
    if sum(after) != sum(before):
        found.append(
            Violation(
                RefinementRule.COUNT_SUM, f"counts sum to {sum(after)}, expected {sum(before)}"
            )
        )
    if min(after) < 1:
        found.append(
            Violation(RefinementRule.COUNT_BELOW_ONE, f"an expert has {min(after)} replicas")
        )
    if found:
        return found
    delta = [a - b for a, b in zip(after, before, strict=True)]
    moved = [i for i, d in enumerate(delta) if d != 0]
    if not moved:
        return found
    if sorted(delta[i] for i in moved) != [-1, 1]:
        found.append(
            Violation(
                RefinementRule.ONE_MOVE,
                f"counts changed at {moved} by {[delta[i] for i in moved]}; at most one "
                f"replica may move from one expert to another",
            )
        )
    old_peak = float(peak_replica_load(loads, before))
    new_peak = float(peak_replica_load(loads, after))
    if new_peak > old_peak:
        found.append(
            Violation(
                RefinementRule.PEAK_RAISED,
                f"peak replica load rose from {old_peak!r} to {new_peak!r}",
            )
        )
    elif not new_peak + GAIN_TOLERANCE < old_peak:
        found.append(
            Violation(
                RefinementRule.NO_GAIN,
                f"counts changed but the peak replica load went only from {old_peak!r} "
                f"to {new_peak!r}",
            )
        )
    return found


def gpu_loads_of(weights: Sequence[float], gpu: Sequence[int], num_gpus: int) -> list[float]:
    """Each GPU's load, summed exactly (``math.fsum``) and rounded once."""
    members: list[list[float]] = [[] for _ in range(num_gpus)]
    for weight, g in zip(weights, gpu, strict=True):
        members[g].append(weight)
    return [math.fsum(m) for m in members]


def assignment_problems(gpu: Sequence[int], rank: Sequence[int], num_gpus: int) -> list[str]:
    """Why ``(gpu, rank)`` is not a full assignment of ``cap = len / num_gpus`` per GPU."""
    if len(gpu) != len(rank):
        return [f"gpu has length {len(gpu)} but rank has length {len(rank)}"]
    if len(gpu) % num_gpus:
        return [f"{len(gpu)} replicas do not split evenly over {num_gpus} GPUs"]
    cap = len(gpu) // num_gpus
    if any(not 0 <= g < num_gpus for g in gpu):
        return [f"a GPU index is outside [0, {num_gpus}): {sorted(set(gpu))}"]
    ranks: list[list[int]] = [[] for _ in range(num_gpus)]
    for g, r in zip(gpu, rank, strict=True):
        ranks[g].append(r)
    problems = []
    for g, held in enumerate(ranks):
        if sorted(held) != list(range(cap)):
            problems.append(f"GPU {g} holds ranks {sorted(held)}, expected 0..{cap - 1}")
    return problems


def check_swap_refinement(
    weights: Sequence[float],
    gpu_before: Sequence[int],
    rank_before: Sequence[int],
    gpu_after: Sequence[int],
    rank_after: Sequence[int],
    num_gpus: int,
) -> list[Violation]:
    """Every way ``(gpu_after, rank_after)`` breaks refinement B's contract."""
    problems = assignment_problems(gpu_after, rank_after, num_gpus)
    if len(gpu_after) != len(weights):
        problems.insert(0, f"{len(gpu_after)} replicas assigned, expected {len(weights)}")
    if problems:
        return [Violation(RefinementRule.ASSIGNMENT, "; ".join(problems))]
    found: list[Violation] = []
    moved = [j for j in range(len(weights)) if gpu_after[j] != gpu_before[j]]
    touched = {gpu_before[j] for j in moved} | {gpu_after[j] for j in moved}
    if moved and not (
        len(moved) == 2
        and gpu_after[moved[0]] == gpu_before[moved[1]]
        and gpu_after[moved[1]] == gpu_before[moved[0]]
    ):
        found.append(
            Violation(
                RefinementRule.ONE_SWAP,
                f"replicas {moved} changed GPU; at most two may, exchanged between two GPUs",
            )
        )
    rank_changed = [
        j
        for j in range(len(weights))
        if gpu_after[j] not in touched and rank_after[j] != rank_before[j]
    ]
    if rank_changed:
        found.append(
            Violation(
                RefinementRule.RANKS_KEPT,
                f"replicas {rank_changed} changed rank on a GPU the swap did not touch",
            )
        )
    old_peak = max(gpu_loads_of(weights, gpu_before, num_gpus))
    new_peak = max(gpu_loads_of(weights, gpu_after, num_gpus))
    slack = ROUNDING_SLACK * max(old_peak, 1.0)
    if new_peak > old_peak + slack:
        found.append(
            Violation(
                RefinementRule.PEAK_RAISED, f"peak GPU load rose from {old_peak!r} to {new_peak!r}"
            )
        )
    elif moved and not new_peak + GAIN_TOLERANCE < old_peak + slack:
        found.append(
            Violation(
                RefinementRule.NO_GAIN,
                f"replicas moved but the peak GPU load went only from {old_peak!r} to {new_peak!r}",
            )
        )
    return found


def duplicate_labels_added(
    labels: Sequence[int], gpu_before: Sequence[int], gpu_after: Sequence[int], num_gpus: int
) -> int:
    """GPUs holding a repeated label after, minus before (may be negative)."""

    def repeated(gpu: Sequence[int]) -> int:
        seen: list[set[int]] = [set() for _ in range(num_gpus)]
        hit = [False] * num_gpus
        for label, g in zip(labels, gpu, strict=True):
            hit[g] = hit[g] or label in seen[g]
            seen[g].add(label)
        return sum(hit)

    return repeated(gpu_after) - repeated(gpu_before)
