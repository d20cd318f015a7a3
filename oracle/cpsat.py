"""CP-SAT settings shared by every model: one worker, a fixed seed, zero gap limits, and
one deadline for the whole solve."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from ortools.sat.python import cp_model

DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_SEED = 0
# The most variables (or table entries) one CP-SAT model may have; a larger instance is
# answered UNKNOWN with its analytical bound before anything is built. Building a model
# and CP-SAT's presolve (which expands tables) do not watch the clock closely; at this
# size they overrun a time limit by well under a second (tests/test_oracle_limits.py).
MAX_MODEL_TERMS = 20_000
# CP-SAT's random_seed is a protobuf int32.
SEED_RANGE = (-(2**31), 2**31 - 1)


def require_seconds(value: object, name: str) -> float:
    """A positive, finite number of seconds; TypeError for a non-number (bool and str
    included), ValueError for NaN, infinities, zero or less."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and abs(value) > 1e300:  # past float's range, or nearly
        raise ValueError(
            f"{name} must be a positive finite number of seconds, got an integer of "
            f"{value.bit_length()} bits"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


def require_seed(value: object, name: str = "seed") -> int:
    """An integer in CP-SAT's int32 seed range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name} must be in CP-SAT's int32 range [{low}, {high}], got {value}")
    return value


class Deadline:
    """A point in time that every part of one solve shares."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def remaining(self) -> float:
        return self.end - time.perf_counter()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass(frozen=True)
class SolverSettings:
    """``time_limit_s`` bounds a whole solve: model building, heuristics and every
    CP-SAT call of it (a layer's node solves share it)."""

    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    seed: int = DEFAULT_SEED
    workers: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_limit_s", require_seconds(self.time_limit_s, "time_limit_s"))
        require_seed(self.seed)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise TypeError(f"workers must be an int, got {type(self.workers).__name__}")
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers must be between 1 and 256, got {self.workers}")

    def deadline(self) -> Deadline:
        return Deadline(self.time_limit_s)

    def within(self, deadline: Deadline) -> SolverSettings:
        """These settings with the time left before ``deadline`` (at least 1 ms)."""
        return dataclasses.replace(self, time_limit_s=max(deadline.remaining(), 1e-3))

    def solver(self, deadline: Deadline | None = None) -> cp_model.CpSolver:
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = self.workers
        solver.parameters.random_seed = self.seed
        seconds = self.time_limit_s if deadline is None else deadline.remaining()
        solver.parameters.max_time_in_seconds = max(seconds, 1e-3)
        solver.parameters.relative_gap_limit = 0.0
        solver.parameters.absolute_gap_limit = 0.0
        solver.parameters.catch_sigint_signal = False  # Ctrl-C ends the caller's run
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
    rounding error (220.99999999999997 for 221). Objectives stay below 2**31 (see
    ``oracle.exact.INTEGER_BUDGET``), so that error is far below 1/4: a value within 1/4
    of an integer is that integer; anything else is rounded down.
    """
    bound = solver.best_objective_bound
    if not math.isfinite(bound):
        return 0
    nearest = round(bound)
    return nearest if abs(bound - nearest) < 0.25 else math.floor(bound)


def solve(
    settings: SolverSettings,
    model: cp_model.CpModel,
    feasible_known: bool,
    what: str,
    deadline: Deadline | None = None,
) -> tuple[cp_model.CpSolver, Any]:
    """Solve ``model`` within ``deadline`` (default: ``settings.time_limit_s`` from now);
    when a feasible solution is known to exist but CP-SAT answers INFEASIBLE (its
    presolve was seen to, with large coefficients), solve again without presolve in the
    time left, and raise if the contradiction stays."""
    deadline = deadline or settings.deadline()
    solver = settings.solver(deadline)
    code = solver.solve(model)
    if code == cp_model.INFEASIBLE and feasible_known:
        solver = settings.solver(deadline)
        solver.parameters.cp_model_presolve = False
        code = solver.solve(model)
        if code == cp_model.INFEASIBLE:
            raise RuntimeError(f"CP-SAT declared a feasible {what} model infeasible")
    return solver, code
