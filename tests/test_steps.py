"""Each step of the balancer on small cases checked by hand against docs/specification.md."""

from __future__ import annotations

import pytest

from impl.steps import (
    Packing,
    bisected_counts,
    counts_at_threshold,
    group_loads,
    layout_by_expert,
    pack_balanced,
    pack_diverse,
    refine_counts,
    refine_swap,
    refine_swap_lists,
    renumber_node_local,
    replica_ranks,
    replicate_greedy,
    slots_of,
    sum_left_to_right,
    water_fill,
)


def test_pack_balanced_puts_each_item_on_the_lightest_pack_with_room() -> None:
    # Visit order 0 (5), 2 (4), 3 (2), 1 (1): 0 -> p0, 2 -> p1, 3 -> p1 (4 < 5), 1 -> p0.
    assert pack_balanced([5, 1, 4, 2], 2) == Packing(pack=[0, 0, 1, 1], rank=[0, 1, 0, 1])


def test_pack_balanced_breaks_ties_by_lower_index() -> None:
    assert pack_balanced([1, 1, 1, 1], 2) == Packing(pack=[0, 1, 0, 1], rank=[0, 0, 1, 1])


def test_pack_balanced_with_one_item_per_pack_is_the_identity() -> None:
    assert pack_balanced([1, 9, 5], 3) == Packing(pack=[0, 1, 2], rank=[0, 0, 0])


def test_sums_run_left_to_right() -> None:
    # 1e16 + 1 rounds back to 1e16; a compensated or exact sum would give 1.
    assert sum_left_to_right([1e16, 1.0, -1e16]) == 0.0
    assert sum_left_to_right([1.0, 1e16, -1e16]) == 0.0
    assert sum_left_to_right([1e16, -1e16, 1.0]) == 1.0


def test_group_loads_sum_consecutive_experts_in_id_order() -> None:
    assert group_loads([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3) == [3.0, 7.0, 11.0]
    assert group_loads([1e16, 1.0, 1.0, -0.0], 2) == [1e16, 1.0]


def test_renumber_node_local_orders_by_group_arrival_then_position() -> None:
    # Groups 0..3 of 2 experts; node 0 got group 2 first, then group 1; node 1 got 3, 0.
    packing = Packing(pack=[1, 0, 0, 1], rank=[1, 1, 0, 0])
    assert renumber_node_local(packing, 2, 2) == [[4, 5, 2, 3], [6, 7, 0, 1]]


def test_counts_at_threshold_round_up_and_keep_one_replica() -> None:
    assert counts_at_threshold([6.0, 3.0, 0.0, 2.5], 2.0) == [3, 2, 1, 2]


def test_bisected_counts_stop_at_the_upper_end_of_the_threshold() -> None:
    # Any T in [2, 3) needs 3 + 2 + 1 = 6 slots; below 2 it needs 7 or more.
    assert bisected_counts([6.0, 3.0, 1.0], 6) == [3, 2, 1]
    # Every T >= 4 needs 3 slots and every T < 4 needs 6: the bisection leaves 2 spare.
    assert bisected_counts([4.0, 4.0, 4.0], 5) == [1, 1, 1]


def test_water_fill_one_slot_per_expert() -> None:
    assert water_fill([3.0, 0.0, 7.0], 3) == [1, 1, 1]


def test_water_fill_all_zero_spreads_evenly_first_experts_take_the_rest() -> None:
    assert water_fill([0.0, 0.0, 0.0], 8) == [3, 3, 2]


def test_water_fill_reaches_the_threshold_exactly() -> None:
    # T = 2 gives ceil(6/2) + ceil(3/2) + ceil(1/2) = 3 + 2 + 1 = 6 slots.
    assert water_fill([6.0, 3.0, 1.0], 6) == [3, 2, 1]


def test_water_fill_tops_up_by_replica_load_ties_lower_index() -> None:
    # Any T < 4 needs 4 slots, so c = [1, 1] and the one left goes to expert 0 (tie).
    assert water_fill([4.0, 4.0], 3) == [2, 1]


def test_water_fill_tops_up_several_experts_in_one_round() -> None:
    # c = [1, 1, 1] with 2 slots left: the two hottest (ties: lower index) get one each.
    assert water_fill([4.0, 4.0, 4.0], 5) == [2, 2, 1]


def test_water_fill_loads_below_one_use_the_unit_interval() -> None:
    assert water_fill([0.5, 0.25], 3) == [2, 1]


def test_refine_counts_makes_one_move_only() -> None:
    # a = [10, 1/3]: donor 1 (the only c > 1), receivers 1 then 0; moving 1 -> 0 gives
    # peak 5 < 10. One move only, although [3, 1] would be better still.
    assert refine_counts([10.0, 1.0], [1, 3]) == [2, 2]


def test_refine_counts_without_a_donor_changes_nothing() -> None:
    assert refine_counts([10.0, 1.0, 5.0], [1, 1, 1]) == [1, 1, 1]


def test_refine_counts_keeps_optimal_counts() -> None:
    assert refine_counts([6.0, 3.0, 1.0], [3, 2, 1]) == [3, 2, 1]


def test_refine_counts_only_feeds_the_coldest_experts() -> None:
    # a = [1.5, 1, 6]: receivers are the two coldest (1, then 0), never the hot expert 2,
    # so no move can lower the peak of 6 although [1, 1, 2] would give 3.
    assert refine_counts([3.0, 1.0, 6.0], [2, 1, 1]) == [2, 1, 1]


def test_refine_counts_tries_every_pair_and_keeps_the_best() -> None:
    # Two experts: both are receivers. Donor 1 (c > 1) to receiver 0 gives max(5, 1) = 5.
    assert refine_counts([10.0, 3.0], [1, 3]) == [2, 2]
    # Donor 0 has the higher replica load but moving from it raises the peak.
    assert refine_counts([8.0, 9.0], [2, 2]) == [2, 2]


def test_refine_counts_single_expert_is_left_alone() -> None:
    assert refine_counts([5.0], [4]) == [4]


def test_replicate_greedy_creation_order() -> None:
    counts, layout = replicate_greedy([6.0, 3.0, 1.0], 6)
    # Extras: 0 (6 -> 3), then tie 3 vs 3 -> 0 (lower index) (-> 2), then 1 (3 -> 1.5).
    assert counts == [3, 2, 1]
    assert layout == [0, 1, 2, 0, 0, 1]


def test_layout_by_expert() -> None:
    assert layout_by_expert([2, 1, 3]) == [0, 0, 1, 2, 2, 2]


def test_replica_ranks_count_earlier_replicas_of_the_same_expert() -> None:
    assert replica_ranks([0, 0, 1, 2, 2, 2]) == [0, 1, 0, 0, 1, 2]
    assert replica_ranks([0, 1, 2, 0, 0, 1]) == [0, 0, 0, 1, 2, 1]


def test_slots_of_is_node_then_gpu_then_rank() -> None:
    packing = Packing(pack=[1, 0, 1, 0], rank=[0, 1, 1, 0])
    # Node 2 of 4 slots (S = 4), 2 GPUs of cap 2: slot = 2 * 4 + gpu * 2 + rank.
    assert slots_of(packing, 2, 4, 2) == [10, 9, 11, 8]


def test_pack_diverse_prefers_a_gpu_without_the_label_over_a_lighter_one() -> None:
    # 0 -> g0 (5); 1 -> g1 (4); 2 has label 1, already on g1, so g0 although heavier.
    assert pack_diverse([5, 4, 3, 1], [0, 1, 1, 2], 2) == Packing(
        pack=[0, 1, 0, 1], rank=[0, 0, 1, 1]
    )


def test_pack_diverse_with_one_slot_per_gpu_is_the_identity() -> None:
    assert pack_diverse([1, 2, 3], [0, 0, 1], 3) == Packing(pack=[0, 1, 2], rank=[0, 0, 0])


def test_pack_diverse_breaks_load_ties_by_count_then_index() -> None:
    # 0 -> g0; 1 (weight 0) -> g1 (equal load 0, fewer replicas); 2 -> g1? loads g0 = 2, g1 = 0.
    assert pack_diverse([2, 0, 0, 0], [0, 1, 2, 3], 2) == Packing(
        pack=[0, 1, 1, 0], rank=[0, 0, 1, 1]
    )


def test_refine_swap_takes_the_lowest_peak_first_found_on_ties() -> None:
    # g0 = {0, 1} = 11, g1 = {2, 3} = 1.5. Pairs (a, b): (0, 3) -> 7, (0, 2) -> 6.5,
    # (1, 3) -> 6.5, (1, 2) -> 7. The first 6.5 is kept: replicas 0 and 2 swap.
    before = Packing(pack=[0, 0, 1, 1], rank=[0, 1, 0, 1])
    after = refine_swap([6.0, 5.0, 1.0, 0.5], before, 2)
    assert after == Packing(pack=[1, 0, 0, 1], rank=[0, 1, 0, 1])


def test_refine_swap_leaves_other_gpus_ranks_and_respects_the_third_gpu() -> None:
    weights = [6.0, 5.0, 1.0, 0.5, 3.0, 2.0]
    # g0 = {0, 1} = 11, g1 = {2, 3} = 1.5, g2 = {4, 5} = 5, with g2's ranks reversed.
    before = Packing(pack=[0, 0, 1, 1, 2, 2], rank=[1, 0, 0, 1, 1, 0])
    after = refine_swap(weights, before, 3)
    # Light GPUs: g1 (1.5), then g2 (5). Best is 0 <-> 2 on g1 (peak 6.5); g2's ranks stay.
    assert after == Packing(pack=[1, 0, 0, 1, 2, 2], rank=[0, 1, 0, 1, 1, 0])


def test_refine_swap_lists_is_refine_swap_on_plain_lists() -> None:
    weights = [6.0, 5.0, 1.0, 0.5]
    assert refine_swap_lists(weights, [0, 0, 1, 1], [0, 1, 0, 1], 2) == (
        [1, 0, 0, 1],
        [0, 1, 0, 1],
    )


def test_refine_swap_needs_a_real_gain() -> None:
    before = Packing(pack=[0, 0, 1, 1], rank=[0, 1, 0, 1])
    assert refine_swap([2.0, 2.0, 2.0, 2.0], before, 2) == before


@pytest.mark.parametrize("num_gpus", [1, 4])
def test_refine_swap_needs_two_gpus_and_two_slots(num_gpus: int) -> None:
    before = Packing(
        pack=[0, 0, 0, 0] if num_gpus == 1 else [0, 1, 2, 3],
        rank=[0, 1, 2, 3] if num_gpus == 1 else [0] * 4,
    )
    assert refine_swap([9.0, 1.0, 1.0, 1.0], before, num_gpus) == before
