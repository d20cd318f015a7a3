"""Budgeted rebalancing: trading transfers for balance (docs/migration.md, section 10).

For one layer, an old placement ``previous[l]``, the new loads ``w[l]`` and a stated
reference peak ``p_ref[l]`` (the stateless reference's peak, or a certified optimum):

- **(a) fewest transfers within a tolerance**: among the valid placements whose exact
  peak GPU load is at most ``(1 + eps) * p_ref[l]``, one with the fewest transfers
  (``spec.migration``: (expert, GPU) pairs held now and not before);
- **(b) lowest peak within a budget**: among the valid placements that need at most
  ``K`` transfers, one with the lowest peak. The old placement itself needs 0, so (b)
  always has an answer; (a) has one whenever ``eps >= 0`` and ``p_ref`` is reached by
  some placement.

Both policies: under the hierarchical policy a valid placement keeps every group on one
node (groups may change node; each expert of a group that changes node is then a
transfer on every GPU that holds it); under the global policy any valid placement.

A budgeted rebalancer returns a placement only; its transfers and its peak are computed
here from the two placements and the loads, never taken from what the target reports
(``check_budgeted_rebalance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from spec.migration import count_transfers, exact_gpu_loads, validate_placement
from spec.problem import BalancingProblem
from spec.violations import MigrationCode, Violation

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def exact_peaks(loads: FloatArray, phy2log: IntArray, num_gpus: int) -> list[Fraction]:
    """Each layer's peak GPU load as an exact rational."""
    return [max(row) for row in exact_gpu_loads(loads, phy2log, num_gpus)]


def peak_limits(
    reference_peaks: Sequence[Fraction | float], eps: Fraction | float
) -> list[Fraction]:
    """``(1 + eps) * p_ref[l]`` per layer, exactly (floats are read as their exact
    values); ValueError for a negative or non-finite ``eps`` or reference peak."""
    slack = _exact_nonnegative(eps, "eps")
    return [
        (1 + slack) * _exact_nonnegative(peak, f"reference_peaks[{layer}]")
        for layer, peak in enumerate(reference_peaks)
    ]


def _exact_nonnegative(value: Fraction | float, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Fraction | float | int):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    exact = Fraction(value)
    if exact < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return exact


def check_budgeted_rebalance(
    problem: BalancingProblem,
    previous: object,
    phy2log: object,
    *,
    reference_peaks: Sequence[Fraction | float] | None = None,
    eps: Fraction | float | None = None,
    max_transfers: int | None = None,
    reference_transfers: Sequence[int] | None = None,
    not_above_previous: bool = False,
) -> list[Violation]:
    """Every way ``phy2log``, a budgeted rebalance of ``problem`` from ``previous``,
    breaks its contract:

    - ``placement-invalid``: not a valid placement (then nothing else is checked);
    - ``peak-above-tolerance`` (with ``eps`` and ``reference_peaks``): a layer's exact
      peak exceeds ``(1 + eps) * reference_peaks[l]``;
    - ``transfers-above-budget`` (with ``max_transfers``): a layer needs more than
      ``max_transfers`` transfers;
    - ``transfers-above-reference`` (with ``reference_transfers``): a layer needs more
      transfers than the reference needs for it (e.g. the relabeling optimum of the
      stateless answer, which meets the tolerance with ``eps >= 0``);
    - ``peak-above-previous`` (with ``not_above_previous``, for the budget mode): a
      layer's exact peak exceeds the old placement's, which needs no transfer at all.

    Transfers and peaks are computed from the placements and the loads. ``previous``
    must be a valid placement (ValueError otherwise).
    """
    old = validate_placement(problem, previous, "previous")
    if (eps is None) != (reference_peaks is None):
        raise ValueError("eps and reference_peaks must be given together")
    if max_transfers is not None and (
        isinstance(max_transfers, bool) or not isinstance(max_transfers, int) or max_transfers < 0
    ):
        raise ValueError(f"max_transfers must be a non-negative int, got {max_transfers!r}")
    for name, values in (
        ("reference_peaks", reference_peaks),
        ("reference_transfers", reference_transfers),
    ):
        if values is not None and len(values) != problem.num_layers:
            raise ValueError(
                f"{name} must have one entry per layer ({problem.num_layers}), got {len(values)}"
            )
    try:
        new = validate_placement(problem, phy2log, "phy2log")
    except (TypeError, ValueError) as error:
        return [Violation(MigrationCode.PLACEMENT_INVALID, str(error))]
    found: list[Violation] = []
    if eps is not None and reference_peaks is not None:
        limits = peak_limits(reference_peaks, eps)
        peaks = exact_peaks(problem.loads, new, problem.num_gpus)
        for layer, (peak, limit) in enumerate(zip(peaks, limits, strict=True)):
            if peak > limit:
                found.append(
                    Violation(
                        MigrationCode.PEAK_ABOVE_TOLERANCE,
                        f"peak {float(peak):.6g} exceeds (1 + eps) * reference peak = "
                        f"{float(limit):.6g} (eps = {float(eps):g}; {float(peak / limit - 1):.3%} "
                        f"above, exact rationals)",
                        layer,
                    )
                )
    transfers = count_transfers(
        old, new, num_experts=problem.num_experts, num_gpus=problem.num_gpus
    ).per_layer
    if max_transfers is not None:
        for layer in np.flatnonzero(transfers > max_transfers).tolist():
            found.append(
                Violation(
                    MigrationCode.TRANSFERS_ABOVE_BUDGET,
                    f"{transfers[layer]} transfers where the budget is {max_transfers}",
                    layer,
                )
            )
    if reference_transfers is not None:
        limit_array = np.asarray(reference_transfers, dtype=np.int64)
        for layer in np.flatnonzero(transfers > limit_array).tolist():
            found.append(
                Violation(
                    MigrationCode.TRANSFERS_ABOVE_REFERENCE,
                    f"{transfers[layer]} transfers where the reference needs "
                    f"{int(limit_array[layer])}",
                    layer,
                )
            )
    if not_above_previous:
        before = exact_peaks(problem.loads, old, problem.num_gpus)
        after = exact_peaks(problem.loads, new, problem.num_gpus)
        for layer, (then, now) in enumerate(zip(before, after, strict=True)):
            if now > then:
                found.append(
                    Violation(
                        MigrationCode.PEAK_ABOVE_PREVIOUS,
                        f"peak {float(now):.6g} above the old placement's {float(then):.6g}, "
                        f"which needs no transfer",
                        layer,
                    )
                )
    found.sort(key=lambda v: (-1 if v.layer is None else v.layer, v.code.value))
    return found
