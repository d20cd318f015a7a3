"""The joint balancer (``variant="joint"``): its guarantees, as properties."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from impl import balance, rebalance_experts
from impl.joint import (
    ENUMERATION_LIMIT,
    count_vector_total,
    count_vectors,
    pack_counts,
)
from oracle.bruteforce import best_packing
from oracle.cpsat import SolverSettings
from oracle.pipeline import optimal_layer
from oracle.result import Status
from properties.strategies import problems, tiny_problems
from properties.workloads import Workload, default_workloads
from spec import BalancingProblem, check_placement
from spec.objectives import peak_gpu_load
from spec.problem import Policy

FLASHLB_LOADS = [600, 560, 120, 120, 20, 10, 10, 10]
FIELDS = ("phy2log", "log2phy", "logcnt")


def peaks(problem: BalancingProblem, variant: str, fast: bool = False) -> np.ndarray:
    result = balance(problem, variant=variant, fast=fast)
    return peak_gpu_load(problem.loads, result.phy2log, result.logcnt, problem.num_gpus)


@given(problems())
@example(BalancingProblem([[0.0, 0.0, 0.0]], 8, 1, 1, 4))
@example(BalancingProblem([FLASHLB_LOADS], 16, 1, 1, 8))
@example(BalancingProblem([[1e300, 1e300, 1.0, 0.0]], 12, 2, 2, 4))
def test_joint_is_valid_never_above_reference_or_baseline_and_fast_is_identical(
    problem: BalancingProblem,
) -> None:
    joint = balance(problem, variant="joint")
    assert check_placement(problem, joint.phy2log, joint.log2phy, joint.logcnt) == []
    peak = peak_gpu_load(problem.loads, joint.phy2log, joint.logcnt, problem.num_gpus)
    assert np.all(peak <= peaks(problem, "refined"))
    assert np.all(peak <= peaks(problem, "baseline"))
    fast = balance(problem, variant="joint", fast=True)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(joint, field)), field
    again = balance(problem, variant="joint")
    assert np.array_equal(again.phy2log, joint.phy2log)  # deterministic


def single_node_cases() -> st.SearchStrategy[BalancingProblem]:
    """Tiny layers where the claim applies: one packing node, at most 2 slots per GPU."""
    return tiny_problems().filter(
        lambda p: (p.policy is Policy.GLOBAL or p.num_nodes == 1) and p.slots_per_gpu <= 2
    )


@settings(max_examples=60)
@given(single_node_cases())
@example(BalancingProblem([FLASHLB_LOADS], 16, 1, 1, 8))
@example(BalancingProblem([[7.0, 1.0, 1.0, 1.0, 1.0]], 8, 1, 1, 4))
def test_joint_reaches_the_proven_optimum_on_one_node_with_two_slots_per_gpu(
    problem: BalancingProblem,
) -> None:
    """The claim of ``impl.joint``: a node with at most ``ENUMERATION_LIMIT`` count vectors
    and at most 2 slots per GPU is placed optimally; with one packing node that is the
    layer's optimum (up to float64 rounding of the sums)."""
    assert count_vector_total(problem.num_experts, problem.num_replicas, ENUMERATION_LIMIT) <= (
        ENUMERATION_LIMIT
    )
    answer = optimal_layer(problem, 0, SolverSettings(time_limit_s=30.0))
    assert answer.result.status is Status.OPTIMAL, answer.result.note
    optimum = answer.result.objective
    assert optimum is not None
    peak = float(peaks(problem, "joint")[0])
    assert abs(Fraction(peak) - optimum) <= Fraction(1, 10**9) * optimum


def test_flashlb_example_reaches_590_over_3() -> None:
    """FlashLB's example: the reference peaks at 232, the proven optimum is 590/3."""
    weight = torch.tensor([FLASHLB_LOADS])
    problem = BalancingProblem(weight, 16, 1, 1, 8)
    answer = optimal_layer(problem, 0, SolverSettings(time_limit_s=30.0))
    assert answer.result.status is Status.OPTIMAL
    assert answer.result.objective == Fraction(590, 3)
    assert float(peaks(problem, "refined")[0]) == 232.0
    for fast in (False, True):
        phy2log, _, logcnt = rebalance_experts(weight, 16, 1, 1, 8, variant="joint", fast=fast)
        peak = peak_gpu_load(problem.loads, phy2log.numpy(), logcnt.numpy(), 8)[0]
        assert peak == pytest.approx(590 / 3, rel=1e-12)


@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=6),
    st.integers(1, 3),
    st.integers(1, 2),
)
def test_packing_with_at_most_two_slots_per_gpu_is_optimal(
    loads: list[int], gpus: int, cap: int
) -> None:
    """Heaviest with lightest is the optimal packing of fixed replicas onto GPUs of 2
    slots (and trivially of 1): checked against brute force."""
    slots = gpus * cap
    if slots < len(loads):
        return
    counts = next(iter(count_vectors(len(loads), slots)))
    placed = pack_counts([float(x) for x in loads], counts, gpus)
    items = [Fraction(loads[e], counts[e]) for e, c in enumerate(counts) for _ in range(c)]
    best = best_packing(items, gpus)
    assert best is not None
    assert abs(Fraction(placed.peak) - best) <= Fraction(1, 10**9) * max(best, Fraction(1))


def test_count_vectors_are_all_compositions_in_order() -> None:
    vectors = list(count_vectors(3, 6))
    assert len(vectors) == count_vector_total(3, 6, 10**6) == 10
    assert vectors == sorted(vectors)
    assert all(sum(v) == 6 and min(v) >= 1 for v in vectors)
    assert count_vector_total(32, 36, ENUMERATION_LIMIT) == ENUMERATION_LIMIT + 1


def test_refinement_flags_are_refused_for_the_joint_variant() -> None:
    weight = torch.tensor([FLASHLB_LOADS])
    with pytest.raises(ValueError, match="the joint variant has none"):
        rebalance_experts(weight, 16, 1, 1, 8, variant="joint", refine_a=True)


WORKLOADS, _ = default_workloads()


@pytest.mark.parametrize("cluster", [(288, 8, 8, 144), (288, 8, 8, 96), (288, 8, 4, 32)])
def test_joint_on_a_real_trace(cluster: tuple[int, int, int, int]) -> None:
    """At real sizes: valid, identical fast and readable answers, never above the
    reference, and strictly below it on some layer."""
    workload: Workload = WORKLOADS[0]
    problem = BalancingProblem(workload.loads[:6], *cluster)
    joint = balance(problem, variant="joint")
    assert check_placement(problem, joint.phy2log, joint.log2phy, joint.logcnt) == []
    fast = balance(problem, variant="joint", fast=True)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(joint, field)), field
    peak = peak_gpu_load(problem.loads, joint.phy2log, joint.logcnt, problem.num_gpus)
    reference = peaks(problem, "refined", fast=True)
    assert np.all(peak <= reference)
    assert np.any(peak < reference)
