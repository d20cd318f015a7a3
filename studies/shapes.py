"""The balancers across cluster shapes, 1 to 9 slots per GPU, against certified bounds.

For each shape the certification sweep of ``studies.oracle_bench`` (slot-aware layer
intervals, hinted with the joint balancer) runs on every ``layer_step``-th layer of
each trace; the figure shows, per shape, each balancer's mean peak above the certified
lower bound (one faint dot per trace, a line through the means over traces) and the
width of the certified interval (the optimum lies in it).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from properties.distribute import Backend, Inline
from properties.workloads import Workload
from studies.oracle_bench import SweepCell, TraceScore, certification_sweep

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (replicas, groups, nodes, gpus) with 1, 2, 3, 4, 6 and 9 slots per GPU.
SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (256, 8, 8, 256),
    (288, 8, 8, 144),
    (288, 8, 8, 96),
    (288, 8, 8, 72),
    (288, 8, 8, 48),
    (288, 8, 4, 32),
)
BALANCERS = (
    ("refined_gap_to_bound", "reference", "tab:blue", "o"),
    ("baseline_gap_to_bound", "baseline (DeepSeek-style)", "tab:orange", "s"),
    ("joint_gap_to_bound", "joint balancer", "tab:green", "^"),
    ("mean_layer_width", "certified interval width (the optimum lies within)", "black", "x"),
)


def shape_sweep(
    workloads: Sequence[Workload],
    shapes: Sequence[tuple[int, int, int, int]] = SHAPES,
    layer_step: int = 8,
    backend: Backend | None = None,
) -> list[SweepCell]:
    """Every trace (its layers ``0, step, 2 step, ...``) at every shape."""
    if layer_step < 1:
        raise ValueError(f"layer_step must be at least 1, got {layer_step}")
    sampled = [(w.name, w.loads[::layer_step]) for w in workloads]
    return certification_sweep(sampled, shapes, None, backend or Inline())


def shapes_figure(scores: Sequence[TraceScore], note: str = "") -> Figure:
    """Per shape (x: slots per GPU), each balancer's mean peak above the certified lower
    bound, per trace (dots) and over traces (lines), and the interval width."""
    from studies.plots import new_figure

    if not scores:
        raise ValueError("shapes_figure needs at least one score")
    figure = new_figure(9.0, 5.0)
    axes = figure.subplots()
    shapes = sorted({s.cluster for s in scores}, key=slots_per_gpu_of)
    positions = {cluster: index for index, cluster in enumerate(shapes)}
    for field, label, color, marker in BALANCERS:
        for score in scores:
            axes.plot(
                positions[score.cluster],
                100 * getattr(score, field),
                marker,
                color=color,
                alpha=0.25,
                markersize=4,
            )
        means = [
            100 * statistics.fmean(getattr(s, field) for s in scores if s.cluster == cluster)
            for cluster in shapes
        ]
        style = ":" if field == "mean_layer_width" else "-"
        axes.plot(range(len(shapes)), means, marker + style, color=color, label=label)
    axes.set_xticks(
        range(len(shapes)),
        [f"{slots_per_gpu_of(c)} slots/GPU\n({c})" for c in shapes],
        fontsize=8,
    )
    axes.set_ylabel("mean peak GPU load above the certified lower bound (%)")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, frameon=False)
    figure.suptitle(
        "balancers across cluster shapes (replicas, groups, nodes, GPUs), per trace"
        + (f"\n{note}" if note else ""),
        fontsize=10,
    )
    return figure


def slots_per_gpu_of(cluster: str) -> int:
    replicas, _, _, gpus = (int(x) for x in cluster.split(","))
    return replicas // gpus
