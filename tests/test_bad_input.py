"""Every violated precondition raises ValueError/TypeError naming the parameter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from impl import rebalance_experts
from spec import BalancingProblem

GOOD: dict[str, Any] = {"num_replicas": 16, "num_groups": 4, "num_nodes": 2, "num_gpus": 8}
CLUSTER = (16, 4, 2, 8)


def good_weight() -> torch.Tensor:
    return torch.arange(24, dtype=torch.float32).reshape(2, 12)


@pytest.mark.parametrize(
    ("weight", "error", "pattern"),
    [
        (torch.ones(12), ValueError, r"weight must be 2-D .* shape \(12,\)"),
        (torch.ones(2, 3, 4), ValueError, r"weight must be 2-D"),
        (torch.ones(0, 12), ValueError, r"weight must be non-empty"),
        (torch.ones(2, 0), ValueError, r"weight must be non-empty"),
        (
            torch.tensor([[1.0] * 11 + [math.nan]] * 2),
            ValueError,
            r"weight contains NaN at \[0, 11\]",
        ),
        (torch.tensor([[1.0] * 11 + [math.inf]] * 2), ValueError, r"weight contains an infinite"),
        (torch.tensor([[1.0] * 11 + [-math.inf]] * 2), ValueError, r"weight contains an infinite"),
        (torch.tensor([[1.0] * 5 + [-2.0] + [1.0] * 6] * 2), ValueError, r"non-negative.*\[0, 5\]"),
        (torch.ones(2, 12, dtype=torch.bool), TypeError, r"weight must hold real numbers"),
        (torch.ones(2, 12, dtype=torch.complex64), TypeError, r"weight must hold real numbers"),
        ("not a tensor", TypeError, r"weight must be a torch.Tensor"),
    ],
)
def test_bad_weight(weight: Any, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        rebalance_experts(weight, *CLUSTER)


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"num_replicas": 8}, ValueError, r"num_replicas \(8\) must be at least .* \(12\)"),
        (
            {"num_replicas": 20},
            ValueError,
            r"num_replicas \(20\) must be divisible by num_gpus \(8\)",
        ),
        ({"num_groups": 8, "num_nodes": 2}, ValueError, r"num_groups \(8\) must divide .* \(12\)"),
        (
            {"num_gpus": 4, "num_nodes": 3, "num_groups": 3},
            ValueError,
            r"num_gpus \(4\) .* num_nodes \(3\)",
        ),
        ({"num_replicas": 0}, ValueError, r"num_replicas must be positive, got 0"),
        ({"num_groups": 0}, ValueError, r"num_groups must be positive, got 0"),
        ({"num_nodes": -1}, ValueError, r"num_nodes must be positive, got -1"),
        ({"num_gpus": 0}, ValueError, r"num_gpus must be positive, got 0"),
        ({"num_gpus": 8.0}, TypeError, r"num_gpus must be an int, got float"),
        ({"num_nodes": True}, TypeError, r"num_nodes must be an int, got bool"),
        ({"num_replicas": "16"}, TypeError, r"num_replicas must be an int, got str"),
    ],
)
def test_bad_cluster(change: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        rebalance_experts(good_weight(), **{**GOOD, **change})


def test_divisibility_of_groups_only_matters_under_the_hierarchical_policy() -> None:
    # (E=4, R=8, Gr=3, N=2, P=4): 3 % 2 != 0, so the global policy runs and groups don't matter.
    problem = BalancingProblem(torch.ones(1, 4), 8, 3, 2, 4)
    assert problem.policy.value == "global"
    # (E=9, R=12, Gr=2, N=2, P=4): hierarchical, and 9 experts do not split into 2 groups.
    with pytest.raises(
        ValueError, match=r"num_groups \(2\) must divide the number of experts \(9\)"
    ):
        BalancingProblem(torch.ones(1, 9), 12, 2, 2, 4)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        rebalance_experts(good_weight(), *CLUSTER, variant="fastest")
    with pytest.raises(ValueError, match=r"refine_a=True .* baseline"):
        rebalance_experts(good_weight(), *CLUSTER, variant="baseline", refine_a=True)
    with pytest.raises(TypeError, match="refine_b must be a bool"):
        rebalance_experts(good_weight(), *CLUSTER, refine_b="no")  # type: ignore[arg-type]


def test_the_earlier_variant_name_seed_is_still_accepted() -> None:
    refined = rebalance_experts(good_weight(), *CLUSTER, variant="refined", refine_b=False)
    seed = rebalance_experts(good_weight(), *CLUSTER, variant="seed", refine_b=False)
    assert all(torch.equal(a, b) for a, b in zip(refined, seed, strict=True))


@pytest.mark.parametrize("variant", ["refined", "baseline"])
def test_all_zero_layers_are_valid(variant: str) -> None:
    phy2log, _, logcnt = rebalance_experts(torch.zeros(3, 12), *CLUSTER, variant=variant)
    assert logcnt.sum(-1).tolist() == [16, 16, 16]
    assert (logcnt >= 1).all()
    assert phy2log.shape == (3, 16)


def test_input_is_not_modified_and_any_real_dtype_is_accepted() -> None:
    weight = torch.tensor([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86]] * 2)
    before = weight.clone()
    as_int = rebalance_experts(weight, *CLUSTER)
    assert torch.equal(weight, before)
    for dtype in (torch.float16, torch.float32, torch.float64, torch.int32):
        again = rebalance_experts(weight.to(dtype), *CLUSTER)
        assert all(torch.equal(a, b) for a, b in zip(as_int, again, strict=True))
    from_numpy = rebalance_experts(np.asarray(weight), *CLUSTER)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(as_int, from_numpy, strict=True))
    for output in as_int:
        assert output.dtype == torch.int64
        assert output.device.type == "cpu"
