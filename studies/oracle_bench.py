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

from impl.balancer import BalanceResult, balance
from oracle.certify import certify_layer_slots
from oracle.cpsat import SolverSettings
from oracle.joint import solve_joint
from oracle.packing import solve_packing
from oracle.pipeline import layer_weights, verified_peak
from oracle.result import SolveResult, Status
from properties.distribute import Backend, Inline, run_jobs
from properties.progress import progress
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.objectives import peak_gpu_load
from spec.problem import BalancingProblem
from studies.stage_quality import StageQuality, stage_quality


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
    """One trace at one cluster shape: certified layer intervals ``[lower, upper]``
    (``oracle.certify.certify_layer_slots``, hinted with the joint balancer's placement;
    ``upper`` also at most the reference's and the baseline's peaks) and each balancer's
    mean gap above ``lower`` (an upper bound on its gap to the optimum)."""

    trace: str
    cluster: str  # "replicas,groups,nodes,gpus"
    layers: int
    layers_within_target: int  # interval width <= 0.1 % of the lower bound
    layers_optimal: int  # the interval is closed: the optimum is known
    median_layer_width: float
    mean_layer_width: float
    max_layer_width: float
    max_layer_seconds: float
    refined_gap_to_bound: float
    baseline_gap_to_bound: float
    joint_gap_to_bound: float
    refined_gap_to_best_known: float
    joint_ms: float  # the joint balancer's fast path on the whole trace (best of 3)
    seconds: float


# Each layer's certificate: its time limit, and the CP-SAT packing solves per node.
LAYER_TIME_LIMIT_S = 10.0
PACKING_SOLVES = 2


def timed_joint(problem: BalancingProblem) -> tuple[BalanceResult, float]:
    """The joint balancer's fast path, and its best time of 3 calls (after a warm-up)."""
    result = balance(problem, variant="joint", fast=True)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        balance(problem, variant="joint", fast=True)
        times.append(time.perf_counter() - start)
    return result, min(times)


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
    joint, joint_seconds = timed_joint(problem)

    def peaks(result: BalanceResult) -> np.ndarray:
        return peak_gpu_load(problem.loads, result.phy2log, result.logcnt, problem.num_gpus)

    refined_peak, base_peak, joint_peak = peaks(refined), peaks(base), peaks(joint)
    settings = SolverSettings(time_limit_s=LAYER_TIME_LIMIT_S)
    widths, layer_seconds, optimal = [], [], 0
    refined_gaps, base_gaps, joint_gaps, refined_best_gaps = [], [], [], []
    for layer in range(problem.num_layers):
        answer = certify_layer_slots(
            problem, layer, joint.phy2log[layer].tolist(), settings, packing_solves=PACKING_SOLVES
        )
        result = answer.result
        layer_seconds.append(result.wall_time_s)
        lower = result.bound
        exact = layer_weights(problem, layer, None)
        upper = min(
            result.objective if result.objective is not None else Fraction(10**30),
            verified_peak(problem, layer, refined.phy2log[layer].tolist(), exact),
            verified_peak(problem, layer, base.phy2log[layer].tolist(), exact),
        )
        optimal += upper == lower
        if lower > 0:
            widths.append(float((upper - lower) / lower))
            refined_gaps.append(float(refined_peak[layer]) / float(lower) - 1)
            base_gaps.append(float(base_peak[layer]) / float(lower) - 1)
            joint_gaps.append(float(joint_peak[layer]) / float(lower) - 1)
            refined_best_gaps.append(float(refined_peak[layer]) / float(upper) - 1)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    return TraceScore(
        trace=name,
        cluster=",".join(map(str, cluster)),
        layers=problem.num_layers,
        layers_within_target=sum(w <= 1e-3 for w in widths),
        layers_optimal=optimal,
        median_layer_width=statistics.median(widths) if widths else 0.0,
        mean_layer_width=mean(widths),
        max_layer_width=max(widths, default=0.0),
        max_layer_seconds=max(layer_seconds, default=0.0),
        refined_gap_to_bound=mean(refined_gaps),
        baseline_gap_to_bound=mean(base_gaps),
        joint_gap_to_bound=mean(joint_gaps),
        refined_gap_to_best_known=mean(refined_best_gaps),
        joint_ms=joint_seconds * 1e3,
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


def solver_sections(quick: bool) -> tuple[list[SolveTimes], dict[str, int], StageQuality]:
    """Solve times, the largest sizes proven, and the reference's stages, printed."""
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

    return families, largest, quality


def run_oracle_benchmark(
    data: str | None,
    quick: bool,
    json_path: str | None,
    clusters: Sequence[tuple[int, int, int, int]] = (TRACE_CLUSTER,),
    backend: Backend | None = None,
    *,
    sweep_only: bool = False,
) -> int:
    workloads, note = default_workloads(data)
    print(f"eplb-spec oracle benchmark ({note}); one CP-SAT worker, seed 0")
    if sweep_only:
        families: list[SolveTimes] = []
        largest: dict[str, int] = {}
        quality = None
    else:
        families, largest, quality = solver_sections(quick)
    chosen = workloads[:2] if quick else workloads
    layers = 8 if quick else None
    scope = "first 8 layers of 2 traces" if quick else "all layers"
    where = backend.description if backend is not None else "in this process"
    shapes = " ".join(",".join(map(str, c)) for c in clusters)
    print(
        f"\ncertified layer intervals at (replicas,groups,nodes,gpus) {shapes} ({scope}; {where}):"
        "\n  [lower, upper]: lower = the least over group splits of the slot-aware node bounds"
        "\n  (oracle.certify), upper = the best placement known (joint balancer, reference,"
        f"\n  baseline, pairings and packings found); {LAYER_TIME_LIMIT_S:g} s per layer at most"
    )
    print(
        f"{'trace':<24}{'cluster':<14}{'layers':>7}{'<=0.1%':>7}{'closed':>7}{'med w':>8}"
        f"{'mean w':>8}{'max w':>8}{'ref gap':>9}{'base gap':>9}{'joint gap':>10}"
        f"{'ref>best':>9}{'joint ms':>9}{'s':>7}"
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
            f"{score.trace:<24}{score.cluster:<14}{score.layers:>7}{score.layers_within_target:>7}"
            f"{score.layers_optimal:>7}{score.median_layer_width:>8.2%}"
            f"{score.mean_layer_width:>8.2%}{score.max_layer_width:>8.2%}"
            f"{score.refined_gap_to_bound:>9.2%}{score.baseline_gap_to_bound:>9.2%}"
            f"{score.joint_gap_to_bound:>10.2%}{score.refined_gap_to_best_known:>9.2%}"
            f"{score.joint_ms:>9.1f}{score.seconds:>7.1f}"
        )
    print(
        "w: interval width over the lower bound; gap: mean over layers of peak / lower - 1 "
        "(an upper bound on the gap to the optimum); ref>best: the reference above the best "
        "placement known; closed: layers whose optimum is proven; joint ms: the joint "
        "balancer's fast path on the whole trace (best of 3)."
    )
    if json_path:
        document: dict[str, Any] = {
            "source": note,
            "families": [asdict(f) for f in families],
            "largest_proven": largest,
            "stage_quality": None if quality is None else asdict(quality),
            "traces": [asdict(s) for s in scores],
            "not_certified": [
                {"trace": c.job.trace, "cluster": list(c.job.cluster), "error": c.error}
                for c in cells
                if c.score is None
            ],
        }
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    return 0
