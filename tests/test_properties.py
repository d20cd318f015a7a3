"""The property suite applied to the reference and the baseline, and the properties that
settle the questions of the specification (see docs/ANSWERS.md)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, target
from hypothesis import strategies as st

from impl import rebalance_experts, rebalance_experts_baseline, rebalance_experts_fast
from impl.steps import (
    Packing,
    layout_by_expert,
    pack_diverse,
    refine_counts,
    refine_swap,
    water_fill,
)
from oracle.bruteforce import best_joint, best_packing, best_replication
from oracle.replication import optimal_peak
from properties.strategies import (
    count_cases,
    integer_problems,
    load_values,
    problems,
    swap_cases,
    tiny_problems,
)
from properties.suite import (
    CountCase,
    SwapCase,
    bad_inputs,
    check_bad_input,
    check_contract,
    check_deterministic,
    check_input_forms,
    check_optimality,
    check_refinement_a,
    check_refinement_b,
    in_process,
)
from properties.vectors import check_vector, generate_tier
from spec import BalancingProblem, duplicate_labels_added

IMPLEMENTATIONS = {
    "reference": in_process(rebalance_experts),
    "baseline": in_process(rebalance_experts_baseline),
    "fast": in_process(rebalance_experts_fast),
}
NAMES = list(IMPLEMENTATIONS)


@pytest.mark.parametrize("name", NAMES)
@given(problem=problems())
def test_contract(name: str, problem: BalancingProblem) -> None:
    check_contract(IMPLEMENTATIONS[name], problem)


@pytest.mark.parametrize("name", NAMES)
@given(problem=problems())
def test_deterministic(name: str, problem: BalancingProblem) -> None:
    check_deterministic(IMPLEMENTATIONS[name], problem)


@pytest.mark.parametrize("name", NAMES)
@given(problem=integer_problems())
def test_integer_float_and_noncontiguous_inputs_agree(name: str, problem: BalancingProblem) -> None:
    check_input_forms(IMPLEMENTATIONS[name], problem)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_rejected(name: str) -> None:
    for case in bad_inputs():
        assert check_bad_input(IMPLEMENTATIONS[name], case).startswith("rejected")


# The worst gaps to the optimum that hunting with target() found (1,500 tiny problems
# each, scaled down here): one hot expert among idle ones. Water-filling gives the hot
# expert 5 of the 8 slots (the baseline 4 of 6), so two of its replicas share a GPU; the
# optimum gives it one replica per GPU and the spare slot to an idle expert.
WORST_SEED = BalancingProblem([[5.0, 0.0, 0.0, 0.0]], 8, 2, 1, 4)
WORST_BASELINE = BalancingProblem([[0.0, 6.0, 0.0]], 6, 9, 4, 3)


@pytest.mark.parametrize("name", ["reference", "baseline"])
@given(problem=tiny_problems())
@example(problem=WORST_SEED)
@example(problem=WORST_BASELINE)
def test_never_below_the_proven_optimum_and_hunt_the_worst_gap(
    name: str, problem: BalancingProblem
) -> None:
    gaps = check_optimality(IMPLEMENTATIONS[name], problem, None)
    target(max(g.relative for g in gaps), label="gap to the optimum")


@pytest.mark.parametrize(
    ("name", "problem", "gap"),
    [("reference", WORST_SEED, Fraction(3, 5)), ("baseline", WORST_BASELINE, Fraction(1, 2))],
)
def test_pinned_worst_gaps(name: str, problem: BalancingProblem, gap: Fraction) -> None:
    (found,) = check_optimality(IMPLEMENTATIONS[name], problem, None)
    assert found.proven
    assert Fraction(found.peak) / found.optimum - 1 == gap


# Question 1: refinement A.


@given(count_cases())
def test_refinement_a_keeps_its_contract(case: CountCase) -> None:
    check_refinement_a(in_process(refine_counts), case)


@given(count_cases())
@example(CountCase([10.0, 1.0], [1, 3]))
def test_refinement_a_can_change_counts_only_in_rows_of_two_experts(case: CountCase) -> None:
    """Proof in docs/ANSWERS.md: with three or more experts the hottest expert is never
    a receiver, and moving a replica away from it raises its load."""
    after = refine_counts(case.loads, case.counts)
    if after != case.counts:
        assert len(case.loads) == 2


ROWS = st.integers(1, 12).flatmap(lambda n: st.tuples(load_values(n), st.integers(0, 24)))


ROUNDING = Fraction(1, 2**50)  # a few units in the last place of a float64


def assert_optimal_up_to_rounding(loads: list[float], counts: list[int], slots: int) -> None:
    exact = [Fraction(w) for w in loads]
    best = optimal_peak(exact, slots)
    peak = max(w / c for w, c in zip(exact, counts, strict=True))
    assert best <= peak <= best * (1 + ROUNDING)


@given(ROWS)
@example(([4.0, 4.0], 1))
@example(([1e-300, 1e300, 1.0], 5))
@example(([0.1, 0.2, 3.3], 7))
@example(([1.0, 3.0 * 2.0**-30], 3))
@example(([666667.0, 666667.0, 999999.9999999999, 1000000.0], 9))
def test_water_filling_is_optimal_when_the_largest_load_is_at_least_one(
    case: tuple[list[float], int],
) -> None:
    """Question 2: with max load >= 1 (token counts, say) the water-filled counts reach
    the exact optimum of min max w/c, up to the rounding of ``w / c`` (see below)."""
    loads, extra = case
    assume(max(loads) >= 1 or max(loads) == 0)
    slots = len(loads) + extra
    assert_optimal_up_to_rounding(loads, water_fill(loads, slots), slots)


def test_water_filling_ties_replica_loads_that_round_alike() -> None:
    """Found by Hypothesis: 1e6 / 3 and 999999.9999999999 / 3 are the same float, so the
    top-up treats them as a tie and serves the lower index; the exact optimum serves the
    other expert. The peak is off by one rounding, a relative 1.2e-16."""
    loads, slots = [666667.0, 666667.0, 999999.9999999999, 1000000.0], 13
    assert loads[2] / 3 == loads[3] / 3
    counts = water_fill(loads, slots)
    assert counts == [3, 3, 4, 3]
    exact = [Fraction(w) for w in loads]
    assert optimal_peak(exact, slots) == exact[2] / 3
    assert max(w / c for w, c in zip(exact, counts, strict=True)) == exact[3] / 3


@given(ROWS, st.floats(1.0, 2.0**30))
@example(([0.0] * 9 + [1.0, 3.0], 3), 1.0)
@example(([5e-324], 0), 1.0)
def test_water_filling_is_optimal_above_the_tiny_load_limit(
    case: tuple[list[float], int], stretch: float
) -> None:
    """Below 1 as well, as long as the largest load is at least 2 * S**2 * 2**-40: the
    row is rescaled so that its largest load lies between that limit and 1."""
    loads, extra = case
    slots = len(loads) + extra
    assume(max(loads) > 0)
    limit = 2 * slots**2 * 2.0**-40
    target = min(1.0, limit * stretch)
    top = max(loads)
    scaled = [w / top * target for w in loads]  # divide first: no overflow for subnormal tops
    assume(max(scaled) >= limit)
    assert_optimal_up_to_rounding(scaled, water_fill(scaled, slots), slots)


def test_water_filling_can_miss_the_optimum_when_every_load_is_tiny() -> None:
    """Found by Hypothesis: the bisection runs on [0, max(max_w, 1)] for 40 rounds, so
    it cannot resolve a threshold below 2**-40; the top-up then gives one replica to each
    of the two experts, the idle one included: peak w/2 where w/3 is possible."""
    loads, slots = [0.0, 6.388063971818607e-150], 4
    counts = water_fill(loads, slots)
    assert counts == [2, 2]
    exact = [Fraction(w) for w in loads]
    assert optimal_peak(exact, slots) == exact[1] / 3
    assert max(w / c for w, c in zip(exact, counts, strict=True)) == exact[1] / 2


@given(ROWS)
@example(([0.0, 6.388063971818607e-150], 2))
@example(([2.0**-30, 3.0 * 2.0**-30], 3))
def test_refinement_a_never_fires_after_water_filling(case: tuple[list[float], int]) -> None:
    loads, extra = case
    counts = water_fill(loads, len(loads) + extra)
    assert refine_counts(loads, counts) == counts


@given(st.integers(1, 5).flatmap(lambda n: st.tuples(load_values(n), st.integers(0, 4))))
def test_the_exact_replication_oracle_agrees_with_brute_force(
    case: tuple[list[float], int],
) -> None:
    loads, extra = case
    exact = [Fraction(w) for w in loads]
    assert optimal_peak(exact, len(loads) + extra) == best_replication(loads, len(loads) + extra)


# Question 3: refinement B.


@given(swap_cases())
def test_refinement_b_keeps_its_contract(case: SwapCase) -> None:
    from impl import refine_swap_lists

    check_refinement_b(in_process(refine_swap_lists), case)


def test_refinement_b_can_put_two_replicas_of_one_expert_on_a_gpu() -> None:
    loads, slots, gpus = [5.0, 3.0, 15.0], 9, 3
    counts = water_fill(loads, slots)
    labels = layout_by_expert(counts)
    weights = [loads[i] / counts[i] for i in labels]
    greedy = pack_diverse(weights, labels, gpus)
    refined = refine_swap(weights, greedy, gpus)
    assert duplicate_labels_added(labels, greedy.pack, greedy.pack, gpus) == 0
    assert duplicate_labels_added(labels, greedy.pack, refined.pack, gpus) > 0

    # ... and it does lower the peak when it does so.
    def peak(packing: Packing) -> float:
        return max(
            sum(w for w, g in zip(weights, packing.pack, strict=True) if g == gpu)
            for gpu in range(gpus)
        )

    assert peak(refined) < peak(greedy)


# The stages against the exact optimum on tiny rows (question 4).


@given(
    st.integers(1, 4).flatmap(
        lambda n: st.tuples(load_values(n, "small-integers"), st.integers(1, 3))
    )
)
def test_each_stage_is_never_below_its_exact_optimum(case: tuple[list[float], int]) -> None:
    loads, gpus = case
    slots = gpus * max(-(-len(loads) // gpus), 2)
    counts = water_fill(loads, slots)
    labels = layout_by_expert(counts)
    weights = [loads[i] / counts[i] for i in labels]
    greedy = pack_diverse(weights, labels, gpus)
    refined = refine_swap(weights, greedy, gpus)
    exact_items = [Fraction(loads[i]) / counts[i] for i in labels]

    def peak(packing: Packing) -> Fraction:
        return max(
            sum(
                (w for w, g in zip(exact_items, packing.pack, strict=True) if g == gpu), Fraction(0)
            )
            for gpu in range(gpus)
        )

    best_for_counts = best_packing(exact_items, gpus)
    joint = best_joint(loads, slots, gpus)
    assert best_for_counts is not None
    assert joint is not None
    assert peak(refined) <= peak(greedy)
    assert peak(refined) >= best_for_counts >= joint


# Test vectors.

VECTORS = Path(__file__).parents[1] / "vectors" / "small.json"


def test_committed_vectors_still_hold() -> None:
    document = json.loads(VECTORS.read_text())
    assert document["manifest"]["format"] == 1
    assert document["manifest"]["count"] == len(document["vectors"])
    failures = [(i, why) for i, v in enumerate(document["vectors"]) if (why := check_vector(v))]
    assert failures == []


def test_committed_vectors_agree_with_brute_force() -> None:
    for vector in json.loads(VECTORS.read_text())["vectors"]:
        want = vector["expected"]
        truth: Fraction | None
        if vector["problem"] == "replication":
            truth = best_replication(vector["weights"], vector["num_slots"])
        elif vector["problem"] == "packing":
            truth = best_packing(vector["weights"], vector["num_packs"], vector.get("labels"))
        elif vector["problem"] == "joint":
            truth = best_joint(
                vector["weights"], vector["num_slots"], vector["num_packs"], vector["distinct"]
            )
        else:
            continue
        if truth is None:
            assert want["status"] == "INFEASIBLE"
        else:
            assert want["status"] == "OPTIMAL"
            assert Fraction(want["objective"]) == truth


def test_vector_generation_repeats() -> None:
    first, second = generate_tier("small", 6), generate_tier("small", 6)
    assert first["vectors"] == second["vectors"]
    assert np.all([v["expected"]["status"] in ("OPTIMAL", "INFEASIBLE") for v in first["vectors"]])
