"""The typed result every oracle solve returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any


class Status(enum.Enum):
    """``OPTIMAL`` only when the objective equals the proven lower bound."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    INFEASIBLE = "INFEASIBLE"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Solution:
    """Counts per expert (replication, joint) and/or the pack of each item (packing,
    joint: one entry per replica, replicas listed expert by expert)."""

    counts: tuple[int, ...] | None = None
    pack_of: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SolveResult:
    """An oracle answer. ``objective`` and ``bound`` are exact rationals in the units of
    the input weights; ``bound <= optimum <= objective`` is proven."""

    problem: str
    status: Status
    objective: Fraction | None
    bound: Fraction
    solution: Solution | None
    wall_time_s: float
    solver: str
    parameters: dict[str, Any] = field(default_factory=dict)
    exact: bool = True
    resolution: Fraction | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.status is Status.OPTIMAL and self.objective != self.bound:
            raise AssertionError(
                f"OPTIMAL claimed with objective {self.objective} != bound {self.bound}"
            )
        if self.objective is not None and self.bound > self.objective:
            raise AssertionError(f"bound {self.bound} above objective {self.objective}")

    @classmethod
    def infeasible(
        cls,
        problem: str,
        bound: Fraction,
        wall_time_s: float,
        solver: str,
        parameters: dict[str, Any] | None = None,
        note: str = "",
    ) -> SolveResult:
        """A proof that no solution exists."""
        return cls(
            problem,
            Status.INFEASIBLE,
            None,
            bound,
            None,
            wall_time_s,
            solver,
            parameters or {},
            note=note,
        )

    @classmethod
    def unknown(
        cls,
        problem: str,
        bound: Fraction,
        wall_time_s: float,
        solver: str,
        parameters: dict[str, Any],
        resolution: Fraction | None = None,
        note: str = "no solution within the time limit",
    ) -> SolveResult:
        """No solution (within the time limit, or not tried: ``note`` says which); only
        the bound is known."""
        return cls(
            problem,
            Status.UNKNOWN,
            None,
            bound,
            None,
            wall_time_s,
            solver,
            parameters,
            exact=resolution is None,
            resolution=resolution,
            note=note,
        )

    @property
    def gap(self) -> Fraction | None:
        """``objective - bound`` (0 when proven optimal)."""
        return None if self.objective is None else self.objective - self.bound

    def to_json(self) -> dict[str, Any]:
        def number(value: Fraction | None) -> float | None:
            return None if value is None else float(value)

        def text(value: Fraction | None) -> str | None:
            return None if value is None else str(value)

        return {
            "format": 1,
            "problem": self.problem,
            "status": self.status.value,
            "objective": number(self.objective),
            "bound": number(self.bound),
            "objective_exact": text(self.objective),
            "bound_exact": text(self.bound),
            "exact": self.exact,
            "resolution": text(self.resolution),
            "solution": None
            if self.solution is None
            else {
                "counts": None if self.solution.counts is None else list(self.solution.counts),
                "pack_of": None if self.solution.pack_of is None else list(self.solution.pack_of),
            },
            "wall_time_s": self.wall_time_s,
            "solver": self.solver,
            "parameters": self.parameters,
            "note": self.note,
        }
