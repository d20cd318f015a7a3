"""Budgeted rebalancing: the contract per violation code, and the incremental
rebalancer's guarantees as properties (docs/migration.md, section 10)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from impl import balance
from impl.incremental import (
    float_peaks,
    rebalance_experts_incremental,
    rebalance_incremental,
)
from properties.strategies import rebalance_cases
from properties.workloads import TRACE_CLUSTER, default_workloads, generated_loads
from spec import (
    BalancingProblem,
    MigrationCode,
    check_budgeted_rebalance,
    check_placement,
    count_transfers,
    exact_peaks,
    peak_limits,
)

IntArray = npt.NDArray[np.int64]
Case = tuple[BalancingProblem, IntArray, IntArray]


def transfers(problem: BalancingProblem, old: IntArray, new: IntArray) -> IntArray:
    result: IntArray = count_transfers(
        old, new, num_experts=problem.num_experts, num_gpus=problem.num_gpus
    ).per_layer
    return result


def skewed_case() -> tuple[BalancingProblem, IntArray]:
    """Two layers of 16 experts on (24, 4, 2, 8), the old placement made for reversed
    loads, so that keeping it is far from balanced."""
    loads = np.asarray([[float(1 + (e * 7) % 16) ** 2 for e in range(16)]] * 2)
    loads[1] = loads[1][::-1]
    old_problem = BalancingProblem(loads[:, ::-1].copy(), 24, 4, 2, 8)
    return BalancingProblem(loads, 24, 4, 2, 8), balance(old_problem).phy2log


# The contract, one code at a time -------------------------------------------------------


def test_each_budgeted_code_is_found_and_a_good_answer_passes() -> None:
    problem, old = skewed_case()
    relabeled = balance(problem, previous=old).phy2log
    peaks = exact_peaks(problem.loads, relabeled, problem.num_gpus)
    needed = transfers(problem, old, relabeled)
    assert needed.min() > 0
    assert max(
        exact_peaks(problem.loads, old, problem.num_gpus)[layer] / peaks[layer]
        for layer in range(2)
    ) > Fraction(101, 100)

    def codes(new: object, **options: object) -> list[str]:
        return [v.code.value for v in check_budgeted_rebalance(problem, old, new, **options)]  # type: ignore[arg-type]

    # The relabeled stateless answer meets every tolerance of its own peak.
    assert codes(relabeled, reference_peaks=peaks, eps=0.0, reference_transfers=needed) == []
    # placement-invalid: an expert id out of range (nothing else checked).
    broken = relabeled.copy()
    broken[0, 0] = problem.num_experts
    assert codes(broken, reference_peaks=peaks, eps=0.0, max_transfers=0) == ["placement-invalid"]
    # peak-above-tolerance: keeping the old placement is too unbalanced for 1 %.
    assert "peak-above-tolerance" in codes(old, reference_peaks=peaks, eps=0.01)
    # ... and is within a tolerance as wide as its own peak.
    wide = (
        max(
            exact_peaks(problem.loads, old, problem.num_gpus)[layer] / peaks[layer]
            for layer in range(2)
        )
        - 1
    )
    assert codes(old, reference_peaks=peaks, eps=wide) == []
    # transfers-above-budget: the relabeled answer with a budget below its transfers.
    found = check_budgeted_rebalance(problem, old, relabeled, max_transfers=int(needed.min()) - 1)
    assert {v.code for v in found} == {MigrationCode.TRANSFERS_ABOVE_BUDGET}
    assert [v.layer for v in found] == [0, 1]
    # peak-above-previous: from the balanced placement back to the skewed one, which is
    # more peaked than keeping the balanced one (no transfer at all).
    back = check_budgeted_rebalance(problem, relabeled, old, not_above_previous=True)
    assert {v.code for v in back} == {MigrationCode.PEAK_ABOVE_PREVIOUS}
    assert check_budgeted_rebalance(problem, old, relabeled, not_above_previous=True) == []
    # transfers-above-reference: the stateless answer not relabeled needs more.
    stateless = balance(problem).phy2log
    fewer = np.minimum(needed, transfers(problem, old, stateless) - 1)
    assert codes(stateless, reference_transfers=fewer) == ["transfers-above-reference"] * 2


def test_the_peak_limit_is_exact() -> None:
    problem, old = skewed_case()
    relabeled = balance(problem, previous=old).phy2log
    peaks = exact_peaks(problem.loads, relabeled, problem.num_gpus)
    # A reference peak one part in 10**30 below the answer's: floats cannot see it.
    nudged = [p * (1 - Fraction(1, 10**30)) for p in peaks]
    found = check_budgeted_rebalance(problem, old, relabeled, reference_peaks=nudged, eps=0)
    assert [v.code for v in found] == [MigrationCode.PEAK_ABOVE_TOLERANCE] * 2
    assert peak_limits([Fraction(3)], 0.5) == [Fraction(9, 2)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"eps": 0.01}, "together"),
        ({"eps": -0.1, "reference_peaks": [1.0, 1.0]}, "eps must be non-negative"),
        ({"eps": float("nan"), "reference_peaks": [1.0, 1.0]}, "eps must be finite"),
        ({"eps": 0.0, "reference_peaks": [1.0]}, "one entry per layer"),
        ({"max_transfers": -1}, "max_transfers"),
        ({"reference_transfers": [1]}, "one entry per layer"),
    ],
)
def test_bad_budgeted_options_are_named(options: dict[str, object], message: str) -> None:
    problem, old = skewed_case()
    with pytest.raises(ValueError, match=message):
        check_budgeted_rebalance(problem, old, old, **options)  # type: ignore[arg-type]


# The incremental rebalancer's guarantees ------------------------------------------------


@given(rebalance_cases(max_gpus=8, max_layers=3), st.sampled_from([0.0, 0.01, 0.05, 0.3]))
@settings(max_examples=60)
def test_incremental_is_within_the_tolerance_and_never_above_relabeling(
    case: Case, eps: float
) -> None:
    problem, old, _ = case
    result = rebalance_incremental(problem, old, eps=eps)
    relabeled = balance(problem, previous=old).phy2log
    peaks = exact_peaks(problem.loads, relabeled, problem.num_gpus)
    found = check_budgeted_rebalance(
        problem,
        old,
        result.phy2log,
        reference_peaks=peaks,
        eps=eps,
        reference_transfers=transfers(problem, old, relabeled).tolist(),
    )
    assert found == []
    assert np.array_equal(result.transfers, transfers(problem, old, result.phy2log))
    assert np.array_equal(result.relabeled_transfers, transfers(problem, old, relabeled))
    again = rebalance_incremental(problem, old, eps=eps)
    assert np.array_equal(again.phy2log, result.phy2log)


@given(rebalance_cases(max_gpus=8, max_layers=2), st.integers(0, 12))
@settings(max_examples=40)
def test_incremental_with_a_budget_stays_within_it_and_never_raises_the_peak(
    case: Case, budget: int
) -> None:
    problem, old, _ = case
    result = rebalance_incremental(problem, old, max_transfers=budget)
    assert check_budgeted_rebalance(problem, old, result.phy2log, max_transfers=budget) == []
    before = exact_peaks(problem.loads, old, problem.num_gpus)
    after = exact_peaks(problem.loads, result.phy2log, problem.num_gpus)
    assert all(a <= b for a, b in zip(after, before, strict=True))
    assert (result.transfers <= budget).all()


def real_pair(layers: int) -> tuple[BalancingProblem, IntArray]:
    """Two of the real traces (or generated workloads without them), ``layers`` layers
    spread over the 58, at the traces' cluster."""
    workloads, _ = default_workloads()
    if len(workloads) >= 2:
        old_loads, new_loads = workloads[0].loads, workloads[1].loads
    else:
        old_loads, new_loads = generated_loads(0), generated_loads(1)
    chosen = np.linspace(0, old_loads.shape[0] - 1, layers).round().astype(int)
    old_problem = BalancingProblem(old_loads[chosen], *TRACE_CLUSTER)
    return BalancingProblem(new_loads[chosen], *TRACE_CLUSTER), balance(old_problem).phy2log


def test_incremental_at_real_size_moves_a_fraction_of_relabeling() -> None:
    problem, old = real_pair(6)
    result = rebalance_incremental(problem, old, eps=0.01)
    relabeled = balance(problem, previous=old).phy2log
    peaks = exact_peaks(problem.loads, relabeled, problem.num_gpus)
    assert (
        check_budgeted_rebalance(problem, old, result.phy2log, reference_peaks=peaks, eps=0.01)
        == []
    )
    assert not result.fell_back.any()
    assert result.transfers.sum() * 4 < result.relabeled_transfers.sum()
    fast = rebalance_incremental(problem, old, eps=0.01, fast=True)
    assert np.array_equal(fast.phy2log, result.phy2log)


def test_the_deepseek_signature_gives_a_valid_placement() -> None:
    problem, old = skewed_case()
    weight = torch.from_numpy(problem.loads.copy())
    phy2log, log2phy, logcnt = rebalance_experts_incremental(weight, 24, 4, 2, 8, old)
    assert check_placement(problem, phy2log, log2phy, logcnt) == []
    assert np.allclose(
        float_peaks(problem.loads, phy2log.numpy(), 8),
        [float(p) for p in exact_peaks(problem.loads, phy2log.numpy(), 8)],
    )
    budgeted = rebalance_experts_incremental(weight, 24, 4, 2, 8, old, max_transfers=0)[0]
    assert np.array_equal(budgeted.numpy(), old)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of eps"),
        ({"eps": 0.01, "max_transfers": 3}, "exactly one of eps"),
        ({"eps": -1.0}, "eps must be non-negative"),
        ({"max_transfers": -2}, "max_transfers"),
        ({"eps": 0.0, "reference_peaks": [1.0]}, "one entry per layer"),
    ],
)
def test_bad_incremental_options_are_named(options: dict[str, object], message: str) -> None:
    problem, old = skewed_case()
    with pytest.raises(ValueError, match=message):
        rebalance_incremental(problem, old, **options)  # type: ignore[arg-type]
