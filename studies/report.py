"""The main job: the refined reference against the DeepSeek-style baseline, per trace.

For each workload (the real traces, or a generated stand-in, said so): the balancedness
of both variants, the layers where each refinement acted, what refinement B buys and
what it does to duplicate replicas, and the time of one call of each (the readable
reference, not the fast path).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from impl.balancer import BalanceResult, Variant, balance
from properties.workloads import Workload
from spec.objectives import balancedness, gpu_loads, gpus_with_duplicate_replicas
from spec.problem import BalancingProblem

REPORT_FORMAT = 2
"""2: the refined variant's columns are ``*_refined`` (they were ``*_seed``)."""


@dataclass(frozen=True)
class TraceReport:
    trace: str
    generated: bool
    layers: int
    balancedness_refined: float
    balancedness_baseline: float
    layers_changed_by_a: int
    layers_changed_by_b: int
    balancedness_without_b: float
    duplicate_gpus_refined: int
    duplicate_gpus_without_b: int
    seconds_refined: float
    seconds_baseline: float


def timed_balance(problem: BalancingProblem, variant: Variant) -> tuple[BalanceResult, float]:
    start = time.perf_counter()
    result = balance(problem, variant=variant)
    return result, time.perf_counter() - start


def report_trace(workload: Workload, cluster: tuple[int, int, int, int]) -> TraceReport:
    """Balancedness of both variants and where the refinements acted, for one workload."""
    problem = BalancingProblem(workload.loads, *cluster, loads_name=workload.name)
    refined, refined_seconds = timed_balance(problem, "refined")
    base, base_seconds = timed_balance(problem, "baseline")
    without_b = balance(problem, refine_b=False, fast=True)
    num_gpus = cluster[3]

    def balance_of(result: BalanceResult) -> float:
        return balancedness(gpu_loads(problem.loads, result.phy2log, result.logcnt, num_gpus))

    def duplicates(result: BalanceResult) -> int:
        return int(gpus_with_duplicate_replicas(result.phy2log, num_gpus).sum())

    return TraceReport(
        trace=workload.name,
        generated=workload.generated,
        layers=problem.num_layers,
        balancedness_refined=balance_of(refined),
        balancedness_baseline=balance_of(base),
        layers_changed_by_a=int(refined.counts_refined.any(-1).sum()),
        layers_changed_by_b=int(refined.replicas_swapped.any(-1).sum()),
        balancedness_without_b=balance_of(without_b),
        duplicate_gpus_refined=duplicates(refined),
        duplicate_gpus_without_b=duplicates(without_b),
        seconds_refined=refined_seconds,
        seconds_baseline=base_seconds,
    )


def print_trace_report(
    rows: Sequence[TraceReport], cluster: tuple[int, int, int, int], note: str
) -> None:
    replicas, groups, nodes, gpus = cluster
    print(
        f"EPLB reference (refined) vs DeepSeek-style baseline, "
        f"replicas={replicas} groups={groups} nodes={nodes} gpus={gpus}"
    )
    print(note)
    header = (
        f"{'trace':<24}{'layers':>7}{'bal ref':>10}{'bal base':>10}{'A chg':>7}{'B chg':>7}"
        f"{'B gain':>9}{'dup':>5}{'dup-B':>6}{'ms ref':>9}{'ms base':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.trace:<24}{row.layers:>7}{row.balancedness_refined:>10.4f}"
            f"{row.balancedness_baseline:>10.4f}{row.layers_changed_by_a:>7}"
            f"{row.layers_changed_by_b:>7}"
            f"{row.balancedness_refined - row.balancedness_without_b:>9.1e}"
            f"{row.duplicate_gpus_refined:>5}{row.duplicate_gpus_without_b:>6}"
            f"{row.seconds_refined * 1e3:>9.1f}{row.seconds_baseline * 1e3:>9.1f}"
        )
    print("-" * len(header))
    gains = [r.balancedness_refined - r.balancedness_without_b for r in rows]
    print(
        f"{'mean / total / median':<24}{'':>7}"
        f"{statistics.fmean(r.balancedness_refined for r in rows):>10.4f}"
        f"{statistics.fmean(r.balancedness_baseline for r in rows):>10.4f}"
        f"{sum(r.layers_changed_by_a for r in rows):>7}"
        f"{sum(r.layers_changed_by_b for r in rows):>7}"
        f"{statistics.fmean(gains):>9.1e}"
        f"{sum(r.duplicate_gpus_refined for r in rows):>5}"
        f"{sum(r.duplicate_gpus_without_b for r in rows):>6}"
        f"{statistics.median(r.seconds_refined for r in rows) * 1e3:>9.1f}"
        f"{statistics.median(r.seconds_baseline for r in rows) * 1e3:>9.1f}"
    )
    print(
        "bal = balancedness, sum over layers of mean GPU load / sum of peak GPU load (1 is "
        "perfect); ref = the refined reference; A/B chg = layers where refinement A/B acted "
        "on at least one node; B gain = balancedness with B minus without; dup / dup-B = "
        "GPUs holding two replicas of one expert, with and without B; ms = one call of the "
        "readable reference (not the fast path) each."
    )


def report_document(
    rows: Sequence[TraceReport], cluster: tuple[int, int, int, int], note: str
) -> dict[str, Any]:
    """The report as JSON (``eplb-spec report --json``)."""
    return {
        "format": REPORT_FORMAT,
        "cluster": dict(zip(("replicas", "groups", "nodes", "gpus"), cluster, strict=True)),
        "source": note,
        "traces": [asdict(r) for r in rows],
    }
