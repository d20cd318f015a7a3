"""The oracle's exactness and its limits: integers stay integers, time limits bound the
whole solve, and sizes that cannot fit are answered before the work starts."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from impl import balance
from oracle.bruteforce import best_joint, best_layer, best_packing, best_replication
from oracle.cpsat import MAX_MODEL_TERMS, SolverSettings
from oracle.exact import as_fractions
from oracle.instances import solve_instance
from oracle.joint import joint_lower_bound, solve_joint
from oracle.packing import packing_lower_bound, solve_packing
from oracle.pipeline import (
    MAX_CERTIFY_SLOTS,
    certify_layer,
    certify_row,
    layer_lower_bound,
    optimal_layer,
)
from oracle.replication import optimal_peak, solve_replication
from oracle.result import Status
from properties.strategies import load_values
from spec import BalancingProblem, peak_gpu_load

# Integers that float64 cannot hold exactly: 2**53 + 1 rounds to 2**53.
BIG = [2**53 + 1, 2**53 + 3, 2**63 + 1, 2**64 + 1, 10**30 + 1, 3**60]


# Exactness.


def test_a_layer_of_one_expert_of_load_2_to_the_53_plus_1_is_exact() -> None:
    weight = 2**53 + 1
    problem = BalancingProblem([[weight]], 1, 1, 1, 1)
    assert problem.loads[0, 0] == 2.0**53  # the float64 problem has lost the last bit
    answer = optimal_layer(problem, 0, weights=[weight]).result
    assert answer.status is Status.OPTIMAL
    assert answer.objective == answer.bound == weight
    from_file = solve_instance(
        {"problem": "layer", "weights": [weight], "num_replicas": 1, "num_groups": 1}
        | {"num_nodes": 1, "num_gpus": 1}
    ).to_json()
    assert from_file["objective_exact"] == from_file["bound_exact"] == str(weight)


@pytest.mark.parametrize("big", BIG)
def test_big_integer_layers_match_brute_force(big: int) -> None:
    weights = [big, big - 1, 3, big // 7]
    document = {
        "problem": "layer",
        "weights": weights,
        "num_replicas": 6,
        "num_groups": 2,
        "num_nodes": 2,
        "num_gpus": 2,
    }
    truth = best_layer(weights, 6, 2, 2, 2)
    answer = solve_instance(document)
    assert answer.objective is not None
    assert answer.bound <= truth <= answer.objective
    if answer.status is Status.OPTIMAL:
        assert answer.objective == truth
    if not answer.exact:  # the solver saw rounded integers: said so, interval proven
        assert answer.resolution is not None


@pytest.mark.parametrize("big", BIG)
def test_big_integers_in_every_solver(big: int) -> None:
    weights = [big, 1, big // 3]
    replication = solve_replication(weights, 5)
    assert replication.objective == best_replication(weights, 5)
    packing = solve_packing([*weights, 0], 2)
    joint = solve_joint(weights, 4, 2)
    for result in (packing, joint):
        assert result.objective is not None
        assert result.bound <= result.objective
        assert result.exact or result.resolution is not None
    packing_truth = best_packing([*weights, 0], 2)
    joint_truth = best_joint(weights, 4, 2)
    assert packing_truth is not None
    assert joint_truth is not None
    assert packing.bound <= packing_truth <= (packing.objective or 0)
    assert joint.bound <= joint_truth <= (joint.objective or 0)


def test_exact_weights_must_be_the_problem_s_loads() -> None:
    problem = BalancingProblem([[2**53 + 1, 5]], 2, 1, 1, 1)
    with pytest.raises(ValueError, match=r"weights\[1\] = 6 is not the problem's load 5.0"):
        optimal_layer(problem, 0, weights=[2**53 + 1, 6])
    with pytest.raises(ValueError, match="weights has 1 values, expected 2"):
        layer_lower_bound(problem, 0, weights=[5])
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\), got 3"):
        certify_layer(problem, 3)
    bound = layer_lower_bound(problem, 0, weights=[2**53 + 1, 5])
    assert bound == 2**53 + 6  # one GPU holds both, exactly


def test_numbers_beyond_float64_are_refused() -> None:
    with pytest.raises(ValueError, match=r"weights\[1\] = a 401-digit integer is beyond"):
        as_fractions([1, 10**400])
    with pytest.raises(ValueError, match="weights sum to more than the float64 range"):
        as_fractions([1e308, 1e308])
    with pytest.raises(ValueError, match=r"weight\[0\]\[0\] = a 401-digit integer is beyond"):
        BalancingProblem([[10**400]], 1, 1, 1, 1)


# Replication: an exact method whose cost does not depend on the number of slots.


def candidate_peak(weights: list[Fraction], slots: int) -> Fraction:
    """The former method: the least candidate ``w / k`` (``k <= S - n + 1``) that
    ``need`` fits into the slots (slow for large S; an independent check)."""
    n = len(weights)
    if max(weights) == 0:
        return Fraction(0)
    for peak in sorted({w / k for w in weights if w > 0 for k in range(1, slots - n + 2)}):
        need = sum(max(1, -(-w // peak)) for w in weights)
        if need <= slots:
            return peak
    raise AssertionError("max(w) always fits")


def cannot_go_below(weights: list[Fraction], slots: int, peak: Fraction) -> bool:
    """Proof that no counts reach a peak below ``peak``: that needs
    ``c_i >= floor(w_i / peak) + 1`` replicas of every expert, more than the slots."""
    if peak == 0:
        return True
    return sum(max(1, w // peak + 1) for w in weights) > slots


@given(
    st.integers(1, 6).flatmap(lambda n: st.tuples(load_values(n), st.integers(0, 40))),
)
@example(([0.0, 0.0], 3))
@example(([1e-300, 1e300, 1.0], 7))
@example(([5.0, 5.0, 5.0], 40))
def test_replication_equals_the_candidate_method(case: tuple[list[float], int]) -> None:
    loads, extra = case
    weights = as_fractions(loads)
    slots = len(weights) + extra
    assert optimal_peak(weights, slots) == candidate_peak(weights, slots)


@pytest.mark.parametrize("slots", [10**7, 10**12, 10**300])
def test_replication_with_huge_slot_counts_is_exact_and_proven(slots: int) -> None:
    weights = [7, 10**6, 3, 0, 2**53 + 1]
    result = solve_replication(weights, slots)
    assert result.status is Status.OPTIMAL
    assert result.solution is not None
    assert result.solution.counts is not None
    counts = result.solution.counts
    assert sum(counts) == slots
    assert min(counts) >= 1
    exact = as_fractions(weights)
    assert max(w / c for w, c in zip(exact, counts, strict=True)) == result.objective
    assert result.objective is not None
    assert cannot_go_below(exact, slots, result.objective)


# Sizes that cannot fit are answered before the work starts.


def test_a_joint_solve_with_ten_million_slots_is_unknown_at_once() -> None:
    weights = [5, 3, 1]
    for slots, packs in ((10**7, 2), (10**12, 4), (4000, 4000)):
        start = time.perf_counter()
        result = solve_joint(weights, slots, packs)
        assert time.perf_counter() - start < 2
        assert result.status is Status.UNKNOWN
        assert "not solved" in result.note
        assert result.bound == joint_lower_bound(as_fractions(weights), slots, packs)


def test_a_packing_model_too_big_is_unknown_at_once() -> None:
    weights = list(range(MAX_MODEL_TERMS // 2 + 2))
    weights += [0] * (len(weights) % 2)
    result = solve_packing(weights, 2)
    assert result.status is Status.UNKNOWN
    assert "not solved" in result.note
    assert result.bound == packing_lower_bound(as_fractions(weights), 2)


def test_a_layer_with_too_many_splits_is_unknown_with_a_valid_bound() -> None:
    rng = np.random.default_rng(1)
    problem = BalancingProblem(rng.integers(1, 1000, size=(1, 16)), 32, 16, 2, 4)
    answer = optimal_layer(problem, 0).result
    assert answer.status is Status.UNKNOWN
    assert "group splits" in answer.note
    result = balance(problem)
    peak = peak_gpu_load(problem.loads, result.phy2log, result.logcnt, 4)[0]
    assert answer.bound <= Fraction(float(peak))


def test_certify_row_refuses_more_slots_than_it_packs() -> None:
    with pytest.raises(ValueError, match=f"more than the {MAX_CERTIFY_SLOTS} slots"):
        certify_row([1, 2], MAX_CERTIFY_SLOTS * 2, 2)
    with pytest.raises(ValueError, match=r"num_slots \(9\) must be divisible by num_gpus"):
        certify_row([1, 2], 9, 2)


# The time limit bounds the whole solve (each bound below is generous for a loaded
# machine; these solves ran for minutes before).


def test_a_sixteen_group_layer_stops_at_its_time_limit() -> None:
    rng = random.Random(0)
    problem = BalancingProblem([[rng.randint(1, 1000) for _ in range(16)]], 16, 16, 2, 4)
    start = time.perf_counter()
    answer = optimal_layer(problem, 0, SolverSettings(time_limit_s=1.0)).result
    assert time.perf_counter() - start < 4.0
    assert answer.status is not Status.OPTIMAL or answer.objective == answer.bound
    if answer.status is not Status.OPTIMAL:
        assert "time limit" in answer.note
    result = balance(problem)
    peak = peak_gpu_load(problem.loads, result.phy2log, result.logcnt, 4)[0]
    assert answer.bound <= Fraction(float(peak))


def test_a_joint_model_near_the_size_limit_stops_near_its_time_limit() -> None:
    rng = random.Random(2)
    weights = [rng.randint(1, 10**6) for _ in range(10)]
    start = time.perf_counter()
    result = solve_joint(weights, 40, 4, settings=SolverSettings(time_limit_s=0.2))
    assert time.perf_counter() - start < 3.0
    assert result.status in (Status.FEASIBLE, Status.OPTIMAL, Status.UNKNOWN)
    assert result.objective is None or result.bound <= result.objective
