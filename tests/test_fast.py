"""The fast implementation gives exactly the reference's output, element for element."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from impl import balance, rebalance_experts
from impl.balancer import BalanceResult, Variant
from properties.strategies import problems
from properties.workloads import TRACE_CLUSTER, Workload, default_workloads
from spec import BalancingProblem

FIELDS = ("phy2log", "log2phy", "logcnt", "counts_refined", "replicas_swapped")


def assert_identical(fast: BalanceResult, reference: BalanceResult) -> None:
    for field in FIELDS:
        a, b = getattr(fast, field), getattr(reference, field)
        assert a.dtype == b.dtype, field
        assert np.array_equal(a, b), f"{field} differs:\nfast={a}\nreference={b}"


VARIANTS: tuple[Variant, ...] = ("refined", "baseline")


def assert_both_variants_identical(problem: BalancingProblem) -> None:
    for variant in VARIANTS:
        assert_identical(
            balance(problem, variant=variant, fast=True), balance(problem, variant=variant)
        )


@given(problems(), st.sampled_from(VARIANTS), st.booleans(), st.booleans())
@example(BalancingProblem([[0.0, 0.0, 0.0]], 8, 1, 1, 4), "refined", True, True)
@example(BalancingProblem([[5.0, 5.0, 5.0, 5.0]], 8, 2, 2, 4), "refined", True, True)
@example(BalancingProblem([[1e6, 1.0]], 4, 1, 1, 2), "refined", True, True)
def test_fast_equals_reference(
    problem: BalancingProblem, variant: Variant, refine_a: bool, refine_b: bool
) -> None:
    reference = balance(problem, variant=variant, refine_a=refine_a, refine_b=refine_b)
    fast = balance(problem, variant=variant, refine_a=refine_a, refine_b=refine_b, fast=True)
    assert_identical(fast, reference)


WORKLOADS, _ = default_workloads()


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_fast_equals_reference_on_the_traces(workload: Workload) -> None:
    problem = BalancingProblem(workload.loads, *TRACE_CLUSTER)
    assert_both_variants_identical(problem)


def test_fast_flag_on_the_public_entry_point() -> None:
    weight = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86]] * 3)
    for variant in VARIANTS:
        slow = rebalance_experts(weight, 16, 4, 2, 8, variant=variant)
        quick = rebalance_experts(weight, 16, 4, 2, 8, variant=variant, fast=True)
        for a, b in zip(slow, quick, strict=True):
            assert a.dtype == b.dtype == torch.int64
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"num_replicas \(8\) must be at least"):
        rebalance_experts(weight, 8, 4, 2, 8, fast=True)
    with pytest.raises(TypeError, match="fast must be a bool"):
        rebalance_experts(weight, 16, 4, 2, 8, fast=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_fast_result_does_not_depend_on_threads(threads: int) -> None:
    from properties.workloads import generated_loads

    problem = BalancingProblem(
        generated_loads(seed=3, num_layers=170, num_experts=64), 96, 8, 4, 16
    )
    reference = balance(problem)
    assert_identical(balance(problem, fast=True, threads=threads), reference)


def test_rows_longer_than_96_match_the_reference() -> None:
    """Rows of more than 96 replicas (merge sort) and a water-fill top-up over more than
    96 equal experts (every threshold gives them all 1 or all 2 replicas)."""
    from properties.workloads import generated_loads

    skewed = generated_loads(seed=5, num_layers=2, num_experts=128)
    equal = np.full((1, 128), 7.0)
    for loads in (skewed, equal):
        problem = BalancingProblem(np.vstack([loads, loads[:1] * 0.5]), 160, 1, 1, 16)
        assert_both_variants_identical(problem)


VALUES = st.one_of(
    st.integers(0, 5).map(float),
    st.floats(0.0, 1e6),
    st.sampled_from([0.0, 5e-324, 2.2e-308, 1.0, 1e300, 1.7976931348623157e308]),
)


@given(st.lists(VALUES, max_size=130), st.integers(0, 3))
@example([3.0, 1.0, 3.0, 2.0, 1.0] * 4, 0)
def test_sort_descending_is_the_stable_order(values: list[float], spare: int) -> None:
    from impl.fast import sort_descending

    n = len(values)
    order = np.full(n + spare, -7, dtype=np.int64)
    sort_descending(np.array(values, dtype=np.float64), order, np.empty(2 * n + 1, np.int64))
    assert order[:n].tolist() == sorted(range(n), key=lambda i: (-values[i], i))
    assert (order[n:] == -7).all()


@given(
    st.lists(st.integers(0, 10**6).map(float), min_size=1, max_size=40).filter(
        lambda row: max(row) >= 1
    ),
    st.integers(0, 60),
)
def test_feasible_from_is_the_smallest_feasible_threshold(row: list[float], extra: int) -> None:
    """On token counts the start point is found, and it is exactly the smallest float
    threshold the bisection's test accepts."""
    import math

    from impl.fast import feasible_from

    n, slots = len(row), len(row) + extra

    def needed(threshold: float) -> int:
        return sum(max(1, math.ceil(w / threshold)) for w in row)

    found = feasible_from(np.array(row), slots, np.empty(2 * n, np.int64), np.empty(n, np.float64))
    assert found > 0
    assert needed(found) <= slots
    below = math.nextafter(found, 0.0)
    assert below == 0.0 or needed(below) > slots


@given(st.lists(st.integers(0, 4).map(float), min_size=1, max_size=40), st.integers(0, 5))
def test_index_of_a_maximum(values: list[float], spare: int) -> None:
    from impl.fast import index_of_a_maximum

    padded = np.array(values + [9.0] * spare)
    assert values[index_of_a_maximum(padded, len(values))] == max(values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_and_normalised_loads_match_the_reference(seed: int) -> None:
    """Trace-sized generated loads, as token counts and normalised to fractions of each
    layer's total (largest loads below 1: the bisection's range is then [0, 1])."""
    from properties.workloads import generated_loads

    loads = generated_loads(seed=seed, num_layers=16, num_experts=256)
    for scaled in (loads, loads / loads.sum(axis=1, keepdims=True)):
        problem = BalancingProblem(scaled, *TRACE_CLUSTER)
        assert_both_variants_identical(problem)
