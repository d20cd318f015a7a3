"""Exact arithmetic: loads as rationals, and scaling them to solver integers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

# Largest scaled total handed to CP-SAT. CP-SAT computes parts of its reasoning in
# floating point; with values near 2**38..2**46 it was seen here to declare a feasible
# model infeasible and to call a suboptimal answer optimal (the pinned examples in
# tests/test_oracle.py). Below 2**31 every value is one a 32-bit integer could hold.
INTEGER_BUDGET = 2**31


def as_fractions(values: Sequence[float | int | Fraction], name: str = "weights") -> list[Fraction]:
    """Each value as an exact rational (floats are exact dyadic rationals)."""
    result = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
            raise TypeError(f"{name}[{index}] must be a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}[{index}] must be finite, got {value!r}")
        exact = Fraction(value)
        if exact < 0:
            raise ValueError(f"{name}[{index}] must be non-negative, got {value!r}")
        result.append(exact)
    return result


@dataclass(frozen=True)
class Scaled:
    """Integers ``round(w * scale)``; ``exact`` when no rounding happened."""

    integers: list[int]
    scale: Fraction
    exact: bool

    def to_original(self, value: int) -> Fraction:
        return Fraction(value) / self.scale


def scale_to_integers(weights: Sequence[Fraction], budget: int = INTEGER_BUDGET) -> Scaled:
    """Scale by the least common multiple of the denominators when the total stays under
    ``budget``; otherwise by the largest power of two that does, rounding each weight
    (then ``exact`` is False and each weight is off by at most ``1 / (2 * scale)``)."""
    total = sum(weights, Fraction(0))
    common = 1
    for w in weights:
        common = math.lcm(common, w.denominator)
        if total * common > budget:
            break
    if total * common <= budget:
        return Scaled([int(w * common) for w in weights], Fraction(common), True)
    power = Fraction(1)
    if total > 0:
        while total * power * 2 <= budget:
            power *= 2
        while total * power > budget:
            power /= 2
    return Scaled([round(w * power) for w in weights], power, False)
