"""Budgeted rebalancing on the real traces: the incremental rebalancer's transfers at a
few tolerances, the load-flow bound beside them, and the time per pair
(``eplb-spec migration``; docs/migration.md, section 13)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from impl.balancer import balance
from impl.incremental import rebalance_incremental
from oracle.budgeted import transfer_lower_bound
from spec.problem import BalancingProblem

IntArray = npt.NDArray[np.int64]

BUDGETED_EPS = (0.0, 0.01, 0.02, 0.05)
BOUND_EPS = (0.01,)  # the load-flow bound takes about 1.5 s of CPU per pair and eps


@dataclass(frozen=True)
class BudgetedFigures:
    """One pair at one tolerance, summed over its layers: the incremental rebalancer's
    transfers, the load-flow lower bound and the analytical one for a peak within
    ``(1 + eps)`` of the stateless answer's, the layers where the relabeled stateless
    answer was taken, and the CPU seconds of the rebalance (``fast=True`` on one thread,
    stateless answer included; process time, so that other work on the machine does not
    count) and of the bound."""

    eps: float
    transfers: int
    bound: int | None  # None: not computed at this eps
    analytical: int | None
    fell_back: int
    seconds: float
    bound_seconds: float


def budgeted_pairs(
    problem: BalancingProblem,
    olds: Sequence[IntArray],
    peaks: Sequence[Fraction],
    eps_values: Sequence[float],
    bound_eps: Sequence[float] = BOUND_EPS,
) -> list[list[BudgetedFigures]]:
    """For each old placement of ``olds`` (into ``problem``'s loads), the figures at each
    ``eps``, with the load-flow bound at the ``eps`` of ``bound_eps`` (None elsewhere);
    ``peaks[l]`` is the stateless answer's exact peak of layer ``l``. The bound's block
    requirements are shared between the old placements of a layer."""
    result: list[list[BudgetedFigures]] = [[] for _ in olds]
    balance(problem, fast=True, threads=1)  # loads the compiled code before anything is timed
    for eps in eps_values:
        budgets = [peak * (1 + Fraction(eps)) for peak in peaks]
        caches: list[dict[tuple[int, ...], list[int] | None]] = [{} for _ in peaks]
        for index, old in enumerate(olds):
            start = time.process_time()
            answer = rebalance_incremental(problem, old, eps=eps, fast=True, threads=1)
            seconds = time.process_time() - start
            start = time.process_time()
            bound: int | None = None
            analytical: int | None = None
            if eps in bound_eps:
                bound = analytical = 0
                for layer in range(problem.num_layers):
                    found = transfer_lower_bound(
                        problem, layer, old[layer].tolist(), budgets[layer], presences=caches[layer]
                    )
                    if found.bound is None or found.analytical is None:
                        raise AssertionError("the stateless answer meets its own budget")
                    if found.bound > answer.transfers[layer]:
                        raise AssertionError(
                            f"layer {layer}: bound {found.bound} above a placement's "
                            f"{answer.transfers[layer]} transfers"
                        )
                    bound += found.bound
                    analytical += found.analytical
            result[index].append(
                BudgetedFigures(
                    eps,
                    int(answer.transfers.sum()),
                    bound,
                    analytical,
                    int(answer.fell_back.sum()),
                    seconds,
                    time.process_time() - start,
                )
            )
    return result


def budgeted_summary(per_pair: Sequence[Sequence[BudgetedFigures]]) -> list[dict[str, Any]]:
    """Median and worst over the pairs of each column, per ``eps``."""
    rows = []
    for column in zip(*per_pair, strict=True):
        rows.append(
            {
                "eps": column[0].eps,
                "transfers": _summary([f.transfers for f in column]),
                "bound": _summary([f.bound for f in column if f.bound is not None]),
                "analytical": _summary([f.analytical for f in column if f.analytical is not None]),
                "transfers_over_bound": _summary(
                    [f.transfers / max(f.bound, 1) for f in column if f.bound is not None]
                ),
                "fell_back": sum(f.fell_back for f in column),
                "seconds": _summary([f.seconds for f in column]),
                "bound_seconds": _summary([f.bound_seconds for f in column]),
            }
        )
    return rows


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": float(statistics.median(values)), "worst": float(max(values))}


def budgeted_figure(pairs: Sequence[Any]) -> Any:
    """Transfers against the tolerance: one thin line per pair (incremental), the median
    over the pairs (thick), the median load-flow bound (dashed), and the medians of the
    stateless rebalance, slot preservation and the relabeling optimum at ``eps = 0``
    (they keep the stateless peak exactly). Log scale: they differ by an order of
    magnitude. ``pairs`` are ``studies.migration.PairFigures`` with budgeted figures."""
    from studies.plots import new_figure, require_matplotlib

    require_matplotlib()
    figure = new_figure(7.5, 5.0)
    axes = figure.subplots()
    eps = [100 * f.eps for f in pairs[0].budgeted]
    for pair in pairs:
        axes.plot(eps, [f.transfers for f in pair.budgeted], color="tab:blue", alpha=0.12, lw=0.8)
    median = [statistics.median(p.budgeted[i].transfers for p in pairs) for i in range(len(eps))]
    with_bound = [i for i in range(len(eps)) if pairs[0].budgeted[i].bound is not None]
    bound = [statistics.median(p.budgeted[i].bound or 0 for p in pairs) for i in with_bound]
    axes.plot(
        eps, median, "o-", color="tab:blue", lw=2.5, label="incremental (median; thin: each pair)"
    )
    axes.plot(
        [eps[i] for i in with_bound],
        bound,
        "v",
        color="tab:gray",
        lw=2,
        label="oracle's load-flow bound (median)",
    )
    for way, color, label in (
        ("stateless", "tab:red", "stateless"),
        ("slots_kept", "tab:orange", "slot preservation (vLLM)"),
        ("relabeled", "tab:green", "relabeling optimum"),
    ):
        value = statistics.median(p.transfers[way] for p in pairs)
        axes.plot([0], [value], "s", color=color, markersize=8, label=f"{label} (median, eps = 0)")
    axes.set_yscale("log")
    axes.set_xlabel("tolerance eps (%): peak at most (1 + eps) x the stateless peak")
    axes.set_ylabel("transfers per trace pair (58 layers)")
    axes.set_title(f"Budgeted rebalancing on {len(pairs)} trace pairs")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="center right")
    return figure
