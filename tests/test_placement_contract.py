"""The output checker: accepts every real output, rejects each kind of broken one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from impl import balance, rebalance_experts
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec import BalancingProblem, ViolationCode, check_placement

EXAMPLE = torch.tensor(
    [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
)
EXAMPLE_CLUSTER = (16, 4, 2, 8)


def test_deepseek_worked_example_baseline_matches_the_published_output() -> None:
    phy2log, log2phy, logcnt = rebalance_experts(EXAMPLE, *EXAMPLE_CLUSTER, variant="baseline")
    assert phy2log.tolist() == [
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]
    assert logcnt.tolist() == [
        [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
        [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1],
    ]
    assert log2phy.shape == (2, 12, 16 - 12 + 1)
    problem = BalancingProblem(EXAMPLE, *EXAMPLE_CLUSTER)
    assert check_placement(problem, phy2log, log2phy, logcnt) == []


WORKLOADS, SOURCE = default_workloads()


@pytest.mark.parametrize("variant", ["refined", "baseline"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_checker_accepts_every_output_on_the_traces(workload: object, variant: str) -> None:
    from properties.workloads import Workload

    assert isinstance(workload, Workload)
    problem = BalancingProblem(workload.loads, *TRACE_CLUSTER)
    result = balance(problem, variant="refined" if variant == "refined" else "baseline")
    violations = check_placement(problem, result.phy2log, result.log2phy, result.logcnt)
    assert violations == [], [str(v) for v in violations]


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def example_outputs() -> Outputs:
    return rebalance_experts(EXAMPLE, *EXAMPLE_CLUSTER)


def twice_replicated(logcnt: torch.Tensor) -> int:
    return int(torch.nonzero(logcnt[0] == 2)[0, 0])


def breaks_shape(out: Outputs) -> Outputs:
    return out[0][:, :-1], out[1], out[2]


def breaks_dtype(out: Outputs) -> Outputs:
    return out[0].to(torch.int32), out[1], out[2]


def breaks_expert_range(out: Outputs) -> Outputs:
    phy2log = out[0].clone()
    phy2log[0, 0] = 12
    return phy2log, out[1], out[2]


def breaks_count_floor(out: Outputs) -> Outputs:
    # Expert f (one replica) hands its count to expert e: the sum holds, f has none.
    logcnt = out[2].clone()
    e = twice_replicated(logcnt)
    f = int(torch.nonzero(logcnt[0] == 1)[0, 0])
    logcnt[0, e] += 1
    logcnt[0, f] -= 1
    return out[0], out[1], logcnt


def breaks_count_sum(out: Outputs) -> Outputs:
    logcnt = out[2].clone()
    logcnt[1, 0] += 1
    return out[0], out[1], logcnt


def breaks_log2phy_slot(out: Outputs) -> Outputs:
    log2phy = out[1].clone()
    log2phy[0, 0, 0], log2phy[0, 2, 0] = log2phy[0, 2, 0].item(), log2phy[0, 0, 0].item()
    return out[0], log2phy, out[2]


def breaks_log2phy_duplicate(out: Outputs) -> Outputs:
    log2phy = out[1].clone()
    e = twice_replicated(out[2])
    log2phy[0, e, 1] = log2phy[0, e, 0]
    return out[0], log2phy, out[2]


def breaks_log2phy_padding(out: Outputs) -> Outputs:
    log2phy = out[1].clone()
    log2phy[0, 0, 3] = 0
    return out[0], log2phy, out[2]


def breaks_count_mismatch(out: Outputs) -> Outputs:
    # One slot of a twice-replicated expert now holds its neighbour in the same group.
    phy2log, log2phy = out[0].clone(), out[1].clone()
    e = twice_replicated(out[2])
    slot = int(log2phy[0, e, 1])
    phy2log[0, slot] = e + 1 if (e + 1) % 3 else e - 1
    return phy2log, log2phy, out[2]


def breaks_group(out: Outputs) -> Outputs:
    # Exchange the first slot of node 0 with the first slot of node 1, log2phy kept in step.
    phy2log, log2phy = out[0].clone(), out[1].clone()
    a, b = int(phy2log[0, 0]), int(phy2log[0, 8])
    phy2log[0, 0], phy2log[0, 8] = b, a
    log2phy[0][log2phy[0] == 0] = -2
    log2phy[0][log2phy[0] == 8] = 0
    log2phy[0][log2phy[0] == -2] = 8
    return phy2log, log2phy, out[2]


BREAKERS: dict[ViolationCode, Callable[[Outputs], Outputs]] = {
    ViolationCode.SHAPE: breaks_shape,
    ViolationCode.DTYPE: breaks_dtype,
    ViolationCode.EXPERT_OUT_OF_RANGE: breaks_expert_range,
    ViolationCode.COUNT_BELOW_ONE: breaks_count_floor,
    ViolationCode.COUNT_SUM: breaks_count_sum,
    ViolationCode.COUNT_MISMATCH: breaks_count_mismatch,
    ViolationCode.LOG2PHY_SLOT: breaks_log2phy_slot,
    ViolationCode.LOG2PHY_DUPLICATE: breaks_log2phy_duplicate,
    ViolationCode.LOG2PHY_PADDING: breaks_log2phy_padding,
    ViolationCode.GROUP_SPLIT: breaks_group,
}


def test_every_code_has_a_broken_output() -> None:
    assert set(BREAKERS) == set(ViolationCode)


@pytest.mark.parametrize("code", list(BREAKERS), ids=[c.value for c in BREAKERS])
def test_checker_rejects_each_kind_of_broken_output(code: ViolationCode) -> None:
    problem = BalancingProblem(EXAMPLE, *EXAMPLE_CLUSTER)
    broken = BREAKERS[code](example_outputs())
    violations = check_placement(problem, *broken)
    assert code in {v.code for v in violations}, [str(v) for v in violations]
    for violation in violations:
        assert violation.message
        assert violation.code.value in str(violation)


@pytest.mark.parametrize(
    ("code", "only"),
    [
        (ViolationCode.GROUP_SPLIT, {ViolationCode.GROUP_SPLIT}),
        (ViolationCode.DTYPE, {ViolationCode.DTYPE}),
        (ViolationCode.LOG2PHY_DUPLICATE, {ViolationCode.LOG2PHY_DUPLICATE}),
        (ViolationCode.LOG2PHY_PADDING, {ViolationCode.LOG2PHY_PADDING}),
    ],
)
def test_checker_blames_exactly_what_was_broken(
    code: ViolationCode, only: set[ViolationCode]
) -> None:
    problem = BalancingProblem(EXAMPLE, *EXAMPLE_CLUSTER)
    violations = check_placement(problem, *BREAKERS[code](example_outputs()))
    assert {v.code for v in violations} == only


def test_checker_reports_a_non_array_without_raising() -> None:
    problem = BalancingProblem(EXAMPLE, *EXAMPLE_CLUSTER)
    out = example_outputs()
    violations = check_placement(problem, out[0].tolist(), out[1], out[2])
    assert [v.code for v in violations] == [ViolationCode.DTYPE]
    assert "got list" in violations[0].message


def test_global_policy_does_not_require_groups_to_stay_together() -> None:
    problem = BalancingProblem(EXAMPLE, 16, 3, 2, 8)  # 3 % 2 != 0: global
    out = rebalance_experts(EXAMPLE, 16, 3, 2, 8)
    assert check_placement(problem, *out) == []
    assert check_placement(problem, *breaks_group(out)) == []


def test_numpy_outputs_are_checked_too() -> None:
    problem = BalancingProblem(EXAMPLE, *EXAMPLE_CLUSTER)
    out = [np.asarray(t) for t in example_outputs()]
    assert check_placement(problem, *out) == []
