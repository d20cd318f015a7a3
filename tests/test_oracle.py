"""The oracle against brute force, and its honesty about what it has proved."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from eplb_spec.cli import main
from impl import balance
from oracle.bruteforce import best_joint, best_packing, best_replication, compositions
from oracle.cpsat import SolverSettings
from oracle.instances import solve_instance
from oracle.joint import solve_joint
from oracle.packing import packing_lower_bound, solve_packing
from oracle.pipeline import (
    MAX_SPLITS,
    capped_comb,
    certify_layer,
    count_splits,
    group_splits,
    layer_lower_bound,
    max_groups_per_node,
    optimal_layer,
    splits_of,
)
from oracle.replication import solve_replication
from oracle.result import SolveResult, Status
from properties.strategies import load_values
from spec import BalancingProblem, check_placement, peak_gpu_load

FAST = SolverSettings(time_limit_s=20.0)


@st.composite
def replication_cases(draw: st.DrawFn) -> tuple[list[float], int]:
    n = draw(st.integers(1, 5))
    return draw(load_values(n)), n + draw(st.integers(0, 5))


@given(replication_cases())
@example(([0.0, 0.0], 3))
@example(([5.0, 5.0, 5.0], 7))
@example(([1e6, 1.0, 1.0], 6))
def test_replication_equals_brute_force(case: tuple[list[float], int]) -> None:
    weights, slots = case
    result = solve_replication(weights, slots)
    assert result.status is Status.OPTIMAL
    assert result.objective == result.bound == best_replication(weights, slots)


@st.composite
def packing_cases(draw: st.DrawFn) -> tuple[list[float], int, list[int] | None]:
    packs = draw(st.integers(1, 3))
    cap = draw(st.integers(1, 8 // packs))
    weights = draw(load_values(packs * cap))
    labels = draw(
        st.none() | st.lists(st.integers(0, 3), min_size=packs * cap, max_size=packs * cap)
    )
    return weights, packs, labels


@given(packing_cases())
@example(([0.0] * 6, 2, None))
@example(([3.0, 3.0, 3.0, 3.0], 2, [0, 0, 1, 1]))
@example(([1000.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3, None))
@example(([1.0, 1.0, 1.0, 1.0], 2, [0, 0, 0, 1]))
def test_packing_equals_brute_force(case: tuple[list[float], int, list[int] | None]) -> None:
    weights, packs, labels = case
    result = solve_packing(weights, packs, labels, FAST)
    expected = best_packing(weights, packs, labels)
    if expected is None:
        assert result.status is Status.INFEASIBLE
        return
    assert packing_lower_bound([Fraction(w) for w in weights], packs) <= expected
    if result.exact:
        assert result.status is Status.OPTIMAL
        assert result.objective == result.bound == expected
    else:  # weights too wide to scale exactly: an honest interval at the stated resolution
        assert result.resolution is not None
        assert result.objective is not None
        assert result.bound <= expected <= result.objective
        assert result.objective - result.bound <= len(weights) // packs * result.resolution


@st.composite
def joint_cases(draw: st.DrawFn) -> tuple[list[float], int, int, bool]:
    n = draw(st.integers(1, 4))
    packs = draw(st.integers(1, 3))
    cap = draw(st.integers(-(-n // packs), max(-(-n // packs), 6 // packs)))
    return draw(load_values(n)), packs * cap, packs, draw(st.booleans())


@given(joint_cases())
@example(([7.0, 5.0, 3.0], 6, 2, False))
@example(([0.0, 0.0, 0.0], 6, 3, True))
@example(([9.0, 1.0], 6, 2, True))
@example(([1.5], 2, 2, False))  # found: counts' lcm times the denominators' lcm is needed
@example(([1.0, 37.0, 184.0, 184.0], 4, 2, False))  # found: CP-SAT's float bound 220.999...
@example(([5452.0, 13557.0, 13759.449912514188], 3, 3, False))  # found: presolve, big values
@example(([65.0, 14350.0, 14349.449912514188], 3, 3, False))
@example(([1.0, 3.0, 1.064786709524924], 4, 2, True))  # found: a wrong OPTIMAL at 2**38
def test_joint_equals_brute_force(case: tuple[list[float], int, int, bool]) -> None:
    weights, slots, packs, distinct = case
    result = solve_joint(weights, slots, packs, distinct, FAST)
    expected = best_joint(weights, slots, packs, distinct)
    if expected is None:
        assert result.status is Status.INFEASIBLE
    elif result.exact:
        assert result.status is Status.OPTIMAL
        assert result.objective == result.bound == expected
    else:
        assert result.resolution is not None
        assert result.objective is not None
        assert result.bound <= expected <= result.objective
        assert result.objective - result.bound <= slots // packs * result.resolution


def test_joint_beats_optimal_counts_then_optimal_packing() -> None:
    # [7, 5, 3] on 6 slots and 2 GPUs: choosing counts and placement together reaches
    # 15/2 (every expert twice, one replica of each per GPU). Every count vector that is
    # optimal for replication alone (peak 7/2... no: 5/2 needs more slots) packs worse.
    weights, slots, packs = [7, 5, 3], 6, 2
    joint = solve_joint(weights, slots, packs)
    replication = solve_replication(weights, slots).objective
    sequential = min(
        value
        for counts in compositions(slots, 3)
        if max(Fraction(w, c) for w, c in zip(weights, counts, strict=True)) == replication
        for value in [
            best_packing(
                [Fraction(weights[i], counts[i]) for i, c in enumerate(counts) for _ in range(c)],
                packs,
            )
        ]
        if value is not None
    )
    assert joint.status is Status.OPTIMAL
    assert joint.objective == Fraction(15, 2)
    assert sequential == Fraction(23, 3)
    assert joint.objective is not None
    assert joint.objective < sequential


def test_status_is_honest_under_a_tiny_time_limit() -> None:
    rng = random.Random(7)
    weights = [rng.randint(1, 2**24) for _ in range(48)]
    result = solve_packing(weights, 4, settings=SolverSettings(time_limit_s=0.01))
    assert result.status in (Status.FEASIBLE, Status.OPTIMAL, Status.UNKNOWN)
    if result.status is Status.OPTIMAL:
        assert result.objective == result.bound
    else:
        assert result.objective is None or result.bound < result.objective
    assert result.status is not Status.OPTIMAL  # 48 items in 10 ms: not proved here


def test_a_result_cannot_claim_optimal_without_proof() -> None:
    with pytest.raises(AssertionError, match="OPTIMAL claimed"):
        SolveResult("packing", Status.OPTIMAL, Fraction(3), Fraction(2), None, 0.0, "x")
    with pytest.raises(AssertionError, match=r"bound .* above objective"):
        SolveResult("packing", Status.FEASIBLE, Fraction(2), Fraction(3), None, 0.0, "x")


@pytest.mark.parametrize("problem", ["packing", "joint"])
def test_same_instance_twice_gives_the_same_objective(problem: str) -> None:
    rng = random.Random(3)
    weights = [rng.randint(0, 10**6) for _ in range(12)]
    document = {"problem": problem, "weights": weights, "num_packs": 4}
    if problem == "joint":
        document = {**document, "weights": weights[:8], "num_slots": 12}
    first, second = solve_instance(document), solve_instance(document)
    assert first.objective == second.objective
    assert first.status is second.status is Status.OPTIMAL


def test_float_weights_that_do_not_scale_exactly_get_an_honest_interval() -> None:
    weights = [1e-300, 1e300, 3.0, 1.0]
    result = solve_packing(weights, 2)
    assert result.exact is False
    assert result.resolution is not None
    assert result.bound <= Fraction(1e300) + 1 <= (result.objective or 0)


def splits_by_brute_force(groups: int, nodes: int, most: int) -> set[frozenset[frozenset[int]]]:
    """Every assignment of groups to labelled nodes, kept when each node holds 1..most
    groups, as a set of unlabelled blocks."""
    found = set()
    for assignment in itertools.product(range(nodes), repeat=groups):
        blocks = [frozenset(g for g in range(groups) if assignment[g] == n) for n in range(nodes)]
        if all(1 <= len(b) <= most for b in blocks):
            found.add(frozenset(blocks))
    return found


@pytest.mark.parametrize(
    ("groups", "nodes", "most"),
    [
        (6, 3, 2),
        (6, 3, 3),
        (6, 3, 6),
        (6, 3, 4),
        (4, 2, 2),
        (4, 2, 3),
        (4, 2, 4),
        (6, 2, 5),
        (4, 4, 1),
        (4, 4, 4),
        (3, 1, 3),
        (8, 2, 8),
        (1, 1, 1),
    ],
)
def test_group_splits_are_the_set_partitions_the_contract_allows(
    groups: int, nodes: int, most: int
) -> None:
    splits = list(group_splits(groups, nodes, most))
    as_sets = {frozenset(frozenset(b) for b in s) for s in splits}
    assert len(as_sets) == len(splits)  # each listed once
    assert as_sets == splits_by_brute_force(groups, nodes, most)
    assert count_splits(groups, nodes, most) == len(splits)


def test_split_counts() -> None:
    assert count_splits(8, 4, 2) == 105  # the trace cluster: equal splits only
    assert len(list(group_splits(8, 4, 2))) == 105
    # Blocks of sizes 2-2-2-2, 3-2-2-1 and 3-3-1-1: 105 + 8!/(3!2!2!1!2!) + 8!/(3!3!2!2!).
    assert count_splits(8, 4, 3) == 105 + 840 + 280
    assert count_splits(8, 4, 8) == 1701  # Stirling number S(8, 4)
    assert len(list(group_splits(8, 4, 8))) == 1701
    assert count_splits(16, 4, 4) == MAX_SPLITS + 1  # 2,627,625 equal splits alone
    assert count_splits(10**6, 2, 10**6) == MAX_SPLITS + 1  # counted without listing
    assert count_splits(10**6, 10**6, 1) == 1
    for n in range(30):
        for k in range(n + 1):
            assert capped_comb(n, k, 1000) == min(math.comb(n, k), 1001)


def test_the_trace_cluster_allows_only_equal_splits() -> None:
    # (R, Gr, N, P) = (288, 8, 4, 32) with 256 experts: 72 slots per node and 32
    # experts per group, so a node holds at most 2 groups and 4 nodes hold 8: 2 each.
    problem = BalancingProblem(np.ones((1, 256)), 288, 8, 4, 32)
    assert max_groups_per_node(problem) == 2
    splits = splits_of(problem)
    assert len(splits) == 105
    assert all(len(block) == 2 for split in splits for block in split)


def example_problem(num_groups: int = 4) -> BalancingProblem:
    weight = [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
    return BalancingProblem(np.asarray(weight, dtype=np.float64), 16, num_groups, 2, 8)


@pytest.mark.parametrize("layer", [0, 1])
def test_layer_optimum_is_a_lower_bound_for_both_variants(layer: int) -> None:
    problem = example_problem()
    answer = optimal_layer(problem, layer)
    assert answer.result.status is Status.OPTIMAL
    assert answer.result.objective is not None
    for variant in ("refined", "baseline"):
        result = balance(problem, variant="refined" if variant == "refined" else "baseline")
        peak = Fraction(
            float(peak_gpu_load(problem.loads, result.phy2log, result.logcnt, 8)[layer])
        )
        assert peak >= answer.result.objective
    assert layer_lower_bound(problem, layer) <= answer.result.objective
    certified = certify_layer(problem, layer, answer.split)
    assert certified.result.bound <= answer.result.objective <= (certified.result.objective or 0)


def test_global_policy_layer_optimum() -> None:
    weight = np.asarray([[9, 7, 4, 4, 2, 1]], dtype=np.float64)
    problem = BalancingProblem(weight, 8, 3, 2, 4)  # 3 % 2 != 0: global
    answer = optimal_layer(problem, 0)
    assert answer.result.status is Status.OPTIMAL
    assert answer.result.objective == best_joint([9, 7, 4, 4, 2, 1], 8, 4)


def test_solve_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    instance = tmp_path / "joint.json"
    instance.write_text(
        json.dumps({"problem": "joint", "weights": [7, 5, 3], "num_slots": 6, "num_packs": 2})
    )
    assert main(["solve", str(instance)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "OPTIMAL"
    assert printed["objective_exact"] == printed["bound_exact"] == "15/2"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"problem": "magic", "weights": [1]}, "problem must be one of"),
        ({"problem": "packing", "weights": [1, 2]}, r"missing \['num_packs'\]"),
        (
            {"problem": "packing", "weights": [1, 2], "num_packs": 2, "extra": 1},
            r"unknown keys \['extra'\]",
        ),
        (
            {"problem": "packing", "weights": [1, 2, 3], "num_packs": 2},
            "positive multiple of num_packs",
        ),
        (
            {"problem": "replication", "weights": [1, -2], "num_slots": 3},
            r"weights\[1\] must be non-negative",
        ),
        (
            {"problem": "replication", "weights": [1, 2], "num_slots": 1},
            r"num_slots \(1\) must be at least",
        ),
        (
            {"format": 2, "problem": "replication", "weights": [1], "num_slots": 1},
            "format 2 is not supported",
        ),
    ],
)
def test_invalid_instances_exit_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: dict[str, object], message: str
) -> None:
    instance = tmp_path / "bad.json"
    instance.write_text(json.dumps(document))
    assert main(["solve", str(instance)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unreadable_instance_exits_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["solve", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["solve", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_solve_command_writes_the_proven_placement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """FlashLB's example: ``solve --out`` writes a valid one-layer placement whose peak is
    the proven optimum 590/3, ready to run."""
    loads = [600, 560, 120, 120, 20, 10, 10, 10]
    instance = tmp_path / "layer.json"
    instance.write_text(
        json.dumps(
            {
                "problem": "layer",
                "weights": loads,
                "num_replicas": 16,
                "num_groups": 1,
                "num_nodes": 1,
                "num_gpus": 8,
            }
        )
    )
    out = tmp_path / f"placement{suffix}"
    assert main(["solve", str(instance), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "OPTIMAL"
    assert printed["objective_exact"] == "590/3"
    if suffix == ".json":
        written = json.loads(out.read_text())
        assert written["proven_optimal"] is True
        assert written["result"]["objective_exact"] == "590/3"
        arrays = {
            k: np.asarray(written[k], dtype=np.int64) for k in ("phy2log", "log2phy", "logcnt")
        }
    else:
        with np.load(out) as stored:
            assert str(stored["status"]) == "OPTIMAL"
            assert str(stored["objective_exact"]) == "590/3"
            arrays = {k: stored[k] for k in ("phy2log", "log2phy", "logcnt")}
    problem = BalancingProblem(np.asarray([loads], dtype=np.float64), 16, 1, 1, 8)
    assert check_placement(problem, arrays["phy2log"], arrays["log2phy"], arrays["logcnt"]) == []
    per_gpu = [
        sum(
            Fraction(loads[e], int(arrays["logcnt"][0, e]))
            for e in arrays["phy2log"][0, 2 * g : 2 * g + 2].tolist()
        )
        for g in range(8)
    ]
    assert max(per_gpu) == Fraction(590, 3)


def test_solve_command_out_for_other_problems_writes_the_result(tmp_path: Path) -> None:
    instance = tmp_path / "joint.json"
    instance.write_text(
        json.dumps({"problem": "joint", "weights": [7, 5, 3], "num_slots": 6, "num_packs": 2})
    )
    out = tmp_path / "answer.json"
    assert main(["solve", str(instance), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["proven_optimal"] is True
    assert written["result"]["solution"]["counts"] is not None
    assert "phy2log" not in written
