"""Objectives and metrics of a placement.

Each replica of expert ``e`` is assumed to carry ``w[e] / c[e]``. The load of a GPU is
the sum over its slots; the quantity to minimise is the busiest GPU's load per layer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def replica_loads(loads: FloatArray, phy2log: IntArray, logcnt: IntArray) -> FloatArray:
    """``[L, R]``: the load of each slot, ``w[l, phy2log[l, s]] / logcnt[l, phy2log[l, s]]``."""
    weight = np.take_along_axis(np.asarray(loads, dtype=np.float64), phy2log, axis=1)
    count = np.take_along_axis(logcnt, phy2log, axis=1)
    result: FloatArray = weight / count
    return result


def gpu_loads(loads: FloatArray, phy2log: IntArray, logcnt: IntArray, num_gpus: int) -> FloatArray:
    """``[L, P]``: the load of each GPU, summed over its ``R / P`` consecutive slots."""
    per_slot = replica_loads(loads, phy2log, logcnt)
    num_layers, num_replicas = per_slot.shape
    result: FloatArray = per_slot.reshape(num_layers, num_gpus, num_replicas // num_gpus).sum(-1)
    return result


def peak_gpu_load(
    loads: FloatArray, phy2log: IntArray, logcnt: IntArray, num_gpus: int
) -> FloatArray:
    """``[L]``: the busiest GPU's load in each layer (the objective)."""
    result: FloatArray = gpu_loads(loads, phy2log, logcnt, num_gpus).max(-1)
    return result


def balancedness(per_gpu: FloatArray) -> float:
    """``sum_l mean_g load / sum_l max_g load``, as engines log it; in ``(0, 1]``.

    A workload with no load at all counts as perfectly balanced (1.0). Loads are divided
    by the largest one first, so that sums over many layers near the float64 limit
    cannot overflow (the ratio is unchanged up to rounding).
    """
    largest = float(per_gpu.max()) if per_gpu.size else 0.0
    if largest == 0.0:
        return 1.0
    scaled = per_gpu / largest
    return float(scaled.mean(-1).sum()) / float(scaled.max(-1).sum())


def peak_replica_load(loads: npt.ArrayLike, logcnt: npt.ArrayLike) -> FloatArray:
    """``max_e w[..., e] / logcnt[..., e]``, the heaviest single replica: ``[L]`` for a
    placement's ``[L, E]`` arrays, a 0-d array for one row."""
    result: FloatArray = (
        np.asarray(loads, dtype=np.float64) / np.asarray(logcnt, dtype=np.float64)
    ).max(-1)
    return result


def gpus_with_duplicate_replicas(phy2log: IntArray, num_gpus: int) -> IntArray:
    """``[L]``: how many GPUs hold two or more replicas of one expert."""
    num_layers, num_replicas = phy2log.shape
    per_gpu = np.sort(phy2log.reshape(num_layers, num_gpus, num_replicas // num_gpus), axis=-1)
    repeated = (per_gpu[..., 1:] == per_gpu[..., :-1]).any(-1)
    result: IntArray = repeated.sum(-1).astype(np.int64)
    return result
