"""The study across cluster shapes and its figure (``eplb-spec plot shapes``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.lines import Line2D

from properties.workloads import Workload, generated_loads
from studies.shapes import shape_sweep, shapes_figure


def test_the_shape_sweep_scores_every_trace_at_every_shape_and_the_figure_draws_them() -> None:
    workloads = [
        Workload(f"generated-{seed}", generated_loads(seed=seed, num_layers=4), True)
        for seed in (1, 2)
    ]
    shapes = [(256, 8, 8, 256), (288, 8, 8, 144)]
    cells = shape_sweep(workloads, shapes, layer_step=2)
    assert [(c.job.trace, c.job.cluster) for c in cells] == [
        (w.name, s) for w in workloads for s in shapes
    ]
    scores = [c.score for c in cells if c.score is not None]
    assert len(scores) == 4
    for score in scores:
        assert score.layers == 2  # layers 0 and 2
        # never above the reference, and the interval is never wider than its gap
        assert 0 <= score.joint_gap_to_bound <= score.refined_gap_to_bound + 1e-12
        assert score.mean_layer_width <= score.joint_gap_to_bound + 1e-12
    one_slot = [s for s in scores if s.cluster == "256,8,8,256"]
    assert all(s.mean_layer_width == 0 for s in one_slot)  # water-filling is exact there
    figure = shapes_figure(scores, "test")
    axes = figure.axes[0]
    lines = [line for line in axes.get_lines() if isinstance(line, Line2D)]
    labelled = {str(line.get_label()) for line in lines}
    assert {"reference", "joint balancer"} <= labelled
    assert len(lines) == 4 * (len(scores) + 1)  # a dot per trace and shape, a line each


def test_the_shapes_command_refuses_a_bad_step(tmp_path: Path) -> None:
    from eplb_spec.cli import main

    assert main(["plot", "shapes", "--out", str(tmp_path), "--layer-step", "0"]) == 2
