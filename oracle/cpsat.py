"""CP-SAT settings shared by every model: one worker, a fixed seed, zero gap limits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from ortools.sat.python import cp_model

DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SolverSettings:
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    seed: int = DEFAULT_SEED
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive, got {self.time_limit_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def solver(self) -> cp_model.CpSolver:
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = self.workers
        solver.parameters.random_seed = self.seed
        solver.parameters.max_time_in_seconds = self.time_limit_s
        solver.parameters.relative_gap_limit = 0.0
        solver.parameters.absolute_gap_limit = 0.0
        return solver

    def describe(self) -> dict[str, Any]:
        return {
            "num_workers": self.workers,
            "random_seed": self.seed,
            "max_time_in_seconds": self.time_limit_s,
            "relative_gap_limit": 0.0,
            "absolute_gap_limit": 0.0,
        }


SOLVER_NAME = f"OR-Tools CP-SAT {version('ortools')}"


def integer_bound(solver: cp_model.CpSolver) -> int:
    """The proven lower bound of an integer objective.

    CP-SAT proves an integer bound but reports it as a float that can miss it by a
    rounding error (220.99999999999997 for 221). Objectives stay below 2**48 (see
    ``oracle.exact.INTEGER_BUDGET``), so that error is far below 1/4: a value within 1/4
    of an integer is that integer; anything else is rounded down.
    """
    bound = solver.best_objective_bound
    if not math.isfinite(bound):
        return 0
    nearest = round(bound)
    return nearest if abs(bound - nearest) < 0.25 else math.floor(bound)


def solve(
    settings: SolverSettings, model: cp_model.CpModel, feasible_known: bool, what: str
) -> tuple[cp_model.CpSolver, Any]:
    """Solve ``model``; when a feasible solution is known to exist but CP-SAT answers
    INFEASIBLE (its presolve was seen to, with large coefficients), solve again without
    presolve, and raise if the contradiction stays."""
    solver = settings.solver()
    code = solver.solve(model)
    if code == cp_model.INFEASIBLE and feasible_known:
        solver.parameters.cp_model_presolve = False
        code = solver.solve(model)
        if code == cp_model.INFEASIBLE:
            raise RuntimeError(f"CP-SAT declared a feasible {what} model infeasible")
    return solver, code
