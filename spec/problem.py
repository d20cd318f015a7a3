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


# float64's largest finite value: loads, and their per-layer sums, stay within it.
FLOAT64_MAX = float(np.finfo(np.float64).max)
# The most int64 values a problem's outputs may need (phy2log, log2phy, logcnt): 2 GiB.
MAX_OUTPUT_ELEMENTS = 2**28


def _tensor_as_float64(weight: torch.Tensor, name: str) -> FloatArray:
    if weight.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor")
    if weight.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {weight.layout}")
    if weight.is_quantized:
        raise TypeError(f"{name} must hold real numbers, got quantized dtype {weight.dtype}")
    if weight.dtype == torch.bool or weight.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got dtype {weight.dtype}")
    if weight.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has a shape but no values")
    result: FloatArray = weight.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    return result


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _nested_as_float64(weight: list[Any] | tuple[Any, ...], name: str) -> FloatArray:
    """Nested sequences ``[layers][experts]`` of real numbers, checked one by one (no
    bools, strings or ragged rows; integers beyond the float64 range refused)."""
    rows: list[list[float]] = []
    for layer, row in enumerate(weight):
        if isinstance(row, (np.ndarray, torch.Tensor)):
            row = row.tolist()
        if not isinstance(row, (list, tuple)):
            raise ValueError(
                f"{name} must be 2-D [layers, experts], got a sequence of {type(row).__name__}"
            )
        values = []
        for expert, value in enumerate(row):
            if not _is_real_number(value):
                shown = repr(value)
                raise TypeError(
                    f"{name}[{layer}][{expert}] must be a real number, got "
                    f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:37] + '...'}"
                )
            if isinstance(value, (int, np.integer)) and abs(int(value)) > FLOAT64_MAX:
                raise ValueError(
                    f"{name}[{layer}][{expert}] = a {len(str(abs(int(value))))}-digit integer "
                    f"is beyond the float64 range"
                )
            values.append(float(value))
        if rows and len(values) != len(rows[0]):
            raise ValueError(
                f"{name} must be 2-D [layers, experts]: row 0 has {len(rows[0])} values, "
                f"row {layer} has {len(values)}"
            )
        rows.append(values)
    array = np.array(rows, dtype=np.float64)
    return array.reshape(len(rows), len(rows[0]) if rows else 0)


def loads_as_float64(weight: object, name: str = "weight") -> FloatArray:
    """A float64 copy of a ``[layers, experts]`` load matrix, after checking it.

    Accepts a dense ``torch.Tensor`` on any device, a ``numpy.ndarray`` or nested
    sequences of real numbers. Integer loads up to 2**53 convert exactly; larger ones
    round to the nearest float64, as the balancer computes in float64. Refused: meta,
    quantized, nested and sparse tensors, non-real dtypes, NaN, infinities, negative
    values, values beyond the float64 range and layers whose sum overflows float64.
    """
    if isinstance(weight, torch.Tensor):
        array = _tensor_as_float64(weight, name)
    elif isinstance(weight, np.ndarray) and weight.dtype != np.object_:
        if weight.dtype == np.bool_ or weight.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {weight.dtype}")
        array = weight.astype(np.float64, copy=True)
        overflow = np.isinf(array) & np.isfinite(weight)
        if overflow.any():
            layer, expert = (int(i) for i in np.argwhere(overflow)[0])
            raise ValueError(f"{name}[{layer}, {expert}] is beyond the float64 range")
    elif isinstance(weight, (list, tuple, np.ndarray)):
        nested = weight.tolist() if isinstance(weight, np.ndarray) else weight
        if isinstance(nested, list) and nested and all(_is_real_number(v) for v in nested):
            raise ValueError(f"{name} must be 2-D [layers, experts], got shape ({len(nested)},)")
        array = _nested_as_float64(nested, name)
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
            f"{name} must be non-negative, found {float(array[layer, expert])!r} at "
            f"[{layer}, {expert}]"
        )
    with np.errstate(over="ignore"):
        sums = array.sum(axis=1)
    if not np.isfinite(sums).all():
        layer = int(np.flatnonzero(~np.isfinite(sums))[0])
        raise ValueError(
            f"{name}'s layer {layer} sums to more than the float64 range "
            f"({FLOAT64_MAX:.4g}); per-layer sums must be finite"
        )
    return array


def check_output_size(num_layers: int, num_experts: int, num_replicas: int) -> None:
    """Refuse a problem whose outputs would need more than ``MAX_OUTPUT_ELEMENTS`` int64
    values: phy2log ``[L, R]``, log2phy ``[L, E, R - E + 1]`` and logcnt ``[L, E]``."""
    width = max(1, num_replicas - num_experts + 1)
    needed = num_layers * (num_replicas + num_experts * width + num_experts)
    if needed > MAX_OUTPUT_ELEMENTS:
        raise ValueError(
            f"num_replicas ({num_replicas}) with {num_layers} layer(s) of {num_experts} "
            f"experts needs {needed} output values (phy2log, log2phy, logcnt); at most "
            f"2**28 = {MAX_OUTPUT_ELEMENTS} are supported"
        )


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
        check_output_size(int(array.shape[0]), int(array.shape[1]), replicas)
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
