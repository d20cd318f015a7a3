"""Proven quality gaps: a target's peak against the best valid placement at hand.

Any valid placement's peak GPU load is an upper bound on the optimum, so
``peak / upper_bound - 1`` is a gap the target certainly has: the optimum is at most
``upper_bound``, and the target's peak is that much above it (the true gap can only be
larger). A gap to a *lower* bound proves nothing, because the optimum may lie above it.

The placements at hand (``upper_bounds``): this project's reference and baseline
(``impl.balancer``), the oracle's heuristic (optimal replica counts per node on the
reference's split of the groups, packed greedily and improved by exchanges;
``oracle.heuristics``), and on tiny problems the oracle's exact answer. Each is checked
against ``spec.check_placement`` and its peak computed exactly (fractions) before it
bounds anything.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from oracle.exact import as_fractions, scale_to_integers
from oracle.heuristics import greedy_packing, improve_by_swaps
from oracle.joint import replica_listing
from oracle.pipeline import (
    check_split,
    cluster_lower_bound,
    layer_lower_bound,
    node_experts,
    placement_from_nodes,
    split_count,
)
from oracle.replication import counts_for_peak, optimal_peak
from oracle.result import Solution
from spec.placement import check_placement, placement_from_phy2log
from spec.problem import BalancingProblem, Policy

IntArray = npt.NDArray[np.int64]

# Exchanges the oracle's heuristic tries per node (deterministic: no time limit).
HEURISTIC_ROUNDS = 20
# The most slots per node the gate's generated problems run the oracle heuristic on.
HEURISTIC_SLOTS = 320
# Above this many group splits, a generated problem's lower bound is the cluster-wide one.
SPLITS_FOR_LOWER_BOUND = 200


@dataclass(frozen=True)
class UpperBound:
    """The peak of a valid placement of one layer, and where the placement came from."""

    value: Fraction
    source: str


@dataclass(frozen=True)
class ProvenGap:
    """One layer: the target's exact ``peak``, the least ``upper`` bound on the optimum at
    hand (and its ``source``), a certified ``lower`` bound, and where the layer is."""

    layer: int
    peak: Fraction
    upper: Fraction
    source: str
    lower: Fraction
    where: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def gap(self) -> Fraction:
        """``peak / upper - 1``: proven, since the optimum is at most ``upper``."""
        return self.peak / self.upper - 1 if self.upper > 0 else Fraction(0)

    @property
    def gap_to_lower(self) -> Fraction:
        """``peak / lower - 1``: how far the peak might be above the optimum at most."""
        return self.peak / self.lower - 1 if self.lower > 0 else Fraction(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "input": self.where,
            "peak": str(self.peak),
            "upper_bound": str(self.upper),
            "upper_bound_source": self.source,
            "lower_bound": str(self.lower),
            "proven_gap": float(self.gap),
            "proven_gap_exact": str(self.gap),
            "gap_to_lower_bound": float(self.gap_to_lower),
        }


def exact_percent(value: Fraction) -> str:
    """A gap as a percentage, never rounding a nonzero gap to 0.00%."""
    if 0 < value < Fraction(1, 20_000):
        return "<0.01%"
    return f"{float(value):.2%}"


def exact_text(value: Fraction) -> str:
    """A load as written: an integer in full, a short fraction as is, else 12 digits."""
    if value.denominator == 1:
        return str(value.numerator)
    text = str(value)
    return text if len(text) <= 24 else f"{float(value):.12g}"


def exact_peaks(
    rows: Sequence[Sequence[Fraction]], phy2log: npt.ArrayLike, num_gpus: int
) -> list[Fraction]:
    """Each layer's peak GPU load, exactly: replicas share their expert's load equally."""
    slots = np.asarray(phy2log, dtype=np.int64)
    cap = slots.shape[1] // num_gpus
    peaks = []
    for row, placed in zip(rows, slots.tolist(), strict=True):
        counts: dict[int, int] = {}
        for expert in placed:
            counts[expert] = counts.get(expert, 0) + 1
        share = {e: row[e] / c for e, c in counts.items()}
        peaks.append(
            max(
                sum((share[e] for e in placed[g * cap : (g + 1) * cap]), Fraction(0))
                for g in range(num_gpus)
            )
        )
    return peaks


def exact_rows(problem: BalancingProblem) -> list[list[Fraction]]:
    return [as_fractions(row) for row in problem.loads.tolist()]


def is_valid(problem: BalancingProblem, phy2log: IntArray) -> bool:
    log2phy, logcnt = placement_from_phy2log(phy2log, problem.num_experts)
    return not check_placement(problem, phy2log, log2phy, logcnt)


def node_split(
    problem: BalancingProblem, phy2log_row: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """The groups each node holds in a valid placement (one block under the global
    policy)."""
    if problem.policy is Policy.GLOBAL:
        return ((0,),)
    size, per_node = problem.group_size, problem.slots_per_node
    return tuple(
        tuple(sorted({e // size for e in phy2log_row[n * per_node : (n + 1) * per_node]}))
        for n in range(problem.packing_nodes)
    )


def heuristic_layer(problem: BalancingProblem, row: Sequence[Fraction], split: Any) -> list[int]:
    """The oracle's heuristic placement of one layer on ``split``: per node the optimal
    replica counts, packed heaviest first and improved by exchanges."""
    blocks = check_split(problem, split)
    solutions = []
    for block in blocks:
        weights = [row[e] for e in node_experts(problem, block)]
        slots, gpus = problem.slots_per_node, problem.gpus_per_node
        counts = counts_for_peak(weights, slots, optimal_peak(weights, slots))
        items = [weights[e] / counts[e] for e in replica_listing(counts)]
        integers = scale_to_integers(items).integers
        packing = greedy_packing(integers, gpus)
        assert packing is not None
        packing = improve_by_swaps(integers, packing, gpus, None, rounds=HEURISTIC_ROUNDS)
        solutions.append(Solution(counts=tuple(counts), pack_of=tuple(packing)))
    return placement_from_nodes(problem, blocks, solutions)


def candidate_placements(problem: BalancingProblem, heuristic: bool) -> dict[str, IntArray]:
    """Valid placements of every layer at hand: the reference's, the baseline's and
    (``heuristic``) the oracle heuristic's on the reference's split."""
    from impl.balancer import balance

    found = {
        "reference": balance(problem, variant="refined").phy2log,
        "baseline": balance(problem, variant="baseline").phy2log,
    }
    if heuristic:
        rows = exact_rows(problem)
        found["oracle heuristic"] = np.asarray(
            [
                heuristic_layer(problem, rows[layer], node_split(problem, reference_row))
                for layer, reference_row in enumerate(found["reference"].tolist())
            ],
            dtype=np.int64,
        )
    valid = {name: np.asarray(p, dtype=np.int64) for name, p in found.items()}
    return {name: p for name, p in valid.items() if is_valid(problem, p)}


def upper_bounds(
    problem: BalancingProblem,
    heuristic: bool = True,
    extra: Sequence[UpperBound | None] = (),
) -> list[UpperBound]:
    """Per layer, the least peak among the valid placements at hand (``extra``: one
    more bound per layer, say the oracle's exact answer, or None)."""
    rows = exact_rows(problem)
    best: list[UpperBound | None] = list(extra) or [None] * problem.num_layers
    for name, phy2log in candidate_placements(problem, heuristic).items():
        for layer, peak in enumerate(exact_peaks(rows, phy2log, problem.num_gpus)):
            current = best[layer]
            if current is None or peak < current.value:
                best[layer] = UpperBound(peak, name)
    if any(b is None for b in best):
        raise AssertionError("no valid placement at hand bounds every layer")
    return [b for b in best if b is not None]


def lower_bounds(problem: BalancingProblem) -> list[Fraction]:
    """A certified lower bound per layer: ``layer_lower_bound`` where the group splits
    are few, else the cluster-wide bound (it holds for every split)."""
    if problem.policy is Policy.GLOBAL or split_count(problem) <= SPLITS_FOR_LOWER_BOUND:
        return [layer_lower_bound(problem, x) for x in range(problem.num_layers)]
    return [cluster_lower_bound(problem, row) for row in exact_rows(problem)]


def proven_gaps(
    problem: BalancingProblem,
    phy2log: npt.ArrayLike,
    uppers: Sequence[UpperBound],
    lowers: Sequence[Fraction],
    where: dict[str, Any] | None = None,
) -> list[ProvenGap]:
    """The proven gap of each layer of a valid placement ``phy2log`` (0 where its peak is
    the least at hand: the target's placement is one more upper bound)."""
    peaks = exact_peaks(exact_rows(problem), phy2log, problem.num_gpus)
    return [
        ProvenGap(
            layer,
            peak,
            min(peak, upper.value),
            upper.source if upper.value <= peak else "the target",
            lower,
            None if where is None else {**where, "layer": layer},
        )
        for layer, (peak, upper, lower) in enumerate(zip(peaks, uppers, lowers, strict=True))
    ]


def above_limit(gaps: Sequence[ProvenGap], max_gap_percent: float) -> ProvenGap | None:
    """The worst gap above ``max_gap_percent`` (exactly compared), or None."""
    limit = Fraction(max_gap_percent) / 100
    worst = max(gaps, key=lambda g: g.gap, default=None)
    return worst if worst is not None and worst.gap > limit else None


def describe_gap(gap: ProvenGap, max_gap_percent: float | None = None) -> str:
    limit = "" if max_gap_percent is None else f" (limit {max_gap_percent:g}%)"
    return (
        f"layer {gap.layer}: peak {exact_text(gap.peak)} is {exact_percent(gap.gap)} above "
        f"{exact_text(gap.upper)}, the peak of a valid placement ({gap.source}), so at "
        f"least that much above the optimum{limit}; {exact_percent(gap.gap_to_lower)} "
        f"above the certified lower bound {exact_text(gap.lower)}"
    )


KEPT = 64
_kept: dict[tuple[str, tuple[int, ...], tuple[int, int, int, int]], list[UpperBound]] = {}


def trace_upper_bounds(problem: BalancingProblem) -> list[UpperBound]:
    """``upper_bounds`` of a trace at a cluster (the reference's and the baseline's
    placements), remembered by the loads' digest like the trace lower bounds."""
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    key = (hashlib.sha256(problem.loads.tobytes()).hexdigest(), problem.loads.shape, cluster)
    if key not in _kept:
        if len(_kept) >= KEPT:
            _kept.pop(next(iter(_kept)), None)
        _kept[key] = upper_bounds(problem, heuristic=False)
    return _kept[key]


def summarise(gaps: Sequence[ProvenGap]) -> dict[str, Any]:
    """How many layers, the mean and worst proven gap, and the worst one in full."""
    if not gaps:
        return {}
    worst = max(gaps, key=lambda g: (g.gap, -g.layer))
    return {
        "layers": len(gaps),
        "mean": math.fsum(float(g.gap) for g in gaps) / len(gaps),
        "max": float(worst.gap),
        "at_upper_bound": sum(g.gap == 0 for g in gaps),
        "worst": worst.to_json(),
    }
