"""Replication, exactly: minimise ``max_i w_i / c_i`` over ``c_i >= 1``, ``sum c_i = S``.

The fewest slots that keep every replica at or below ``T`` is
``need(T) = sum_i max(1, ceil(w_i / T))``, non-increasing in ``T``; the optimum ``T*`` is
the least ``T`` with ``need(T) <= S``, and the counts ``c_min_i = max(1, ceil(w_i / T*))``
are the fewest that reach it.

``optimal_peak`` never enumerates candidates ``w_i / k`` (there are ``n (S - n + 1)`` of
them, too many for ``S = 10**12``). With ``W = sum w``, the threshold ``T0 = W / (S - n)``
is feasible (``max(1, ceil(x)) <= x + 1``, so ``need(T0) <= S``), hence ``T0 >= T*`` and
its counts ``c(T0)`` are at most ``c_min``, and they use at least ``S - n`` slots. The
last ``<= n`` slots go one at a time to the expert with the heaviest replica (a heap).
That greedy ends at the optimum: while the counts stay below some optimal vector it
adds to an expert whose count is still below it, or else the heaviest replica is
already at most ``T*``. ``O(n log n)`` exact rational steps, whatever ``S``; no float
``ceil`` anywhere.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from fractions import Fraction

from oracle.exact import as_fractions
from oracle.result import Solution, SolveResult, Status
from spec.solutions import count_violations, replication_peak


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def slots_needed(weights: Sequence[Fraction], threshold: Fraction) -> int:
    """``sum_i max(1, ceil(w_i / T))`` for ``T > 0``, exactly."""
    total = 0
    for w in weights:
        # w / T = (w.num * T.den) / (w.den * T.num)
        total += max(
            1, ceil_div(w.numerator * threshold.denominator, w.denominator * threshold.numerator)
        )
    return total


def optimal_counts(weights: Sequence[Fraction], num_slots: int) -> list[int]:
    """Counts (``c_i >= 1``, summing to ``num_slots``) with the least ``max_i w_i / c_i``."""
    n = len(weights)
    total = sum(weights, Fraction(0))
    if total == 0:
        counts = [1] * n
        counts[0] += num_slots - n
        return counts
    scale = Fraction(num_slots - n) / total  # 1 / T0
    counts = [
        max(1, ceil_div(w.numerator * scale.numerator, w.denominator * scale.denominator))
        for w in weights
    ]
    spare = num_slots - sum(counts)
    assert 0 <= spare <= n, "the start point uses between S - n and S slots"
    heap = [(-(w / c), i) for i, (w, c) in enumerate(zip(weights, counts, strict=True))]
    heapq.heapify(heap)
    for _ in range(spare):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, (-(weights[i] / counts[i]), i))
    return counts


def optimal_peak(weights: Sequence[Fraction], num_slots: int) -> Fraction:
    """The least achievable ``max_i w_i / c_i``."""
    return replication_peak(weights, optimal_counts(weights, num_slots))


def counts_for_peak(weights: Sequence[Fraction], num_slots: int, peak: Fraction) -> list[int]:
    """Counts reaching ``peak`` (the fewest per expert, spare slots to the first experts)."""
    if peak == 0:
        counts = [1] * len(weights)
    else:
        counts = [
            max(1, ceil_div(w.numerator * peak.denominator, w.denominator * peak.numerator))
            for w in weights
        ]
    each, extra = divmod(num_slots - sum(counts), len(counts))
    return [c + each + (1 if i < extra else 0) for i, c in enumerate(counts)]


def check_replication_input(weights: Sequence[object], num_slots: object) -> None:
    if len(weights) == 0:
        raise ValueError("weights must not be empty")
    if isinstance(num_slots, bool) or not isinstance(num_slots, int):
        raise TypeError(f"num_slots must be an int, got {type(num_slots).__name__}")
    if num_slots < len(weights):
        raise ValueError(
            f"num_slots ({num_slots}) must be at least the number of weights ({len(weights)})"
        )


def solve_replication(weights: Sequence[float | int | Fraction], num_slots: int) -> SolveResult:
    """The exact optimum of the replication problem (always ``OPTIMAL``)."""
    check_replication_input(weights, num_slots)
    exact = as_fractions(weights)
    start = time.perf_counter()
    peak = optimal_peak(exact, num_slots)
    counts = counts_for_peak(exact, num_slots, peak)
    violations = count_violations(counts, len(exact), num_slots)
    achieved = replication_peak(exact, counts)
    if violations or achieved != peak:
        raise AssertionError(
            f"replication oracle produced an invalid answer: {violations}, {achieved}"
        )
    return SolveResult(
        problem="replication",
        status=Status.OPTIMAL,
        objective=peak,
        bound=peak,
        solution=Solution(counts=tuple(counts)),
        wall_time_s=time.perf_counter() - start,
        solver="exact rational threshold and greedy",
    )
