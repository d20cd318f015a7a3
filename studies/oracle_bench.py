"""The oracle's speed and reach, and how far the balancers are from the optimum.

Sections: packing and joint solve times on random instances (one CP-SAT worker, seed 0),
the largest sizes proven optimal within 10 s, a certified interval for every (layer,
node) row of the traces, and per-layer intervals against which the reference and the
baseline are scored. Nothing here is asserted; the tests check correctness.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from impl.balancer import balance
from oracle.cpsat import SolverSettings
from oracle.joint import solve_joint
from oracle.packing import solve_packing
from oracle.pipeline import certify_layer, certify_row, layer_lower_bound
from oracle.result import SolveResult, Status
from properties.distribute import Backend, Inline, run_jobs
from properties.progress import progress
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.objectives import peak_gpu_load
from spec.problem import BalancingProblem
from studies.stage_quality import stage_quality


@dataclass(frozen=True)
class SolveTimes:
    family: str
    instances: int
    proven: int
    median_s: float
    max_s: float


def time_family(family: str, results: Sequence[SolveResult]) -> SolveTimes:
    times = [r.wall_time_s for r in results]
    proven = sum(r.status in (Status.OPTIMAL, Status.INFEASIBLE) for r in results)
    return SolveTimes(family, len(results), proven, statistics.median(times), max(times))


def random_weights(rng: random.Random, count: int, top: int = 2**24) -> list[int]:
    return [rng.randint(0, top) for _ in range(count)]


def solver_families(quick: bool) -> list[SolveTimes]:
    rng = random.Random(0)
    repeats = 3 if quick else 10
    settings = SolverSettings(time_limit_s=10.0)
    families = []
    small = [
        solve_packing(random_weights(rng, n), g, settings=settings)
        for n, g in [(8, 2), (8, 4), (12, 3), (12, 4), (16, 2), (16, 4), (16, 8)]
        for _ in range(repeats)
    ]
    families.append(time_family("packing <= 16 items, <= 8 packs, w <= 2^24", small))
    twenty = [solve_packing(random_weights(rng, 20), 4, settings=settings) for _ in range(repeats)]
    families.append(time_family("packing 20 items, 4 packs, w <= 2^24", twenty))
    labelled = [
        solve_packing(random_weights(rng, 16), 4, [rng.randint(0, 7) for _ in range(16)], settings)
        for _ in range(repeats)
    ]
    families.append(time_family("packing 16 items, 4 packs, labels", labelled))
    joint = [
        solve_joint(random_weights(rng, n, 2**20), slots, g, distinct, settings)
        for n, slots, g in [(10, 12, 4), (8, 12, 4), (10, 12, 3), (6, 12, 4)]
        for distinct in (False, True)
        for _ in range(max(1, repeats // 2))
    ]
    families.append(time_family("joint <= 10 experts, 12 slots, <= 4 packs", joint))
    return families


def largest_proven(quick: bool) -> dict[str, int]:
    """The largest size at which every one of 3 random instances is proven in 10 s."""
    rng = random.Random(1)
    settings = SolverSettings(time_limit_s=10.0)
    found = {}
    sizes = [16, 20, 24, 28, 32, 40, 48] if not quick else [16, 20]
    best = 0
    for n in sizes:
        if all(
            solve_packing(random_weights(rng, n), 4, settings=settings).status is Status.OPTIMAL
            for _ in range(3)
        ):
            best = n
        else:
            break
    found["packing items on 4 packs"] = best
    best = 0
    for n in [6, 8, 10, 12, 14, 16] if not quick else [6, 8, 10]:
        if all(
            solve_joint(
                random_weights(rng, n, 2**20), n + 4 + (-(n + 4)) % 4, 4, settings=settings
            ).status
            is Status.OPTIMAL
            for _ in range(3)
        ):
            best = n
        else:
            break
    found["joint experts on 4 packs (slots = experts + 4, rounded up to 4)"] = best
    return found


def node_blocks(problem: BalancingProblem, phy2log_row: np.ndarray) -> list[tuple[int, ...]]:
    """The groups each node holds in a placement (the split it used)."""
    blocks = []
    for node in range(problem.packing_nodes):
        slots = phy2log_row[node * problem.slots_per_node : (node + 1) * problem.slots_per_node]
        blocks.append(tuple(sorted({int(e) // problem.group_size for e in slots})))
    return blocks


@dataclass(frozen=True)
class TraceScore:
    trace: str
    cluster: str  # "replicas,groups,nodes,gpus"
    rows: int
    rows_within_target: int
    max_row_width: float
    max_row_seconds: float
    mean_layer_width: float
    refined_gap_to_bound: float
    baseline_gap_to_bound: float
    refined_gap_to_best_known: float
    seconds: float


def score_trace(
    name: str,
    loads: np.ndarray,
    layers: int | None,
    cluster: tuple[int, int, int, int] = TRACE_CLUSTER,
) -> TraceScore:
    problem = BalancingProblem(loads if layers is None else loads[:layers], *cluster)
    start = time.perf_counter()
    refined = balance(problem, fast=True)
    base = balance(problem, variant="baseline", fast=True)
    refined_peak = peak_gpu_load(problem.loads, refined.phy2log, refined.logcnt, problem.num_gpus)
    base_peak = peak_gpu_load(problem.loads, base.phy2log, base.logcnt, problem.num_gpus)
    widths, row_seconds, layer_widths = [], [], []
    refined_gaps, base_gaps, refined_best_gaps = [], [], []
    for layer in range(problem.num_layers):
        split = node_blocks(problem, refined.phy2log[layer])
        for block in split:
            experts = [g * problem.group_size + i for g in block for i in range(problem.group_size)]
            row = certify_row(
                [
                    int(x) if float(x).is_integer() else float(x)
                    for x in problem.loads[layer, experts]
                ],
                problem.slots_per_node,
                problem.gpus_per_node,
            )
            assert row.gap is not None
            widths.append(float(row.gap / row.bound) if row.bound else 0.0)
            row_seconds.append(row.wall_time_s)
        lower = layer_lower_bound(problem, layer)
        certified = certify_layer(problem, layer, split)
        upper = min(
            certified.result.objective or Fraction(10**30),
            Fraction(float(refined_peak[layer])),
            Fraction(float(base_peak[layer])),
        )
        if lower > 0:
            layer_widths.append(float((upper - lower) / lower))
            refined_gaps.append(float(refined_peak[layer]) / float(lower) - 1)
            base_gaps.append(float(base_peak[layer]) / float(lower) - 1)
            refined_best_gaps.append(float(refined_peak[layer]) / float(upper) - 1)
    return TraceScore(
        trace=name,
        cluster=",".join(map(str, cluster)),
        rows=len(widths),
        rows_within_target=sum(w <= 1e-3 for w in widths),
        max_row_width=max(widths),
        max_row_seconds=max(row_seconds),
        mean_layer_width=statistics.fmean(layer_widths) if layer_widths else 0.0,
        refined_gap_to_bound=statistics.fmean(refined_gaps) if refined_gaps else 0.0,
        baseline_gap_to_bound=statistics.fmean(base_gaps) if base_gaps else 0.0,
        refined_gap_to_best_known=statistics.fmean(refined_best_gaps) if refined_best_gaps else 0.0,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class SweepJob:
    """One (trace, cluster) cell of a certification sweep; the loads travel with it."""

    trace: str
    loads: np.ndarray
    cluster: tuple[int, int, int, int]
    layers: int | None


def certify_job(job: SweepJob) -> TraceScore:
    return score_trace(job.trace, job.loads, job.layers, job.cluster)


@dataclass(frozen=True)
class SweepCell:
    job: SweepJob
    score: TraceScore | None
    error: str  # why the cell could not be certified (a worker lost too often)


def certification_sweep(
    workloads: Sequence[tuple[str, np.ndarray]],
    clusters: Sequence[tuple[int, int, int, int]],
    layers: int | None,
    backend: Backend,
) -> list[SweepCell]:
    """Certify every trace at every cluster shape, the cells spread over ``backend``
    (``properties.distribute``); the cells come back in trace-major order."""
    jobs = [
        SweepJob(name, loads, cluster, layers) for name, loads in workloads for cluster in clusters
    ]
    found = {
        id(outcome.job): SweepCell(outcome.job, outcome.value, outcome.error)
        for outcome in progress(run_jobs(certify_job, jobs, backend), "certify", len(jobs))
    }
    return [found[id(job)] for job in jobs]


def parse_clusters(texts: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """``R,G,N,P`` strings as cluster shapes, each a valid one for the traces."""
    clusters = []
    for text in texts:
        parts = text.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--clusters: {text!r} is not replicas,groups,nodes,gpus")
        replicas, groups, nodes, gpus = (int(p) for p in parts)
        BalancingProblem(np.ones((1, 256)), replicas, groups, nodes, gpus)  # checks the shape
        clusters.append((replicas, groups, nodes, gpus))
    return clusters


def run_oracle_benchmark(
    data: str | None,
    quick: bool,
    json_path: str | None,
    clusters: Sequence[tuple[int, int, int, int]] = (TRACE_CLUSTER,),
    backend: Backend | None = None,
) -> int:
    workloads, note = default_workloads(data)
    print(f"eplb-spec oracle benchmark ({note}); one CP-SAT worker, seed 0")
    families = solver_families(quick)
    heading = "instances (proven: optimal or infeasible)"
    print(f"\n{heading:<48}{'n':>4}{'proven':>8}{'median s':>10}{'max s':>9}")
    for f in families:
        print(f"{f.family:<48}{f.instances:>4}{f.proven:>8}{f.median_s:>10.3f}{f.max_s:>9.3f}")
    largest = largest_proven(quick)
    print("\nlargest size with 3 of 3 random instances proven optimal within 10 s:")
    for what, size in largest.items():
        print(f"  {what}: {size}")

    quality = stage_quality(40 if quick else 300)
    print(
        f"\nstages of the reference on {quality.rows} random small rows (2-8 experts, 4-12 "
        f"slots, 2-4 GPUs), against their exact optima:"
        f"\n  water-filling at the replication optimum: {quality.replication_at_optimum}"
        f"\n  diverse greedy vs optimal packing of the same replicas: mean gap "
        f"{quality.greedy_mean_gap:.2%}, max {quality.greedy_max_gap:.2%}"
        f"\n  after refinement B: mean gap {quality.refined_mean_gap:.2%}, max "
        f"{quality.refined_max_gap:.2%}"
        f"\n  whole row vs the joint optimum: mean gap {quality.row_mean_gap_to_joint:.2%}, max "
        f"{quality.row_max_gap_to_joint:.2%}"
        f"\n  refinement B fired on {quality.b_fired} rows; it put two replicas of one expert "
        f"on a GPU where the greedy had not on {quality.b_added_duplicates} of them"
    )

    chosen = workloads[:2] if quick else workloads
    layers = 8 if quick else None
    scope = "first 8 layers of 2 traces" if quick else "all layers"
    where = backend.description if backend is not None else "in this process"
    shapes = " ".join(",".join(map(str, c)) for c in clusters)
    print(
        f"\ncertified intervals at (replicas,groups,nodes,gpus) {shapes} ({scope}; {where}):"
        "\n  row: one node's experts (the reference's split), interval width / lower bound"
        "\n  layer: [min over all group splits of the node bounds, best placement known]"
    )
    print(
        f"{'trace':<24}{'cluster':<14}{'rows':>6}{'<=0.1%':>8}{'max row':>9}{'max row s':>10}"
        f"{'layer w':>9}{'ref gap':>10}{'base gap':>10}{'s':>7}"
    )
    cells = certification_sweep(
        [(w.name, w.loads) for w in chosen], clusters, layers, backend or Inline()
    )
    scores = []
    for cell in cells:
        score = cell.score
        if score is None:
            shape = ",".join(map(str, cell.job.cluster))
            print(f"{cell.job.trace:<24}{shape:<14}not certified: {cell.error}")
            continue
        scores.append(score)
        print(
            f"{score.trace:<24}{score.cluster:<14}{score.rows:>6}{score.rows_within_target:>8}"
            f"{score.max_row_width:>9.3%}{score.max_row_seconds:>10.3f}{score.mean_layer_width:>9.2%}"
            f"{score.refined_gap_to_bound:>10.2%}{score.baseline_gap_to_bound:>10.2%}{score.seconds:>7.1f}"
        )
    print(
        "refined/base gap: mean over layers of peak / lower bound - 1 (an upper bound on the "
        "true gap to the optimum)."
    )
    if json_path:
        document: dict[str, Any] = {
            "source": note,
            "families": [asdict(f) for f in families],
            "largest_proven": largest,
            "stage_quality": asdict(quality),
            "traces": [asdict(s) for s in scores],
            "not_certified": [
                {"trace": c.job.trace, "cluster": list(c.job.cluster), "error": c.error}
                for c in cells
                if c.score is None
            ],
        }
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    return 0
