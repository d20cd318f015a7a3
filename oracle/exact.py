"""Exact arithmetic: loads as rationals, and scaling them to solver integers."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

# Largest scaled total handed to CP-SAT. CP-SAT computes parts of its reasoning in
# floating point; with values near 2**38..2**46 it was seen here to declare a feasible
# model infeasible and to call a suboptimal answer optimal (the pinned examples in
# tests/test_oracle.py). Below 2**31 every value is one a 32-bit integer could hold.
INTEGER_BUDGET = 2**31


FLOAT64_MAX = sys.float_info.max


def describe_number(value: object) -> str:
    """A short rendering of a number for an error message (a huge integer by its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"a {len(str(abs(value)))}-digit integer"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Unrepresentable:
    """A JSON number that is no finite float64: ``1e400``, ``NaN``, ``Infinity``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def problem(self) -> str:
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not a finite number"
        return f"{self.text} is beyond the float64 range"


def _parse_float(text: str) -> float | Unrepresentable:
    value = float(text)
    return value if abs(value) <= FLOAT64_MAX else Unrepresentable(text)


def read_json(path: str | Path, max_bytes: int) -> Any:
    """A JSON file of at most ``max_bytes``, parsed with every number that is no finite
    float64 kept as an ``Unrepresentable`` (for the caller to refuse with its key).
    ValueError, naming the file, for anything unreadable, too big or too deep."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise ValueError(f"{path} is {size} bytes, more than the {max_bytes} allowed")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text, parse_float=_parse_float, parse_constant=Unrepresentable)
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer of over 4300 digits
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def as_fractions(values: Sequence[float | int | Fraction], name: str = "weights") -> list[Fraction]:
    """Each value as an exact rational (floats are exact dyadic rationals).

    Loads are the balancer's float64 loads: a value whose magnitude is beyond the float64
    range (a 400-digit integer, say) is refused, as are NaN and infinities.
    """
    result = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
            raise TypeError(f"{name}[{index}] must be a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}[{index}] must be finite, got {value!r}")
        if not -FLOAT64_MAX <= value <= FLOAT64_MAX:
            raise ValueError(
                f"{name}[{index}] = {describe_number(value)} is beyond the float64 range "
                f"(loads are float64 numbers, at most {FLOAT64_MAX:.4g})"
            )
        exact = Fraction(value)
        if exact < 0:
            raise ValueError(f"{name}[{index}] must be non-negative, got {describe_number(value)}")
        result.append(exact)
    if sum(result, Fraction(0)) > FLOAT64_MAX:
        raise ValueError(
            f"{name} sum to more than the float64 range (loads are float64 numbers, and so "
            "are their sums)"
        )
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
