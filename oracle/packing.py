"""Packing with cardinality: items onto ``G`` identical packs of exactly ``n / G`` items,
minimising the heaviest pack; optionally no two items with one label in a pack.

CP-SAT model: one Boolean per (item, pack); items sorted heaviest first with "item ``j``
only in packs ``0..j``" (breaks the symmetry of identical packs); a greedy solution,
improved by swaps, as the hint; the analytical bounds below as a floor on the objective.
More than ``MAX_MODEL_TERMS`` (item, pack) pairs are answered ``UNKNOWN`` with the
analytical bound before the model is built; the time limit covers the heuristics too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from fractions import Fraction

from ortools.sat.python import cp_model

from oracle.cpsat import MAX_MODEL_TERMS, SOLVER_NAME, SolverSettings, integer_bound, solve
from oracle.exact import as_fractions, scale_to_integers
from oracle.heuristics import canonical_packs, greedy_packing, improve_by_swaps
from oracle.result import Solution, SolveResult, Status
from spec.solutions import heaviest_pack, packing_violations


def packing_lower_bound(weights: Sequence[Fraction], num_packs: int) -> Fraction:
    """A proven lower bound on the heaviest pack (exact rationals).

    - the average: ``total / G``;
    - the heaviest item plus the ``cap - 1`` lightest others;
    - pigeonhole: among the ``kG + 1`` heaviest items some pack holds ``k + 1``, at least
      the ``k + 1`` lightest of them, plus the ``cap - k - 1`` lightest items overall.

    ``O(n log n)``: sums of runs come from prefix sums.
    """
    count = len(weights)
    cap = count // num_packs
    ordered = sorted(weights, reverse=True)
    prefix = [Fraction(0)]
    for w in ordered:
        prefix.append(prefix[-1] + w)

    def run(first: int, stop: int) -> Fraction:
        """``sum(ordered[first:stop])``."""
        return prefix[stop] - prefix[first] if stop > first else Fraction(0)

    bound = prefix[count] / num_packs
    if count == 0:
        return bound
    bound = max(bound, ordered[0] + run(count - (cap - 1), count) if cap > 1 else ordered[0])
    for k in range(1, cap):
        top = k * num_packs + 1
        if top > count:
            break
        rest = cap - k - 1
        bound = max(bound, run(top - (k + 1), top) + run(count - rest, count))
    return bound


def check_packing_input(
    weights: Sequence[object], num_packs: object, labels: Sequence[object] | None
) -> None:
    if isinstance(num_packs, bool) or not isinstance(num_packs, int):
        raise TypeError(f"num_packs must be an int, got {type(num_packs).__name__}")
    if num_packs < 1:
        raise ValueError(f"num_packs must be positive, got {num_packs}")
    if len(weights) == 0 or len(weights) % num_packs:
        raise ValueError(
            f"the number of weights ({len(weights)}) must be a positive multiple of "
            f"num_packs ({num_packs})"
        )
    if labels is not None:
        if len(labels) != len(weights):
            raise ValueError(f"labels has length {len(labels)}, expected {len(weights)}")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in labels):
            raise TypeError("labels must be integers")


def build_packing_model(
    w: Sequence[int], num_packs: int, labels: Sequence[int] | None, floor: int
) -> tuple[cp_model.CpModel, dict[tuple[int, int], cp_model.IntVar]]:
    """The model of a packing whose items are sorted heaviest first: ``x[j, p]`` when
    item ``j`` is in pack ``p``, only for ``p <= j`` (identical packs: symmetry broken),
    ``cap`` items per pack, at most one item of a label per pack, the heaviest pack
    (at least ``floor``) minimised."""
    count = len(w)
    cap = count // num_packs
    model = cp_model.CpModel()
    x = {
        (j, p): model.new_bool_var(f"x{j}_{p}")
        for j in range(count)
        for p in range(min(j, num_packs - 1) + 1)
    }

    def in_pack(p: int) -> list[int]:
        return [j for j in range(count) if (j, p) in x]

    for j in range(count):
        model.add_exactly_one(x[j, p] for p in range(min(j, num_packs - 1) + 1))
    for p in range(num_packs):
        model.add(sum(x[j, p] for j in in_pack(p)) == cap)
    if labels is not None:
        for label in set(labels):
            for p in range(num_packs):
                column = [x[j, p] for j in in_pack(p) if labels[j] == label]
                if len(column) > 1:
                    model.add_at_most_one(column)
    peak = model.new_int_var(max(0, floor), sum(w), "peak")
    for p in range(num_packs):
        model.add(sum(w[j] * x[j, p] for j in in_pack(p)) <= peak)
    model.minimize(peak)
    return model, x


def solve_packing(
    weights: Sequence[float | int | Fraction],
    num_packs: int,
    labels: Sequence[int] | None = None,
    settings: SolverSettings | None = None,
    hint: Sequence[int] | None = None,
) -> SolveResult:
    """Minimise the heaviest of ``num_packs`` packs of exactly ``n / num_packs`` items.

    ``hint``: a packing to start from (else a greedy one improved by exchanges).
    """
    check_packing_input(weights, num_packs, labels)
    settings = settings or SolverSettings()
    exact = as_fractions(weights)
    start = time.perf_counter()
    deadline = settings.deadline()
    count = len(exact)
    cap = count // num_packs
    analytical = packing_lower_bound(exact, num_packs)

    if labels is not None:
        per_label: dict[int, int] = {}
        for label in labels:
            per_label[label] = per_label.get(label, 0) + 1
        crowded = [label for label, n in per_label.items() if n > num_packs]
        if crowded:
            return SolveResult.infeasible(
                "packing",
                analytical,
                time.perf_counter() - start,
                "pigeonhole",
                note=f"label {crowded[0]} has {per_label[crowded[0]]} items for {num_packs} packs",
            )

    size = count * num_packs  # one Boolean per (item, pack), about
    if size > MAX_MODEL_TERMS:
        return SolveResult.unknown(
            "packing",
            analytical,
            time.perf_counter() - start,
            SOLVER_NAME,
            settings.describe(),
            note=f"not solved: {count} items x {num_packs} packs = {size} model variables, "
            f"more than the {MAX_MODEL_TERMS} one model may have; the bound is analytical",
        )

    scaled = scale_to_integers(exact)
    order = sorted(range(count), key=lambda j: (-scaled.integers[j], j))
    w = [scaled.integers[j] for j in order]
    lab = None if labels is None else [labels[j] for j in order]

    floor = int(analytical * scaled.scale) - (cap if not scaled.exact else 0)
    model, x = build_packing_model(w, num_packs, lab, floor)

    start_from = None if hint is None else [hint[j] for j in order]
    if start_from is not None and packing_violations(start_from, num_packs, lab):
        raise ValueError("hint is not a valid packing of these items")
    if start_from is None:
        start_from = greedy_packing(w, num_packs, lab)
    if start_from is not None:
        start_from = canonical_packs(
            improve_by_swaps(w, start_from, num_packs, lab, deadline=deadline)
        )
        for (j, p), var in x.items():
            model.add_hint(var, start_from[j] == p)

    if deadline.expired():  # the heuristics used the time up: answer with their packing
        elapsed = time.perf_counter() - start
        if start_from is None:
            return SolveResult.unknown(
                "packing", analytical, elapsed, SOLVER_NAME, settings.describe()
            )
        sorted_pack = list(start_from)
        bound = analytical
        code = cp_model.FEASIBLE
    else:
        solver, code = solve(
            settings, model, start_from is not None or lab is None, "packing", deadline
        )
        elapsed = time.perf_counter() - start
        if code == cp_model.INFEASIBLE:
            return SolveResult.infeasible(
                "packing", analytical, elapsed, SOLVER_NAME, settings.describe()
            )
        solver_bound = Fraction(integer_bound(solver))
        if not scaled.exact:
            solver_bound -= Fraction(cap, 2)  # each of a pack's cap items rounded by <= 1/2
        bound = max(analytical, solver_bound / scaled.scale)
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            sorted_pack = [0] * count
            for (j, p), var in x.items():
                if solver.value(var):
                    sorted_pack[j] = p
        elif start_from is not None:  # out of time before CP-SAT found one: the hint
            sorted_pack = list(start_from)
            code = cp_model.FEASIBLE
        else:
            return SolveResult.unknown(
                "packing",
                bound,
                elapsed,
                SOLVER_NAME,
                settings.describe(),
                None if scaled.exact else 1 / scaled.scale,
            )
    pack_of = [0] * count
    for position, item in enumerate(order):
        pack_of[item] = sorted_pack[position]
    violations = packing_violations(pack_of, num_packs, labels)
    if violations:
        raise AssertionError(f"packing oracle produced an invalid packing: {violations}")
    objective = heaviest_pack(exact, pack_of, num_packs)
    status = Status.OPTIMAL if objective == bound else Status.FEASIBLE
    note = (
        ""
        if status is Status.OPTIMAL or code != cp_model.OPTIMAL
        else ("solved optimally at the rounded resolution; the interval covers the rounding")
    )
    if status is Status.FEASIBLE and code == cp_model.FEASIBLE:
        note = f"time limit of {settings.time_limit_s} s reached"
    return SolveResult(
        problem="packing",
        status=status,
        objective=objective,
        bound=bound,
        solution=Solution(pack_of=tuple(pack_of)),
        wall_time_s=elapsed,
        solver=SOLVER_NAME,
        parameters=settings.describe(),
        exact=scaled.exact,
        resolution=None if scaled.exact else 1 / scaled.scale,
        note=note,
    )
