"""The reference refinements keep their contracts; the contract checks catch breaches."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from impl.steps import Packing, pack_diverse, refine_counts, refine_swap, water_fill
from spec import RefinementRule, check_count_refinement, check_swap_refinement
from spec.violations import Code

loads_lists = st.lists(
    st.one_of(st.integers(0, 10**6).map(float), st.floats(0, 1e6, allow_nan=False)),
    min_size=1,
    max_size=12,
)


@st.composite
def loads_and_counts(draw: st.DrawFn) -> tuple[list[float], list[int]]:
    """Loads and any valid counts (c >= 1), not only water-filled ones."""
    loads = draw(loads_lists)
    counts = [draw(st.integers(1, 6)) for _ in loads]
    return loads, counts


@given(loads_and_counts())
def test_refinement_a_keeps_its_contract_on_any_counts(case: tuple[list[float], list[int]]) -> None:
    loads, counts = case
    assert check_count_refinement(loads, counts, refine_counts(loads, counts)) == []


@given(loads_lists, st.integers(0, 20))
def test_refinement_a_keeps_its_contract_after_water_filling(
    loads: list[float], extra: int
) -> None:
    counts = water_fill(loads, len(loads) + extra)
    assert check_count_refinement(loads, counts, refine_counts(loads, counts)) == []


def test_count_contract_catches_each_breach() -> None:
    loads = [10.0, 1.0, 1.0]
    before = [1, 2, 2]

    def rules(after: list[int]) -> set[Code]:
        return {v.code for v in check_count_refinement(loads, before, after)}

    assert rules([1, 2]) == {RefinementRule.LENGTH}
    assert rules([1, 2, 3]) == {RefinementRule.COUNT_SUM}
    assert rules([3, 0, 2]) == {RefinementRule.COUNT_BELOW_ONE}
    assert rules([3, 1, 1]) == {RefinementRule.ONE_MOVE}
    assert rules([2, 1, 2]) == set()
    assert check_count_refinement([1.0, 10.0], [1, 2], [2, 1]) != []  # peak 5 -> 10
    assert {v.code for v in check_count_refinement([1.0, 10.0], [1, 2], [2, 1])} == {
        RefinementRule.PEAK_RAISED
    }
    assert {v.code for v in check_count_refinement([4.0, 4.0], [2, 1], [1, 2])} == {
        RefinementRule.NO_GAIN
    }


@st.composite
def node_rows(draw: st.DrawFn) -> tuple[list[float], list[int], int]:
    """Replica weights and labels of one node, and its GPU count."""
    num_gpus = draw(st.integers(1, 4))
    cap = draw(st.integers(1, 4))
    count = num_gpus * cap
    weights = draw(
        st.lists(
            st.one_of(st.integers(0, 1000).map(float), st.floats(0, 1e6, allow_nan=False)),
            min_size=count,
            max_size=count,
        )
    )
    labels = draw(st.lists(st.integers(0, count - 1), min_size=count, max_size=count))
    return weights, labels, num_gpus


@given(node_rows())
def test_refinement_b_keeps_its_contract_after_diverse_packing(
    case: tuple[list[float], list[int], int],
) -> None:
    weights, labels, num_gpus = case
    before = pack_diverse(weights, labels, num_gpus)
    after = refine_swap(weights, before, num_gpus)
    violations = check_swap_refinement(
        weights, before.pack, before.rank, after.pack, after.rank, num_gpus
    )
    assert violations == []


@given(node_rows(), st.randoms(use_true_random=False))
def test_refinement_b_keeps_its_contract_on_any_assignment(
    case: tuple[list[float], list[int], int], rng: random.Random
) -> None:
    weights, _, num_gpus = case
    cap = len(weights) // num_gpus
    slots = [(g, r) for g in range(num_gpus) for r in range(cap)]
    rng.shuffle(slots)
    before = Packing(pack=[g for g, _ in slots], rank=[r for _, r in slots])
    after = refine_swap(weights, before, num_gpus)
    assert (
        check_swap_refinement(weights, before.pack, before.rank, after.pack, after.rank, num_gpus)
        == []
    )


def test_swap_contract_catches_each_breach() -> None:
    weights = [6.0, 5.0, 1.0, 0.5, 3.0, 2.0]
    pack, rank = [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]

    def rules(new_pack: list[int], new_rank: list[int]) -> set[Code]:
        return {v.code for v in check_swap_refinement(weights, pack, rank, new_pack, new_rank, 3)}

    assert rules([1, 0, 0, 1, 2, 2], [0, 1, 0, 1, 0, 1]) == set()
    assert rules([0, 0, 0, 1, 2, 2], [0, 1, 2, 0, 0, 1]) == {RefinementRule.ASSIGNMENT}
    assert rules([1, 0, 0, 2, 1, 2], [0, 1, 0, 0, 1, 1]) == {RefinementRule.ONE_SWAP}
    assert rules([1, 0, 0, 1, 2, 2], [0, 1, 0, 1, 1, 0]) == {RefinementRule.RANKS_KEPT}
    # Swapping 2 and 4 (g1 <-> g2) leaves the peak on g0 unchanged: no gain.
    assert rules([0, 0, 2, 1, 1, 2], [0, 1, 0, 1, 0, 1]) == {RefinementRule.NO_GAIN}
    # Swapping 1 (5) and 4 (3) between g0 and g2: g0 11 -> 9, g2 5 -> 7: a real gain.
    assert rules([0, 2, 1, 1, 0, 2], [0, 1, 0, 1, 1, 0]) == set()

    def swap_rules(weights: list[float]) -> set[Code]:
        # Replicas 0 and 2 exchange places between GPU 0 and GPU 1.
        found = check_swap_refinement(
            weights, [0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 0, 1], 2
        )
        return {v.code for v in found}

    assert swap_rules([1.0, 1.0, 9.0, 1.0]) == {RefinementRule.NO_GAIN}  # 2 | 10 -> 10 | 2
    assert swap_rules([5.0, 5.0, 1.0, 6.0]) == {RefinementRule.PEAK_RAISED}  # 10 | 7 -> 6 | 11
