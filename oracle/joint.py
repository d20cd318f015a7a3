"""Joint replication and packing inside one node: choose the counts and the placement
together to minimise the heaviest GPU.

CP-SAT model: ``c_i`` replicas of expert ``i`` (``1..S-n+1``), ``x[i][g]`` of them on GPU
``g`` (at most 1 each under the distinct rule), ``cap`` replicas per GPU. The load that
expert ``i`` puts on GPU ``g`` is ``w_i * x / c``: a table constraint over the allowed
``(c, x)`` pairs gives it exactly, in integers scaled by the least common multiple of
every count in play (and of the weights' denominators). GPU loads are ordered
non-increasingly to break the symmetry of identical GPUs.

Limits: a model of more than ``MAX_MODEL_TERMS`` table entries (``10**7`` slots, say) is
answered ``UNKNOWN`` with the analytical bound before it is built; the time limit
covers building the model and solving it, and a solve cut short answers with the
greedy placement (``FEASIBLE``) when CP-SAT has none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from ortools.sat.python import cp_model

from oracle.cpsat import (
    MAX_MODEL_TERMS,
    SOLVER_NAME,
    Deadline,
    SolverSettings,
    integer_bound,
    solve,
)
from oracle.exact import INTEGER_BUDGET, as_fractions
from oracle.replication import check_replication_input, optimal_peak
from oracle.result import Solution, SolveResult, Status
from spec.solutions import count_violations, heaviest_pack, packing_violations


def joint_lower_bound(weights: Sequence[Fraction], num_slots: int, num_packs: int) -> Fraction:
    """``max(total / G, best replication peak)``: a GPU holds at least the average and
    at least one whole replica.

    The replication optimum is computed only when it can matter: any valid counts give
    an upper bound on it, and when that is already at most ``total / G`` the average
    wins.
    """
    total = sum(weights, Fraction(0))
    average = total / num_packs
    n = len(weights)
    if total > 0:
        spare = num_slots - n
        counts = [1 + (w * spare // total).__floor__() for w in weights]
        for i in sorted(range(n), key=lambda i: -weights[i] / counts[i])[: num_slots - sum(counts)]:
            counts[i] += 1
        if (
            sum(counts) == num_slots
            and max(w / c for w, c in zip(weights, counts, strict=True)) <= average
        ):
            return average
    return max(average, optimal_peak(weights, num_slots))


def replica_listing(counts: Sequence[int]) -> list[int]:
    """The expert of each replica, expert by expert."""
    return [i for i, c in enumerate(counts) for _ in range(c)]


def joint_heuristic(
    weights: Sequence[Fraction], num_slots: int, num_packs: int, distinct: bool
) -> tuple[list[int], list[int]] | None:
    """Greedy counts (hottest replica load first), then diverse greedy packing."""
    n = len(weights)
    counts = [1] * n
    for _ in range(num_slots - n):
        hottest = max(range(n), key=lambda i: (weights[i] / counts[i], -i))
        counts[hottest] += 1
    if distinct and max(counts) > num_packs:
        return None
    labels = replica_listing(counts)
    items = [weights[e] / counts[e] for e in labels]
    cap = num_slots // num_packs
    load = [Fraction(0)] * num_packs
    size = [0] * num_packs
    held = [set[int]() for _ in range(num_packs)]
    pack_of = [-1] * num_slots
    for j in sorted(range(num_slots), key=lambda j: (-items[j], j)):
        target = min(
            (p for p in range(num_packs) if size[p] < cap),
            key=lambda p: (labels[j] in held[p], load[p], p),
        )
        if distinct and labels[j] in held[target]:
            return None
        pack_of[j] = target
        load[target] += items[j]
        size[target] += 1
        held[target].add(labels[j])
    return counts, pack_of


def joint_model_size(
    num_experts: int, num_slots: int, num_packs: int, most: int, most_here: int
) -> int:
    """Table entries of the joint model (one ``(c, x)`` row per count ``c <= most`` and
    per ``x <= min(c, most_here)``, for every expert and GPU), plus the replicas a
    solution lists."""
    # sum over c = 1..most of (min(c, most_here) + 1)
    low = min(most, most_here)
    rows = low * (low + 1) // 2 + (most - low) * most_here + most
    return num_experts * num_packs * rows + num_slots


def joint_scale(exact: Sequence[Fraction], most: int) -> tuple[Fraction, bool]:
    """The factor that turns every share ``w_i * x / c`` (``c <= most``) into an integer:
    the lcm of the counts and the weights' denominators when the scaled total stays
    within ``INTEGER_BUDGET`` (exact), else a power of two that keeps it there (each
    share then rounded by at most 1/2)."""
    total = sum(exact, Fraction(0))
    denominators_lcm = 1
    for w in exact:
        denominators_lcm = math.lcm(denominators_lcm, w.denominator)
    counts_lcm = 1
    for c in range(1, most + 1):
        counts_lcm = math.lcm(counts_lcm, c)
        if total * counts_lcm * denominators_lcm > INTEGER_BUDGET:
            break  # not exact anyway: stop before the lcm grows without bound
    common = counts_lcm * denominators_lcm
    # The largest number in the model is a GPU's load, at most the scaled total.
    if total * common <= INTEGER_BUDGET:
        return Fraction(common), True
    scale = Fraction(1)
    while total * scale * 2 <= INTEGER_BUDGET:
        scale *= 2
    while total * scale > INTEGER_BUDGET:
        scale /= 2
    return scale, False


@dataclass
class JointModel:
    """The CP-SAT model of one joint instance: ``count[i]`` replicas of expert ``i``,
    ``held[i][g]`` of them on GPU ``g``, GPUs ordered by load, ``peak`` minimised."""

    model: cp_model.CpModel
    count: list[cp_model.IntVar]
    held: list[list[cp_model.IntVar]]
    complete: bool  # False when the deadline came while the tables were being added


def build_joint_model(
    exact: Sequence[Fraction],
    num_slots: int,
    num_packs: int,
    limits: tuple[int, int],
    scaling: tuple[Fraction, bool],
    floor: int,
    deadline: Deadline,
) -> JointModel:
    """The model; ``limits`` = (most replicas of an expert, most of them on one GPU). The
    load an expert puts on a GPU is ``w * x / c``: a table over the allowed ``(c, x)``
    pairs gives it exactly in scaled integers."""
    most, most_here = limits
    scale, is_exact = scaling
    n, cap = len(exact), num_slots // num_packs

    def scaled_share(i: int, c: int, x: int) -> int:
        value = exact[i] * x / c * scale
        assert not is_exact or value.denominator == 1
        return round(value)

    scaled = [scaled_share(i, 1, 1) for i in range(n)]
    model = cp_model.CpModel()
    count = [model.new_int_var(1, most, f"c{i}") for i in range(n)]
    held = [
        [model.new_int_var(0, most_here, f"x{i}_{g}") for g in range(num_packs)] for i in range(n)
    ]
    share = [
        [model.new_int_var(0, scaled[i] + 1, f"t{i}_{g}") for g in range(num_packs)]
        for i in range(n)
    ]  # w * x / c <= w
    model.add(sum(count) == num_slots)
    complete = True
    for i in range(n):
        if deadline.expired():
            complete = False  # building the model used the time up
            break
        model.add(sum(held[i]) == count[i])
        pairs = [
            (c, x, scaled_share(i, c, x))
            for c in range(1, most + 1)
            for x in range(0, min(c, most_here) + 1)
        ]
        for g in range(num_packs):
            model.add_allowed_assignments([count[i], held[i][g], share[i][g]], pairs)
    loads = []
    for g in range(num_packs):
        model.add(sum(held[i][g] for i in range(n)) == cap)
        load = model.new_int_var(0, sum(scaled) + n, f"load{g}")
        model.add(load == sum(share[i][g] for i in range(n)))
        loads.append(load)
    for g in range(num_packs - 1):
        model.add(loads[g] >= loads[g + 1])  # identical GPUs: heaviest first
    peak = model.new_int_var(max(0, floor), sum(scaled) + n, "peak")
    model.add(peak == loads[0])
    model.minimize(peak)
    return JointModel(model, count, held, complete)


def hint_joint(
    joint: JointModel, exact: Sequence[Fraction], guess: tuple[list[int], list[int]]
) -> None:
    """Start CP-SAT from a known placement (GPUs renamed heaviest first, as the model
    orders them)."""
    counts, pack_of = guess
    num_packs = len(joint.held[0]) if joint.held else 0
    labels = replica_listing(counts)
    per_pack = [[0] * num_packs for _ in range(len(exact))]
    pack_load = [Fraction(0)] * num_packs
    for label, p in zip(labels, pack_of, strict=True):
        per_pack[label][p] += 1
        pack_load[p] += exact[label] / counts[label]
    order = sorted(range(num_packs), key=lambda p: -pack_load[p])
    for i in range(len(exact)):
        joint.model.add_hint(joint.count[i], counts[i])
        for g, p in enumerate(order):
            joint.model.add_hint(joint.held[i][g], per_pack[i][p])


def solve_joint(
    weights: Sequence[float | int | Fraction],
    num_slots: int,
    num_packs: int,
    distinct: bool = False,
    settings: SolverSettings | None = None,
) -> SolveResult:
    """Minimise the heaviest GPU over counts and placement together."""
    check_replication_input(weights, num_slots)
    if isinstance(num_packs, bool) or not isinstance(num_packs, int) or num_packs < 1:
        raise ValueError(f"num_packs must be a positive int, got {num_packs!r}")
    if num_slots % num_packs:
        raise ValueError(f"num_slots ({num_slots}) must be divisible by num_packs ({num_packs})")
    settings = settings or SolverSettings()
    exact = as_fractions(weights)
    start = time.perf_counter()
    deadline = settings.deadline()
    n = len(exact)
    cap = num_slots // num_packs
    most = num_slots - n + 1
    analytical = joint_lower_bound(exact, num_slots, num_packs)
    if distinct and n * num_packs < num_slots:
        return SolveResult.infeasible(
            "joint",
            analytical,
            time.perf_counter() - start,
            "pigeonhole",
            note=f"{n} experts cannot fill {num_slots} slots with at most one replica per GPU",
        )
    if distinct:
        most = min(most, num_packs)
    most_here = 1 if distinct else min(cap, most)  # replicas of one expert on one GPU
    size = joint_model_size(n, num_slots, num_packs, most, most_here)
    if size > MAX_MODEL_TERMS:
        return SolveResult.unknown(
            "joint",
            analytical,
            time.perf_counter() - start,
            SOLVER_NAME,
            settings.describe(),
            note=f"not solved: the model would have {size} table entries and replicas, more "
            f"than the {MAX_MODEL_TERMS} one model may have; the bound is analytical",
        )

    scale, is_exact = joint_scale(exact, most)
    floor = int(analytical * scale) - (0 if is_exact else cap)
    guess = joint_heuristic(exact, num_slots, num_packs, distinct)
    joint = build_joint_model(
        exact, num_slots, num_packs, (most, most_here), (scale, is_exact), floor, deadline
    )
    if guess is not None:
        hint_joint(joint, exact, guess)

    code = cp_model.UNKNOWN
    bound = analytical
    if not deadline.expired():
        known = guess is not None or not distinct
        solver, code = solve(settings, joint.model, known, "joint", deadline)
        if code == cp_model.INFEASIBLE:
            return SolveResult.infeasible(
                "joint", analytical, time.perf_counter() - start, SOLVER_NAME, settings.describe()
            )
        solver_bound = Fraction(integer_bound(solver)) - (0 if is_exact else Fraction(cap, 2))
        bound = max(analytical, solver_bound / scale)
    elapsed = time.perf_counter() - start
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        counts = [int(solver.value(v)) for v in joint.count]
        pack_of = [
            g
            for i in range(n)
            for g in range(num_packs)
            for _ in range(int(solver.value(joint.held[i][g])))
        ]
    elif guess is not None:  # out of time before CP-SAT found one: the greedy's placement
        counts, pack_of = guess
        code = cp_model.FEASIBLE
    else:
        return SolveResult.unknown(
            "joint",
            bound,
            elapsed,
            SOLVER_NAME,
            settings.describe(),
            None if is_exact else 1 / scale,
        )
    labels = replica_listing(counts)
    violations = count_violations(counts, n, num_slots) + packing_violations(
        pack_of, num_packs, labels if distinct else None
    )
    if violations:
        raise AssertionError(f"joint oracle produced an invalid answer: {violations}")
    objective = heaviest_pack([exact[e] / counts[e] for e in labels], pack_of, num_packs)
    status = Status.OPTIMAL if objective == bound else Status.FEASIBLE
    return SolveResult(
        problem="joint",
        status=status,
        objective=objective,
        bound=bound,
        solution=Solution(counts=tuple(counts), pack_of=tuple(pack_of)),
        wall_time_s=elapsed,
        solver=SOLVER_NAME,
        parameters=settings.describe(),
        exact=is_exact,
        resolution=None if is_exact else 1 / scale,
        note=""
        if status is Status.OPTIMAL
        else "time limit reached"
        if code == cp_model.FEASIBLE
        else "optimal at the rounded resolution; the interval covers the rounding",
    )
