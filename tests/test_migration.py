"""Rebalancing from a previous placement: the relabeling optimum against brute force, slot
preservation, schedules, the checkers, and the migration oracle against brute force."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from impl import balance, rebalance_experts, relabel_gpus, schedule_transfers
from impl.incremental import rebalance_incremental
from impl.migration import apply_slot_map, keep_slots, slots_of_gpus
from oracle.budgeted import transfer_lower_bound
from oracle.cpsat import SolverSettings
from oracle.migration import (
    analytical_lower_bounds,
    analytical_node_bound,
    fewest_transfers_exact,
    fewest_transfers_interval,
    peak_budget,
    placement_peak,
    tradeoff_curve,
)
from oracle.pipeline import node_experts, splits_of
from oracle.result import Status
from properties.rebalance import relabeling_optimum
from properties.strategies import load_values, placement_rows, rebalance_cases
from spec import (
    BalancingProblem,
    MigrationCode,
    MigrationViolation,
    Policy,
    TransferSchedule,
    check_placement,
    check_rebalance,
    check_schedule,
    count_transfers,
    kept_slot_shortfall,
    link_counts,
    network_nodes,
    same_gpu_loads,
    validate_placement,
)
from spec.migration import exact_gpu_loads, gpu_expert_counts
from spec.placement import placement_from_phy2log

IntArray = npt.NDArray[np.int64]


def sizes(problem: BalancingProblem) -> dict[str, int]:
    return {
        "num_experts": problem.num_experts,
        "num_gpus": problem.num_gpus,
        "num_nodes": network_nodes(problem),
    }


def migrate_for(
    problem: BalancingProblem, old: IntArray, new: IntArray, relabel: bool = True
) -> IntArray:
    return relabeling_optimum(problem, old, new, relabel=relabel)


# ---------------------------------------------------------------------------------------
# Brute force over the equivalent placements


def allowed_permutations(problem: BalancingProblem) -> list[tuple[int, ...]]:
    """Every GPU permutation that keeps a placement valid and its loads: within and
    across nodes as whole nodes (hierarchical), or any (global)."""
    gpus = problem.num_gpus
    if problem.policy is Policy.GLOBAL:
        return list(itertools.permutations(range(gpus)))
    nodes, per = problem.num_nodes, problem.gpus_per_node
    result = []
    for node_order in itertools.permutations(range(nodes)):
        for inner in itertools.product(*[list(itertools.permutations(range(per)))] * nodes):
            gpu_of = [0] * gpus
            for source, target in enumerate(node_order):
                for i, j in enumerate(inner[source]):
                    gpu_of[source * per + i] = target * per + j
            result.append(tuple(gpu_of))
    return result


def cost_triple(
    problem: BalancingProblem, old_row: IntArray, new_row: IntArray
) -> tuple[int, int, int]:
    """(transfers, inter-node transfers, fewest local slot moves) of a layer, computed
    directly from GPU contents (no impl code)."""
    cap = problem.slots_per_gpu
    per = problem.num_gpus // network_nodes(problem)
    old_gpu = [Counter(old_row[g * cap : (g + 1) * cap].tolist()) for g in range(problem.num_gpus)]
    new_gpu = [Counter(new_row[g * cap : (g + 1) * cap].tolist()) for g in range(problem.num_gpus)]
    transfers = inter = local = 0
    for g in range(problem.num_gpus):
        node_has = set().union(*old_gpu[(g // per) * per : (g // per + 1) * per])
        for e, n in new_gpu[g].items():
            if e not in old_gpu[g]:
                transfers += 1
                inter += e not in node_has
            else:
                local += max(0, n - old_gpu[g][e])
    return transfers, inter, local


def permuted(row: IntArray, gpu_of: tuple[int, ...], cap: int) -> IntArray:
    result = np.empty_like(row)
    for h, g in enumerate(gpu_of):
        result[g * cap : (g + 1) * cap] = row[h * cap : (h + 1) * cap]
    return result


# ---------------------------------------------------------------------------------------
# The relabeling


@given(rebalance_cases())
@settings(max_examples=60)
def test_relabeling_equals_brute_force_over_every_equivalent_placement(
    case: tuple[BalancingProblem, IntArray, IntArray],
) -> None:
    problem, old, new = case
    result = migrate_for(problem, old, new)
    counts = count_transfers(old, result, **sizes(problem))
    for layer in range(problem.num_layers):
        best = min(
            cost_triple(problem, old[layer], permuted(new[layer], p, problem.slots_per_gpu))
            for p in allowed_permutations(problem)
        )
        achieved = (
            int(counts.per_layer[layer]),
            int(counts.inter_node[layer]),
            int(counts.local_moves[layer]),
        )
        assert achieved == best
        assert cost_triple(problem, old[layer], result[layer]) == best


def node_load_multisets(problem: BalancingProblem, phy2log: IntArray) -> list[list[list[Fraction]]]:
    """Per layer: the sorted list over nodes of each node's sorted GPU loads (exact)."""
    loads = exact_gpu_loads(problem.loads, phy2log, problem.num_gpus)
    per = problem.gpus_per_node
    return [
        sorted(sorted(row[n * per : (n + 1) * per]) for n in range(problem.packing_nodes))
        for row in loads
    ]


@given(rebalance_cases(max_gpus=8, max_layers=3))
def test_rebalance_keeps_the_stateless_gpu_loads_per_node_and_never_adds_transfers(
    case: tuple[BalancingProblem, IntArray, IntArray],
) -> None:
    problem, old, _ = case
    for variant in ("refined", "baseline"):
        stateless = balance(problem, variant=variant)
        result = balance(problem, variant=variant, previous=old)
        assert check_placement(problem, result.phy2log, result.log2phy, result.logcnt) == []
        assert np.array_equal(result.logcnt, stateless.logcnt)
        assert node_load_multisets(problem, result.phy2log) == node_load_multisets(
            problem, stateless.phy2log
        )
        assert same_gpu_loads(
            problem.loads, result.phy2log, stateless.phy2log, problem.num_gpus
        ).all()
        relabeled = count_transfers(old, result.phy2log, **sizes(problem))
        plain = count_transfers(old, stateless.phy2log, **sizes(problem))
        kept_only = count_transfers(
            old, migrate_for(problem, old, stateless.phy2log, False), **sizes(problem)
        )
        assert (relabeled.per_layer <= plain.per_layer).all()
        assert np.array_equal(kept_only.per_layer, plain.per_layer)  # slots never move weights
        assert (kept_only.local_moves <= plain.local_moves).all()
        assert (
            kept_slot_shortfall(old, result.phy2log, problem.num_gpus, problem.num_experts) == 0
        ).all()
        assert (
            check_rebalance(
                problem,
                old,
                result.phy2log,
                stateless.phy2log,
                fewest_transfers=relabeled.per_layer,
            )
            == []
        )
        if problem.policy is Policy.HIERARCHICAL:
            flags = (
                np.sort(result.replicas_swapped, axis=1),
                np.sort(stateless.replicas_swapped, axis=1),
            )
            assert np.array_equal(*flags)


@given(rebalance_cases(max_gpus=8, max_layers=2))
@settings(max_examples=40)
def test_fast_and_torch_entry_points_agree_with_the_reference(
    case: tuple[BalancingProblem, IntArray, IntArray],
) -> None:
    problem, old, _ = case
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    weight = torch.from_numpy(problem.loads.copy())
    reference = rebalance_experts(weight, *cluster, previous=torch.from_numpy(old))
    fast = rebalance_experts(weight, *cluster, fast=True, previous=old)
    for a, b in zip(reference, fast, strict=True):
        assert torch.equal(a, b)
    direct = balance(problem, previous=old)
    assert np.array_equal(reference[0].numpy(), direct.phy2log)
    assert np.array_equal(reference[1].numpy(), direct.log2phy)


def test_the_same_loads_twice_move_nothing() -> None:
    loads = np.random.default_rng(0).integers(0, 1000, size=(3, 16)).astype(np.float64)
    problem = BalancingProblem(loads, 24, 4, 2, 8)
    stateless = balance(problem).phy2log
    shuffled = stateless.copy()
    shuffled[:, :12] = np.roll(shuffled[:, :12], 3, axis=1)  # GPUs 0..3 permuted (3 slots each)
    for previous in (stateless, shuffled):
        result = balance(problem, previous=previous)
        counts = count_transfers(previous, result.phy2log, **sizes(problem))
        assert counts.total == 0
        assert counts.rewritten.sum() == 0
        assert np.array_equal(result.phy2log, previous)


def test_slot_preservation_is_vllms_rule_and_keeps_the_gpu_contents() -> None:
    previous = np.array([[0, 1, 2, 2, 3, 4]])
    new = np.array([[2, 5, 0, 4, 4, 3]])
    slot_of = keep_slots(previous, new, num_experts=6, num_gpus=2)
    result = apply_slot_map(new, slot_of)
    # GPU 0: 0 and 2 stay (slots 0 and 2), 5 takes the freed slot 1; GPU 1: 3 and one 4
    # keep their slots, the second 4 fills slot 3.
    assert result.tolist() == [[0, 5, 2, 4, 3, 4]]
    counts = count_transfers(previous, result, num_experts=6, num_gpus=2)
    assert counts.total == 1  # expert 5 onto GPU 0
    assert counts.local_moves.tolist() == [1]  # the second 4 copied inside GPU 1


def test_relabeling_moves_whole_gpus() -> None:
    previous = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    new = np.array([[6, 7, 4, 5, 2, 3, 0, 1]])
    gpu_of = relabel_gpus(previous, new, num_experts=8, num_gpus=4)
    assert gpu_of.tolist() == [[3, 2, 1, 0]]
    assert apply_slot_map(new, slots_of_gpus(gpu_of, 8)).tolist() == previous.tolist()


# ---------------------------------------------------------------------------------------
# Nodes first, then GPUs: not exact


def naive_nodes_first(
    problem: BalancingProblem, old: list[int], new: list[int], measure: str
) -> list[int]:
    """Transfers of every node matching that maximises a node overlap measure, each with
    the best GPU matching inside the nodes (brute force)."""
    nodes, per, cap = problem.num_nodes, problem.gpus_per_node, problem.slots_per_gpu
    size = problem.slots_per_node

    def node(row: list[int], n: int) -> list[int]:
        return row[n * size : (n + 1) * size]

    def overlap(a: int, b: int) -> int:
        if measure == "shared experts":
            return len(set(node(new, a)) & set(node(old, b)))
        x, y = Counter(node(new, a)), Counter(node(old, b))
        return sum(min(x[e], y[e]) for e in x)

    def inner(a: int, b: int) -> int:
        best = None
        for order in itertools.permutations(range(per)):
            total = 0
            for i, j in enumerate(order):
                h, g = a * per + i, b * per + j
                total += len(set(new[h * cap : (h + 1) * cap]) - set(old[g * cap : (g + 1) * cap]))
            best = total if best is None else min(best, total)
        assert best is not None
        return best

    scores = {
        t: sum(overlap(a, t[a]) for a in range(nodes)) for t in itertools.permutations(range(nodes))
    }
    top = max(scores.values())
    return [sum(inner(a, t[a]) for a in range(nodes)) for t, s in scores.items() if s == top]


@pytest.mark.parametrize(
    ("measure", "cluster", "old", "new", "fewest", "naive"),
    [
        # 6 experts, 6 groups of one, 2 nodes of 2 GPUs with 2 slots each.
        ("shared experts", (8, 6, 2, 4), [1, 3, 0, 3, 2, 4, 5, 5], [0, 1, 5, 5, 4, 3, 3, 2], 4, 5),
        # 4 experts, 4 groups of one, 2 nodes of 2 GPUs with 3 slots each.
        (
            "shared replicas",
            (12, 4, 2, 4),
            [2, 0, 2, 0, 2, 0, 3, 1, 3, 3, 1, 3],
            [1, 1, 1, 2, 1, 1, 0, 3, 3, 0, 3, 3],
            3,
            4,
        ),
    ],
)
def test_matching_nodes_by_overlap_first_is_not_exact(
    measure: str,
    cluster: tuple[int, int, int, int],
    old: list[int],
    new: list[int],
    fewest: int,
    naive: int,
) -> None:
    experts = max(old) + 1
    problem = BalancingProblem(np.ones((1, experts)), *cluster)
    assert problem.policy is Policy.HIERARCHICAL
    previous, fresh = np.asarray([old]), np.asarray([new])
    # The overlap measure prefers one node matching strictly, and it costs one more.
    assert naive_nodes_first(problem, old, new, measure) == [naive]
    brute = min(
        cost_triple(problem, previous[0], permuted(fresh[0], p, problem.slots_per_gpu))[0]
        for p in allowed_permutations(problem)
    )
    assert brute == fewest < naive
    result = migrate_for(problem, previous, fresh)
    assert count_transfers(previous, result, **sizes(problem)).total == fewest


# ---------------------------------------------------------------------------------------
# Schedules


@given(rebalance_cases(max_gpus=8, max_layers=3))
def test_schedules_pass_the_contract_and_cross_nodes_only_when_they_must(
    case: tuple[BalancingProblem, IntArray, IntArray],
) -> None:
    problem, old, new = case
    result = migrate_for(problem, old, new)
    schedule = schedule_transfers(old, result, **sizes(problem))
    assert check_schedule(problem, old, result, schedule) == []
    counts = count_transfers(old, result, **sizes(problem))
    links = link_counts(schedule, problem.num_gpus, network_nodes(problem))
    assert np.array_equal(links.sum((1, 2)), counts.per_layer)
    off_diagonal = links.sum((1, 2)) - np.trace(links, axis1=1, axis2=2)
    assert np.array_equal(off_diagonal, counts.inter_node)
    for layer in range(problem.num_layers):
        peers: dict[int, set[int]] = {}
        for _, source, destination in (t for b in schedule.batches(layer) for t in b):
            peers.setdefault(source, set()).add(destination)
            peers.setdefault(destination, set()).add(source)
        most = max((len(p) for p in peers.values()), default=0)
        assert most <= schedule.num_batches[layer] <= max(0, 2 * most - 1)


# ---------------------------------------------------------------------------------------
# The checkers catch each broken input

PROBLEM = BalancingProblem(
    np.array([[9.0, 1, 4, 4, 2, 7, 3, 5], [1.0, 8, 2, 6, 5, 5, 0, 3]]), 16, 4, 2, 4
)


def good_case() -> tuple[IntArray, IntArray, IntArray, TransferSchedule]:
    old = balance(BalancingProblem(PROBLEM.loads[::-1].copy(), 16, 4, 2, 4)).phy2log
    stateless = balance(PROBLEM).phy2log
    result = balance(PROBLEM, previous=old).phy2log
    return old, stateless, result, schedule_transfers(old, result, **sizes(PROBLEM))


def codes(violations: list[MigrationViolation]) -> set[str]:
    return {v.code.value for v in violations}


def test_the_good_case_passes_and_moves_something() -> None:
    old, stateless, result, schedule = good_case()
    assert check_rebalance(PROBLEM, old, result, stateless) == []
    assert check_schedule(PROBLEM, old, result, schedule) == []
    assert schedule.transfers.shape[0] > 2
    assert (schedule.num_batches >= 1).all()


def test_check_rebalance_catches_each_violation() -> None:
    old, stateless, result, _ = good_case()
    broken = result.copy()
    broken[0, 0] = 99
    assert codes(check_rebalance(PROBLEM, old, broken, stateless)) == {"placement-invalid"}
    # Another balancer's answer: valid, different loads.
    other = balance(PROBLEM, variant="baseline").phy2log
    assert not same_gpu_loads(PROBLEM.loads, other, stateless, 4).all()
    assert MigrationCode.BALANCE_CHANGED in {
        v.code for v in check_rebalance(PROBLEM, old, other, stateless)
    }


def test_slot_not_kept_and_transfers_above_fewest_are_found() -> None:
    # Pinned so that both checks have something to find whatever the balancer does.
    problem = BalancingProblem(np.ones((1, 4)), 8, 2, 2, 4)
    previous = np.array([[0, 1, 0, 1, 2, 3, 2, 3]])
    moved_slots = np.array([[1, 0, 0, 1, 2, 3, 2, 3]])
    found = check_rebalance(problem, previous, moved_slots, previous)
    assert codes(found) == {"slot-not-kept"}
    assert "GPU 0" in str(found[0])
    crossed = np.array([[2, 3, 2, 3, 0, 1, 0, 1]])  # nodes exchanged: every replica moves
    found = check_rebalance(problem, previous, crossed, previous, fewest_transfers=np.array([0]))
    assert codes(found) == {"transfers-above-fewest"}


def with_rows(
    schedule: TransferSchedule, rows: IntArray, num_batches: IntArray | None = None
) -> TransferSchedule:
    return TransferSchedule(rows, schedule.num_batches if num_batches is None else num_batches)


def test_check_schedule_catches_each_violation() -> None:
    old, _, result, schedule = good_case()
    rows = schedule.transfers

    def found(s: TransferSchedule, exchanges: bool = True) -> set[str]:
        return codes(check_schedule(PROBLEM, old, result, s, exchanges=exchanges))

    assert found(with_rows(schedule, rows[1:])) >= {"transfer-missing"}
    assert found(with_rows(schedule, rows[1:])) <= {"transfer-missing", "batch-count"}
    assert found(with_rows(schedule, np.vstack([rows, rows[:1]]))) == {"transfer-duplicated"}
    held = gpu_expert_counts(old, 4, 8)[0]
    # An expert GPU 0 had before: sending it to GPU 0 is not needed.
    kept_expert = int(np.flatnonzero(held[0])[0])
    extra = np.array([[0, 0, kept_expert, 1, 0]])
    assert "transfer-unneeded" in found(with_rows(schedule, np.vstack([rows, extra])))
    wrong_source = rows.copy()
    lacking = int(np.flatnonzero(held[:, wrong_source[0, 2]] == 0)[0])
    wrong_source[0, 3] = lacking
    assert "source-lacks-expert" in found(with_rows(schedule, wrong_source))
    one_batch = rows.copy()
    one_batch[:, 1] = 0
    assert found(with_rows(schedule, one_batch, np.ones(2, dtype=np.int64))) == {"rank-busy-twice"}
    assert found(with_rows(schedule, rows, schedule.num_batches + 1)) == {"batch-count"}
    beyond = rows.copy()
    beyond[0, 1] = schedule.num_batches[beyond[0, 0]]
    assert "batch-count" in found(with_rows(schedule, beyond))
    assert found(with_rows(schedule, rows[:, :4])) == {"schedule-malformed"}
    bad_gpu = rows.copy()
    bad_gpu[0, 4] = 4
    assert found(with_rows(schedule, bad_gpu)) == {"schedule-malformed"}


def test_an_exchange_is_one_peer_unless_exchanges_are_ruled_out() -> None:
    problem = BalancingProblem(np.ones((1, 4)), 4, 1, 1, 2)
    previous = np.array([[0, 1, 2, 3]])
    new = np.array([[0, 2, 1, 3]])  # GPU 0 needs 2 from GPU 1, GPU 1 needs 1 from GPU 0
    rows = np.array([[0, 0, 2, 1, 0], [0, 0, 1, 0, 1]])
    schedule = TransferSchedule(rows, np.array([1]))
    assert check_schedule(problem, previous, new, schedule) == []
    strict = check_schedule(problem, previous, new, schedule, exchanges=False)
    assert codes(strict) == {"rank-busy-twice"}
    apart = TransferSchedule(np.array([[0, 0, 2, 1, 0], [0, 1, 1, 0, 1]]), np.array([2]))
    assert check_schedule(problem, previous, new, apart, exchanges=False) == []


# ---------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    ("previous", "error", "text"),
    [
        ([[0, 1]], TypeError, "previous must be a torch.Tensor or numpy.ndarray"),
        (np.zeros((2, 16)), TypeError, "previous must hold integer expert ids"),
        (torch.zeros((2, 16), dtype=torch.float32), TypeError, "previous must hold integer"),
        (np.zeros((2, 15), dtype=np.int64), ValueError, "previous must have shape (2, 16)"),
        (np.full((2, 16), 8, dtype=np.int64), ValueError, "previous[0, 0] = 8 is not an expert id"),
        (np.full((2, 16), -1, dtype=np.int64), ValueError, "is not an expert id"),
        (np.zeros((2, 16), dtype=np.int64), ValueError, "previous is not a valid placement"),
        (
            np.tile(np.array([0, 2, 1, 3, 4, 5, 6, 7] * 2), (2, 1)),
            ValueError,
            "group-split",
        ),
    ],
)
def test_bad_previous_is_rejected_naming_the_parameter(
    previous: object, error: type, text: str
) -> None:
    weight = torch.from_numpy(PROBLEM.loads.copy())
    with pytest.raises(error) as raised:
        rebalance_experts(weight, 16, 4, 2, 4, previous=previous)  # type: ignore[arg-type]
    assert text in str(raised.value)


@given(rebalance_cases(max_gpus=6, max_layers=2), st.data())
@settings(max_examples=60)
def test_the_fast_placement_check_agrees_with_check_placement(
    case: tuple[BalancingProblem, IntArray, IntArray], data: st.DataObject
) -> None:
    problem, old, _ = case
    rows = old.copy()
    for _ in range(data.draw(st.integers(0, 2))):  # corrupt a few slots (ids stay valid)
        layer = data.draw(st.integers(0, problem.num_layers - 1))
        slot = data.draw(st.integers(0, problem.num_replicas - 1))
        rows[layer, slot] = data.draw(st.integers(0, problem.num_experts - 1))
    log2phy, logcnt = placement_from_phy2log(rows, problem.num_experts)
    expected = check_placement(problem, rows, log2phy, logcnt)
    if expected:
        with pytest.raises(ValueError, match="previous is not a valid placement") as raised:
            validate_placement(problem, rows, "previous")
        assert any(v.code.value in str(raised.value) for v in expected)
    else:
        assert np.array_equal(validate_placement(problem, rows, "previous"), rows)


# ---------------------------------------------------------------------------------------
# The oracle against brute force


def all_placements(problem: BalancingProblem) -> list[list[int]]:
    """Every valid one-layer placement, GPU contents as sorted multisets: for every
    assignment of groups to nodes, every choice of contents from each node's experts."""
    cap, per = problem.slots_per_gpu, problem.gpus_per_node
    nodes, groups = problem.packing_nodes, problem.packing_groups
    size = groups // nodes
    assignments = {
        tuple(tuple(sorted(order[n * size : (n + 1) * size])) for n in range(nodes))
        for order in itertools.permutations(range(groups))
    }
    result = []
    for assignment in sorted(assignments):
        per_node = []
        for block in assignment:
            experts = node_experts(problem, block)
            contents = list(itertools.combinations_with_replacement(experts, cap))
            per_node.append(
                [
                    [e for gpu in choice for e in gpu]
                    for choice in itertools.product(contents, repeat=per)
                    if set().union(*choice) == set(experts)
                ]
            )
        for parts in itertools.product(*per_node):
            result.append([e for part in parts for e in part])
    return result


@st.composite
def oracle_cases(draw: st.DrawFn) -> tuple[BalancingProblem, IntArray]:
    """Layers small enough to list every placement: two nodes (hierarchical), or two
    or three GPUs (global)."""
    if draw(st.booleans()):
        experts, groups, gpus, cap = draw(
            st.sampled_from([(4, 2, 4, 1), (4, 2, 4, 2), (4, 4, 4, 2), (6, 2, 4, 2), (4, 2, 2, 3)])
        )
        cluster = (gpus * cap, groups, 2, gpus)
    else:
        gpus, cap = draw(st.integers(2, 3)), draw(st.integers(1, 2))
        experts = draw(st.integers(2, min(4, gpus * cap)))
        cluster = (gpus * cap, 1, 2, gpus)
    style = draw(st.sampled_from(["small-integers", "dominant", "zeros", "ties"]))
    loads = draw(load_values(experts, style))
    problem = BalancingProblem(np.asarray([loads], dtype=np.float64), *cluster)
    previous = np.asarray([draw(placement_rows(problem))], dtype=np.int64)
    return problem, previous


@given(oracle_cases(), st.sampled_from([Fraction(0), Fraction(1, 10), Fraction(1, 2)]))
@settings(max_examples=40)
@example(
    (BalancingProblem(np.array([[5.0, 1, 3, 7]]), 4, 2, 2, 2), np.array([[0, 1, 2, 3]])),
    Fraction(0),
)
def test_the_migration_oracle_equals_brute_force(
    case: tuple[BalancingProblem, IntArray], eps: Fraction
) -> None:
    problem, previous = case
    candidates = all_placements(problem)
    peaks = {tuple(row): placement_peak(problem, 0, row) for row in candidates}
    best = min(peaks.values())
    for budget in (peak_budget(best, eps), best * Fraction(9, 10)):
        within = [row for row in candidates if peaks[tuple(row)] <= budget]
        answer = fewest_transfers_exact(
            problem, 0, previous, budget, SolverSettings(time_limit_s=20)
        )
        (analytical,) = analytical_lower_bounds(problem, 0, [previous[0]], budget)
        if not within:
            assert answer.result.status is Status.INFEASIBLE
            continue
        assert analytical is not None  # None only where no placement meets the budget
        fewest = min(cost_triple(problem, previous[0], np.asarray(row))[0] for row in within)
        assert answer.result.status is Status.OPTIMAL
        assert answer.result.objective == fewest
        assert answer.phy2log is not None
        assert placement_peak(problem, 0, answer.phy2log) <= budget
        interval = fewest_transfers_interval(problem, 0, previous, budget)
        assert analytical <= interval.result.bound <= fewest
        if interval.result.objective is not None:
            assert interval.result.objective >= fewest


@given(rebalance_cases(max_gpus=8, max_layers=1), st.sampled_from([Fraction(1), Fraction(11, 10)]))
@settings(max_examples=40)
def test_the_shared_analytical_bounds_equal_the_per_node_ones(
    case: tuple[BalancingProblem, IntArray, IntArray], slack: Fraction
) -> None:
    """``analytical_lower_bounds`` (block requirements shared between old placements,
    old holders counted with arrays) against ``analytical_node_bound`` per (block, node)
    on the old placement's own GPU contents, minimised over every split and matching."""
    problem, old, new = case
    budget = slack * placement_peak(problem, 0, new[0].tolist())
    shared = analytical_lower_bounds(problem, 0, [old[0], new[0]], budget)
    cap, per = problem.slots_per_gpu, problem.gpus_per_node
    for row, bound in zip((old[0], new[0]), shared, strict=True):
        best: int | None = None
        for split in splits_of(problem):
            for nodes in itertools.permutations(range(problem.packing_nodes)):
                total = 0
                for block, node in zip(split, nodes, strict=True):
                    experts = node_experts(problem, block)
                    held = [
                        [e in set(row[g * cap : (g + 1) * cap].tolist()) for e in experts]
                        for g in range(node * per, (node + 1) * per)
                    ]
                    value = analytical_node_bound(
                        [Fraction(problem.loads[0, e]) for e in experts],
                        held,
                        problem.slots_per_node,
                        budget,
                    )
                    if value is None:
                        break
                    total += value
                else:
                    best = total if best is None else min(best, total)
        assert bound == best
    assert shared[1] == 0  # the placement that sets the budget needs nothing


def test_the_tradeoff_curve_falls_to_zero_and_brackets_the_exact_answer() -> None:
    loads = np.array([[8.0, 1, 6, 2, 5, 3, 4, 7]])
    problem = BalancingProblem(loads, 12, 4, 2, 4)
    previous = balance(BalancingProblem(loads[:, ::-1].copy(), 12, 4, 2, 4)).phy2log
    eps_values = [Fraction(0), Fraction(1, 20), Fraction(1, 4), Fraction(1)]
    exact = tradeoff_curve(problem, 0, previous, eps_values, exact=True)
    uppers = [p.upper for p in exact]
    assert all(p.status is Status.OPTIMAL for p in exact)
    assert all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(uppers))
    assert uppers[-1] == 0 < (uppers[0] or 0)  # the old placement is within 2x the best
    candidate = balance(problem, previous=previous).phy2log[0].tolist()
    best = exact[0].budget
    interval = tradeoff_curve(
        problem, 0, previous, eps_values, best_peak=best, candidates=[candidate]
    )
    for point, truth in zip(interval, exact, strict=True):
        assert point.lower is not None
        assert truth.upper is not None
        assert point.lower <= truth.upper
        assert point.upper is None or point.upper >= truth.upper


@given(
    oracle_cases(),
    st.sampled_from([Fraction(0), Fraction(1, 100), Fraction(1, 10), Fraction(1, 2)]),
)
@settings(max_examples=30)
@example(
    (BalancingProblem(np.array([[5.0, 1, 3, 7]]), 4, 2, 2, 2), np.array([[0, 1, 2, 3]])),
    Fraction(0),
)
@example(
    (
        BalancingProblem(np.array([[0.0, 0.0, 1.0, 0.0]]), 8, 2, 2, 4),
        np.array([[0, 1, 0, 0, 2, 3, 2, 2]]),
    ),
    Fraction(1, 100),
)
def test_the_flow_bound_and_the_incremental_answer_bracket_brute_force(
    case: tuple[BalancingProblem, IntArray], eps: Fraction
) -> None:
    """``oracle.budgeted.transfer_lower_bound`` is never above the fewest transfers of
    any placement within the budget (brute force), and never below the analytical
    bound; the incremental rebalancer, asked for the proven optimum's tolerance, is
    never below brute force and, when it does not fall back, within the budget."""
    problem, previous = case
    candidates = all_placements(problem)
    peaks = {tuple(row): placement_peak(problem, 0, row) for row in candidates}
    best = min(peaks.values())
    for budget in (peak_budget(best, eps), best * Fraction(9, 10)):
        within = [row for row in candidates if peaks[tuple(row)] <= budget]
        answer = transfer_lower_bound(problem, 0, previous[0].tolist(), budget)
        if not within:
            assert answer.bound is None
            continue
        fewest = min(cost_triple(problem, previous[0], np.asarray(row))[0] for row in within)
        assert answer.bound is not None
        assert answer.analytical is not None
        assert answer.analytical <= answer.bound <= fewest
    result = rebalance_incremental(problem, previous, eps=eps, reference_peaks=[best])
    transfers = int(result.transfers[0])
    peak = placement_peak(problem, 0, result.phy2log[0].tolist())
    fewest_at_peak = min(
        cost_triple(problem, previous[0], np.asarray(row))[0]
        for row in candidates
        if peaks[tuple(row)] <= peak
    )
    assert transfers >= fewest_at_peak
    if not result.fell_back[0]:
        assert peak <= peak_budget(best, eps)
