"""Quality on the real traces and time per call: every pinned engine balancer beside this
project's fast path, in one process, interleaved trace by trace.

    python docs/engines/measure.py [--data DIR] [--repeats 3] [--json FILE]

Each engine gets the loads in the dtype its own caller passes (vLLM: int64, SGLang:
int32); the last column counts the layers whose placement changes when the same loads
come as float64 (what the gate passes). Global SGLang algorithms ignore nodes by design,
so they (and the fast path beside them) are scored with the GPUs as one node.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from impl import rebalance_experts_fast
from oracle.pipeline import layer_lower_bound
from properties.engines import find_engine, pinned_targets
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.objectives import balancedness, gpu_loads, gpus_with_duplicate_replicas
from spec.placement import placement_from_phy2log
from spec.problem import BalancingProblem

FLAT_CLUSTER = (TRACE_CLUSTER[0], TRACE_CLUSTER[1], 1, TRACE_CLUSTER[3])


def phy2log_of(result: Any) -> np.ndarray:
    first = result[0] if isinstance(result, tuple) else result
    return np.asarray(first.detach().cpu().numpy(), dtype=np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    workloads, note = default_workloads(args.data)
    print(note)
    rows: list[tuple[str, Callable[..., Any], torch.dtype, tuple[int, int, int, int]]] = []
    for target in pinned_targets():
        adapter = find_engine(target)
        assert adapter is not None
        num_experts = workloads[0].loads.shape[1]
        cluster = (
            FLAT_CLUSTER if adapter.outside_domain(num_experts, TRACE_CLUSTER) else TRACE_CLUSTER
        )
        dtype = torch.int64 if adapter.engine == "vllm" else torch.int32
        rows.append((target, adapter.load(), dtype, cluster))
    for cluster in (TRACE_CLUSTER, FLAT_CLUSTER):
        rows.append(
            (
                f"impl:rebalance_experts_fast {cluster}",
                rebalance_experts_fast,
                torch.float64,
                cluster,
            )
        )
    fast_warm = torch.tensor(workloads[0].loads)
    rebalance_experts_fast(fast_warm, *TRACE_CLUSTER)  # compile before timing

    stats: dict[str, dict[str, list[float]]] = {r[0]: {} for r in rows}
    for workload in workloads:
        bounds = {
            cluster: [
                float(layer_lower_bound(BalancingProblem(workload.loads, *cluster), layer))
                for layer in range(workload.loads.shape[0])
            ]
            for cluster in (TRACE_CLUSTER, FLAT_CLUSTER)
        }
        for name, function, dtype, cluster in rows:
            weight = torch.tensor(workload.loads).to(dtype)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = function(weight, *cluster)
                times.append(time.perf_counter() - start)
            phy2log = phy2log_of(result)
            as_float = phy2log_of(function(torch.tensor(workload.loads), *cluster))
            _, logcnt = placement_from_phy2log(phy2log, workload.loads.shape[1])
            loads = gpu_loads(workload.loads, phy2log, logcnt, cluster[3])
            ratios = [
                float(loads[layer].max()) / bound
                for layer, bound in enumerate(bounds[cluster])
                if bound > 0
            ]
            entry = stats[name]
            for key, value in (
                ("balancedness", balancedness(loads)),
                ("peak_over_bound_mean", statistics.fmean(ratios)),
                ("peak_over_bound_max", max(ratios)),
                ("duplicate_gpus", float(gpus_with_duplicate_replicas(phy2log, cluster[3]).sum())),
                ("seconds_per_call", statistics.median(times)),
                ("layers_changed_by_float64", float((phy2log != as_float).any(axis=1).sum())),
            ):
                entry.setdefault(key, []).append(value)

    print(
        f"{len(workloads)} traces; means over traces (max of per-layer maxima); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = (
        f"{'target':<46}{'cluster':>20}{'balanced':>10}{'peak/LB':>9}{'max':>8}"
        f"{'dup GPUs':>10}{'s/call':>9}{'x fast':>8}{'f64 diff':>9}"
    )
    print(header)
    fast = {
        cluster: statistics.fmean(
            stats[f"impl:rebalance_experts_fast {cluster}"]["seconds_per_call"]
        )
        for cluster in (TRACE_CLUSTER, FLAT_CLUSTER)
    }
    summary = {}
    for name, _, _, cluster in rows:
        s = stats[name]
        seconds = statistics.fmean(s["seconds_per_call"])
        summary[name] = {
            "cluster": cluster,
            "balancedness": statistics.fmean(s["balancedness"]),
            "peak_over_bound_mean": statistics.fmean(s["peak_over_bound_mean"]),
            "peak_over_bound_max": max(s["peak_over_bound_max"]),
            "duplicate_gpus_mean": statistics.fmean(s["duplicate_gpus"]),
            "seconds_per_call": seconds,
            "times_fast_path": seconds / fast[cluster],
            "layers_changed_by_float64": sum(s["layers_changed_by_float64"]),
        }
        row = summary[name]
        print(
            f"{name.split(' ')[0]:<46}{cluster!s:>20}{row['balancedness']:>10.4f}"
            f"{row['peak_over_bound_mean']:>9.4f}{row['peak_over_bound_max']:>8.4f}"
            f"{row['duplicate_gpus_mean']:>10.1f}{seconds:>9.4f}{row['times_fast_path']:>8.1f}"
            f"{int(row['layers_changed_by_float64']):>9}"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
