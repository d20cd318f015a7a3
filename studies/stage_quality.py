"""How far each stage of the reference is from its exact optimum, on random small rows.

A row is one node: ``n`` experts, ``S`` slots on ``G`` GPUs. For each row: the
water-filled counts against the exact replication optimum; the diverse greedy packing
and refinement B against the optimal packing of the same replicas; and the whole row
against the joint optimum (counts and placement chosen together). Seeded, so it repeats.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from fractions import Fraction

from impl.steps import layout_by_expert, pack_diverse, refine_swap, water_fill
from oracle.cpsat import SolverSettings
from oracle.joint import solve_joint
from oracle.packing import solve_packing
from oracle.replication import optimal_peak
from oracle.result import Status
from spec.refinements import duplicate_labels_added
from spec.solutions import heaviest_pack


@dataclass(frozen=True)
class StageQuality:
    rows: int
    replication_at_optimum: int
    greedy_mean_gap: float
    greedy_max_gap: float
    refined_mean_gap: float
    refined_max_gap: float
    row_mean_gap_to_joint: float
    row_max_gap_to_joint: float
    b_fired: int
    b_added_duplicates: int


def stage_quality(samples: int, seed: int = 0) -> StageQuality:
    rng = random.Random(seed)
    settings = SolverSettings(time_limit_s=10.0)
    greedy_gaps, refined_gaps, joint_gaps = [], [], []
    at_optimum = fired = duplicated = 0
    rows = 0
    while rows < samples:
        gpus = rng.randint(2, 4)
        slots = gpus * rng.randint(2, 3)
        n = rng.randint(2, min(8, slots))
        loads = [float(rng.randint(0, 100)) for _ in range(n)]
        counts = water_fill(loads, slots)
        exact = [Fraction(w) for w in loads]
        at_optimum += max(w / c for w, c in zip(exact, counts, strict=True)) == optimal_peak(
            exact, slots
        )
        labels = layout_by_expert(counts)
        weights = [loads[i] / counts[i] for i in labels]
        items = [exact[i] / counts[i] for i in labels]
        greedy = pack_diverse(weights, labels, gpus)
        refined = refine_swap(weights, greedy, gpus)
        best = solve_packing(items, gpus, settings=settings)
        joint = solve_joint(loads, slots, gpus, settings=settings)
        if best.status is not Status.OPTIMAL or joint.status is not Status.OPTIMAL:
            continue
        assert best.objective is not None
        assert joint.objective is not None
        rows += 1
        if best.objective == 0:
            continue
        greedy_peak = heaviest_pack(items, greedy.pack, gpus)
        refined_peak = heaviest_pack(items, refined.pack, gpus)
        greedy_gaps.append(float(greedy_peak / best.objective - 1))
        refined_gaps.append(float(refined_peak / best.objective - 1))
        joint_gaps.append(float(refined_peak / joint.objective - 1))
        if refined.pack != greedy.pack:
            fired += 1
            duplicated += duplicate_labels_added(labels, greedy.pack, refined.pack, gpus) > 0
    return StageQuality(
        rows=rows,
        replication_at_optimum=at_optimum,
        greedy_mean_gap=statistics.fmean(greedy_gaps),
        greedy_max_gap=max(greedy_gaps),
        refined_mean_gap=statistics.fmean(refined_gaps),
        refined_max_gap=max(refined_gaps),
        row_mean_gap_to_joint=statistics.fmean(joint_gaps),
        row_max_gap_to_joint=max(joint_gaps),
        b_fired=fired,
        b_added_duplicates=duplicated,
    )
