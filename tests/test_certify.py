"""Slot-aware certificates (``oracle.certify``): never above a proven optimum."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from impl import balance
from oracle.bruteforce import best_joint, best_layer, best_packing
from oracle.certify import (
    certify_layer_slots,
    node_slot_bound,
    packing_bound,
    packing_bounds,
)
from oracle.cpsat import SolverSettings
from oracle.exact import as_fractions
from oracle.pipeline import layer_lower_bound
from oracle.result import Status
from properties.strategies import tiny_problems
from properties.workloads import default_workloads
from spec import BalancingProblem
from spec.objectives import peak_gpu_load

loads = st.integers(0, 10**6)


@st.composite
def packing_cases(draw: st.DrawFn) -> tuple[list[Fraction], int]:
    gpus = draw(st.integers(1, 3))
    cap = draw(st.integers(1, 4 if gpus <= 2 else 3))
    values = draw(st.lists(loads, min_size=gpus * cap, max_size=gpus * cap))
    return [Fraction(v, draw(st.integers(1, 3))) for v in values], gpus


@given(packing_cases())
@example(([Fraction(v) for v in [10, 9, 8, 1, 1, 1, 1, 1, 1]], 3))
def test_packing_bound_is_never_above_the_best_packing(case: tuple[list[Fraction], int]) -> None:
    items, gpus = case
    best = best_packing(items, gpus)
    assert best is not None
    bound = packing_bound(items, gpus)
    assert bound <= best
    if len(items) // gpus <= 2:
        assert bound == best  # exact with at most two slots per GPU
    row = np.asarray([sorted((float(x) for x in items), reverse=True)])
    estimate = float(packing_bounds(row, gpus)[0])
    assert abs(estimate - float(bound)) <= 1e-12 * max(1.0, float(bound))


@st.composite
def node_cases(draw: st.DrawFn) -> tuple[list[int], int, int]:
    """A node of at most 8 slots (2-4 GPUs of 1-3 slots, or one GPU) and 1-5 experts."""
    gpus = draw(st.integers(1, 4))
    cap = draw(st.integers(1, min(3, 8 // gpus)))
    experts = draw(st.integers(1, min(5, gpus * cap)))
    return draw(st.lists(loads, min_size=experts, max_size=experts)), gpus * cap, gpus


@settings(max_examples=80)
@given(node_cases(), st.sampled_from([None, 0, 1, 2]))
@example(([600, 560, 120, 20], 8, 4), None)
@example(([7, 1, 1, 1, 1], 6, 2), 1)
def test_node_bound_is_never_above_the_brute_force_optimum(
    case: tuple[list[int], int, int], slack: int | None
) -> None:
    """With or without a known placement's peak (the optimum, or above it), the bound
    never passes the optimum; with at most 2 slots per GPU it is the optimum and comes
    with a placement that reaches it."""
    weights, slots, gpus = case
    optimum = best_joint(weights, slots, gpus)
    assert optimum is not None
    upper = None if slack is None else optimum + slack
    found = node_slot_bound(weights, slots, gpus, upper)
    assert found.bound <= optimum
    if upper is not None:
        assert found.bound <= upper
    if slots // gpus <= 2:
        assert found.bound == optimum
    if found.peak is not None:
        assert found.counts is not None
        assert found.pack_of is not None
        exact = as_fractions(weights)
        gpu_load = [Fraction(0)] * gpus
        labels = [e for e, c in enumerate(found.counts) for _ in range(c)]
        for label, gpu in zip(labels, found.pack_of, strict=True):
            gpu_load[gpu] += exact[label] / found.counts[label]
        assert max(gpu_load) == found.peak >= optimum


@settings(max_examples=40)
@given(tiny_problems(), st.booleans())
def test_layer_interval_contains_the_brute_force_optimum(
    problem: BalancingProblem, with_hint: bool
) -> None:
    weights = as_fractions(problem.loads[0].tolist())
    optimum = best_layer(
        weights, problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus
    )
    hint = balance(problem, variant="joint").phy2log[0].tolist() if with_hint else None
    answer = certify_layer_slots(problem, 0, hint, SolverSettings(time_limit_s=30.0))
    result = answer.result
    assert result.bound <= optimum
    assert result.bound >= layer_lower_bound(problem, 0) or result.objective == result.bound
    if result.objective is not None:
        assert result.objective >= optimum
        assert answer.phy2log is not None
        assert result.status is not Status.OPTIMAL or result.objective == optimum


def test_real_layers_are_certified_tighter_than_the_analytical_bound() -> None:
    """A trace at 2 slots per GPU: every layer's interval is closed (OPTIMAL) or under
    0.1 %, and the new bound is never below the analytical one."""
    workloads, _ = default_workloads()
    problem = BalancingProblem(workloads[0].loads[:4], 288, 8, 8, 144)
    joint = balance(problem, variant="joint", fast=True)
    peaks = peak_gpu_load(problem.loads, joint.phy2log, joint.logcnt, problem.num_gpus)
    for layer in range(problem.num_layers):
        answer = certify_layer_slots(problem, layer, joint.phy2log[layer].tolist())
        result = answer.result
        assert result.objective is not None
        assert result.objective <= Fraction(float(peaks[layer]))
        assert result.bound >= layer_lower_bound(problem, layer)
        assert result.objective - result.bound <= result.bound / 1000
