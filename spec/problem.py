"""What a balancing problem is, and which inputs are valid.

A problem is a load matrix ``w[l, e] >= 0`` (``L`` layers, ``E`` logical experts) and a
cluster: ``R`` physical expert slots per layer spread evenly over ``P`` GPUs in ``N``
nodes, with the experts of each layer split into ``Gr`` groups of consecutive experts.

Policy rule: when ``Gr % N == 0`` the hierarchical policy runs on ``(Gr, N, P)``
(every group, with all its replicas, stays on one node); otherwise the global policy
runs, which is the same procedure on ``(1, 1, P)``.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Policy(enum.Enum):
    """Which packing procedure a problem's shape selects."""

    HIERARCHICAL = "hierarchical"
    GLOBAL = "global"


def policy_for(num_groups: int, num_nodes: int) -> Policy:
    """Hierarchical when the groups split evenly over the nodes, otherwise global."""
    return Policy.HIERARCHICAL if num_groups % num_nodes == 0 else Policy.GLOBAL


def require_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int``; TypeError for a non-integer, ValueError below 1."""
    if isinstance(value, (bool, float, complex, str)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be positive, got {number}")
    return int(number)


def loads_as_float64(weight: object, name: str = "weight") -> FloatArray:
    """A float64 copy of a ``[layers, experts]`` load matrix, after checking it.

    Accepts a ``torch.Tensor`` on any device, a ``numpy.ndarray`` or nested sequences of
    real numbers. Integer loads up to 2**53 convert exactly; larger ones round to the
    nearest float64, as the balancer computes in float64.
    """
    if isinstance(weight, torch.Tensor):
        if weight.dtype == torch.bool or weight.dtype.is_complex:
            raise TypeError(f"{name} must hold real numbers, got dtype {weight.dtype}")
        array = weight.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    elif isinstance(weight, (np.ndarray, list, tuple)):
        raw = np.asarray(weight)
        if raw.dtype == np.bool_ or raw.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {raw.dtype}")
        array = raw.astype(np.float64, copy=True)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy.ndarray or nested list, "
            f"got {type(weight).__name__}"
        )
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [layers, experts], got shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(array.shape)}")
    for bad, what in ((np.isnan(array), "NaN"), (np.isinf(array), "an infinite value")):
        if bad.any():
            layer, expert = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} contains {what} at [{layer}, {expert}]")
    if (array < 0).any():
        layer, expert = (int(i) for i in np.argwhere(array < 0)[0])
        raise ValueError(
            f"{name} must be non-negative, found {array[layer, expert]!r} at [{layer}, {expert}]"
        )
    return array


def check_cluster(
    num_experts: int, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> Policy:
    """Check the divisibility rules for a problem with ``num_experts`` experts.

    Returns the policy that the rules select; raises ValueError naming the parameter
    that breaks a rule.
    """
    if num_replicas < num_experts:
        raise ValueError(
            f"num_replicas ({num_replicas}) must be at least the number of experts ({num_experts})"
        )
    if num_replicas % num_gpus != 0:
        raise ValueError(
            f"num_replicas ({num_replicas}) must be divisible by num_gpus ({num_gpus})"
        )
    policy = policy_for(num_groups, num_nodes)
    if policy is Policy.HIERARCHICAL:
        if num_experts % num_groups != 0:
            raise ValueError(
                f"num_groups ({num_groups}) must divide the number of experts ({num_experts}) "
                f"under the hierarchical policy (num_groups % num_nodes == 0)"
            )
        if num_gpus % num_nodes != 0:
            raise ValueError(
                f"num_gpus ({num_gpus}) must be divisible by num_nodes ({num_nodes}) "
                f"under the hierarchical policy (num_groups % num_nodes == 0)"
            )
    return policy


@dataclass(frozen=True, eq=False)
class BalancingProblem:
    """A validated balancing problem; ``loads`` is a read-only float64 ``[L, E]`` copy.

    Construction checks every precondition and raises ValueError (TypeError for a
    wrong type) naming the parameter at fault.
    """

    loads: FloatArray
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    policy: Policy = field(init=False)

    def __init__(
        self,
        loads: Any,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_gpus: int,
        *,
        loads_name: str = "weight",
    ) -> None:
        array = loads_as_float64(loads, loads_name)
        array.setflags(write=False)
        replicas = require_positive_int(num_replicas, "num_replicas")
        groups = require_positive_int(num_groups, "num_groups")
        nodes = require_positive_int(num_nodes, "num_nodes")
        gpus = require_positive_int(num_gpus, "num_gpus")
        policy = check_cluster(int(array.shape[1]), replicas, groups, nodes, gpus)
        object.__setattr__(self, "loads", array)
        object.__setattr__(self, "num_replicas", replicas)
        object.__setattr__(self, "num_groups", groups)
        object.__setattr__(self, "num_nodes", nodes)
        object.__setattr__(self, "num_gpus", gpus)
        object.__setattr__(self, "policy", policy)

    @property
    def num_layers(self) -> int:
        return int(self.loads.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.loads.shape[1])

    @property
    def packing_groups(self) -> int:
        """Groups the procedure packs: ``num_groups``, or 1 under the global policy."""
        return self.num_groups if self.policy is Policy.HIERARCHICAL else 1

    @property
    def packing_nodes(self) -> int:
        """Nodes the procedure packs onto: ``num_nodes``, or 1 under the global policy."""
        return self.num_nodes if self.policy is Policy.HIERARCHICAL else 1

    @property
    def group_size(self) -> int:
        return self.num_experts // self.packing_groups

    @property
    def experts_per_node(self) -> int:
        return self.num_experts // self.packing_nodes

    @property
    def slots_per_node(self) -> int:
        return self.num_replicas // self.packing_nodes

    @property
    def gpus_per_node(self) -> int:
        return self.num_gpus // self.packing_nodes

    @property
    def slots_per_gpu(self) -> int:
        return self.num_replicas // self.num_gpus

    @property
    def log2phy_width(self) -> int:
        """Width of ``log2phy`` in the reference layout: ``R - E + 1``."""
        return self.num_replicas - self.num_experts + 1
