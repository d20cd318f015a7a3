"""Replication, exactly: minimise ``max_i w_i / c_i`` over ``c_i >= 1``, ``sum c_i = S``.

The optimum is one of the values ``w_i / k`` (``1 <= k <= S - n + 1``): at an optimum
some expert attains the peak. The fewest slots that keep every replica at or below ``T``
is ``need(T) = sum_i max(1, ceil(w_i / T))``, non-increasing in ``T``, so the optimum is
the smallest candidate with ``need(T) <= S``, found by bisection over the sorted
candidates. All arithmetic is on exact rationals: no float ``ceil`` anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from fractions import Fraction

from oracle.exact import as_fractions
from oracle.result import Solution, SolveResult, Status
from spec.solutions import count_problems, replication_peak


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


def optimal_peak(weights: Sequence[Fraction], num_slots: int) -> Fraction:
    """The least achievable ``max_i w_i / c_i``."""
    n = len(weights)
    if max(weights) == 0:
        return Fraction(0)
    most = num_slots - n + 1
    candidates = sorted({w / k for w in weights if w > 0 for k in range(1, most + 1)})
    low, high = 0, len(candidates) - 1  # candidates[high] = max w is always feasible
    while low < high:
        middle = (low + high) // 2
        if slots_needed(weights, candidates[middle]) <= num_slots:
            high = middle
        else:
            low = middle + 1
    return candidates[low]


def counts_for_peak(weights: Sequence[Fraction], num_slots: int, peak: Fraction) -> list[int]:
    """Counts reaching ``peak`` (the fewest per expert, spare slots to the first experts)."""
    if peak == 0:
        counts = [1] * len(weights)
    else:
        counts = [
            max(1, ceil_div(w.numerator * peak.denominator, w.denominator * peak.numerator))
            for w in weights
        ]
    spare = num_slots - sum(counts)
    for i in range(spare):
        counts[i % len(counts)] += 1
    return counts


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
    problems = count_problems(counts, len(exact), num_slots)
    achieved = replication_peak(exact, counts)
    if problems or achieved != peak:
        raise AssertionError(
            f"replication oracle produced an invalid answer: {problems}, {achieved}"
        )
    return SolveResult(
        problem="replication",
        status=Status.OPTIMAL,
        objective=peak,
        bound=peak,
        solution=Solution(counts=tuple(counts)),
        wall_time_s=time.perf_counter() - start,
        solver="exact rational bisection over candidate peaks",
    )
