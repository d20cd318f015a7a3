"""The figures, read back through matplotlib's objects (bars, lines, labels), against
numbers computed here independently; the message when matplotlib is missing; the plot
commands."""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from eplb_spec.cli import main
from impl.balancer import BalanceResult, balance
from oracle import pipeline
from oracle.pipeline import layer_lower_bound
from properties import workloads
from properties.workloads import TRACE_CLUSTER, generated_loads
from spec.objectives import balancedness, gpu_loads, gpus_with_duplicate_replicas, peak_gpu_load
from spec.problem import BalancingProblem
from studies import plots

README_ROW = [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86]
# Found by a search: refinement B puts two replicas of one expert on one GPU, and the
# baseline's packing does so on two GPUs (of 8).
DUPLICATES_ROW = [121, 7396, 64, 9604, 6724, 9025, 1296, 196, 2601, 9409, 1296, 7744]
LAYER_CASES = [
    (BalancingProblem([README_ROW, DUPLICATES_ROW], 16, 4, 2, 8), 1),
    (BalancingProblem([README_ROW, DUPLICATES_ROW], 16, 4, 2, 8), 0),
    (BalancingProblem([[7921, 8464, 676, 36]], 12, 1, 2, 4), 0),  # global policy
]


def bars(axes: Axes) -> list[Rectangle]:
    return [p for p in axes.patches if isinstance(p, Rectangle)]


def heights(axes: Axes) -> list[float]:
    return [bar.get_height() for bar in bars(axes)]


def hatched(axes: Axes) -> list[bool]:
    return [bool(bar.get_hatch()) for bar in bars(axes)]


def line(axes: Axes, label: str) -> Line2D:
    found = [item for item in axes.get_lines() if item.get_label() == label]
    assert len(found) == 1, [item.get_label() for item in axes.get_lines()]
    return found[0]


def level(axes: Axes, label: str) -> float:
    """The height of a horizontal line across the axes."""
    ys = np.asarray(line(axes, label).get_ydata(), dtype=float)
    assert np.all(ys == ys[0])
    return float(ys[0])


def duplicated_gpus(phy2log_row: np.ndarray, num_gpus: int) -> list[bool]:
    per_gpu = phy2log_row.reshape(num_gpus, -1)
    return [len(set(slots.tolist())) < len(slots) for slots in per_gpu]


def node_shares(problem: BalancingProblem, final_loads: np.ndarray) -> list[float]:
    """Each node's load over its GPUs, from the final placement's GPU loads."""
    gpus = problem.gpus_per_node
    return [
        float(final_loads[(g // gpus) * gpus : (g // gpus + 1) * gpus].sum()) / gpus
        for g in range(problem.num_gpus)
    ]


def heaviest_replicas(problem: BalancingProblem, result: BalanceResult, layer: int) -> list[float]:
    """Per node, the heaviest single replica of the experts it holds."""
    slots = problem.slots_per_node
    row, counts = result.phy2log[layer], result.logcnt[layer]
    return [
        max(
            float(problem.loads[layer, e]) / int(counts[e])
            for e in row[n * slots : (n + 1) * slots]
        )
        for n in range(problem.packing_nodes)
    ]


@pytest.mark.parametrize(("problem", "layer"), LAYER_CASES)
def test_the_layer_figure_draws_each_step_of_both_balancers(
    problem: BalancingProblem, layer: int
) -> None:
    figure = plots.layer_stages_figure(problem, layer, name="case")
    grid = figure.axes
    assert len(grid) == 8
    num_gpus = problem.num_gpus
    lower = float(layer_lower_bound(problem, layer))
    mean = float(problem.loads[layer].sum()) / num_gpus
    baseline = balance(problem, variant="baseline")
    rows = [
        ("reference", "refined", balance(problem, refine_b=False), balance(problem)),
        ("baseline", "baseline", baseline, baseline),
    ]
    seen_duplicates = 0
    for index, (who, variant, packed, final) in enumerate(rows):
        axes = grid[4 * index : 4 * index + 4]
        final_loads = gpu_loads(problem.loads, final.phy2log, final.logcnt, num_gpus)[layer]
        packed_loads = gpu_loads(problem.loads, packed.phy2log, packed.logcnt, num_gpus)[layer]
        shares = node_shares(problem, final_loads)
        assert heights(axes[0]) == pytest.approx(shares, rel=1e-12)
        assert heights(axes[1]) == pytest.approx(shares, rel=1e-12)
        assert heights(axes[2]) == pytest.approx(packed_loads.tolist(), rel=1e-12)
        assert heights(axes[3]) == pytest.approx(final_loads.tolist(), rel=1e-12)

        (segments,) = [c for c in axes[1].collections if c.get_label() == plots.HEAVIEST_LABEL]
        assert isinstance(segments, LineCollection)
        drawn = [float(s[0][1]) for s in segments.get_segments()]
        assert drawn == pytest.approx(heaviest_replicas(problem, final, layer), rel=1e-12)
        assert not [c for c in axes[2].collections if c.get_label() == plots.HEAVIEST_LABEL]

        assert hatched(axes[0]) == hatched(axes[1]) == [False] * num_gpus
        for stage, placement in ((axes[2], packed), (axes[3], final)):
            expected = duplicated_gpus(placement.phy2log[layer], num_gpus)
            assert hatched(stage) == expected
            count = int(gpus_with_duplicate_replicas(placement.phy2log, num_gpus)[layer])
            assert sum(expected) == count
            seen_duplicates += count

        for stage in axes:
            assert level(stage, plots.LOWER_BOUND_LABEL) == lower
            assert level(stage, plots.MEAN_LABEL) == pytest.approx(mean, rel=1e-12)
        assert "groups to nodes" in axes[0].get_title()
        assert ("water-filling" if variant == "refined" else "greedy replication") in axes[
            1
        ].get_title()
        assert ("diverse greedy" if variant == "refined" else "balanced packing") in axes[
            2
        ].get_title()
        assert ("refinement B (final)" if variant == "refined" else "no refinement B") in axes[
            3
        ].get_title()
        peak = float(final_loads.max())
        assert f"peak = {peak / lower:.4f} x bound" in axes[3].get_title()
        assert who in axes[0].get_ylabel()
        assert "GPU load" in axes[0].get_ylabel()
    assert f"case, layer {layer}:" in figure.get_suptitle()
    assert problem.policy.value in figure.get_suptitle()
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert plots.LOWER_BOUND_LABEL in legend
    assert plots.MEAN_LABEL in legend
    assert any(text.startswith(plots.DUPLICATE_LABEL) for text in legend)
    if (problem.num_experts, layer) != (12, 0):
        assert seen_duplicates > 0, "this case is meant to show hatched bars"


def test_the_layer_figure_rejects_a_layer_out_of_range() -> None:
    problem, _ = LAYER_CASES[0]
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\), got 2"):
        plots.layer_stages_figure(problem, 2)


def reference_split(problem: BalancingProblem, row: np.ndarray) -> list[tuple[int, ...]]:
    slots = problem.slots_per_node
    return [
        tuple(sorted({int(e) // problem.group_size for e in row[n * slots : (n + 1) * slots]}))
        for n in range(problem.packing_nodes)
    ]


def test_the_trace_figure_draws_peak_over_bound_and_the_certified_interval_per_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = generated_loads(seed=3, num_layers=3)
    certified: dict[int, Any] = {}
    certify = pipeline.certify_layer

    def recording(
        problem: BalancingProblem, layer: int, split: Sequence[Sequence[int]] | None = None
    ) -> pipeline.LayerAnswer:
        answer = certify(problem, layer, split)
        certified[layer] = (split, answer.result)
        return answer

    monkeypatch.setattr(pipeline, "certify_layer", recording)
    layers = [0, 2]
    figure = plots.trace_figure(loads, TRACE_CLUSTER, layers=layers, name="gen-3")
    (axes,) = figure.axes

    full = BalancingProblem(loads, *TRACE_CLUSTER)
    lower = [float(layer_lower_bound(full, layer)) for layer in layers]
    shown = BalancingProblem(loads[layers], *TRACE_CLUSTER)
    for label_start, variant in (("reference", "refined"), ("baseline", "baseline")):
        result = balance(full, variant=variant)
        peaks = peak_gpu_load(full.loads, result.phy2log, result.logcnt, full.num_gpus)
        (series,) = [
            item for item in axes.get_lines() if str(item.get_label()).startswith(label_start)
        ]
        drawn_x, drawn_y = data_of(series)
        assert drawn_x == layers
        expected = [float(peaks[layer]) / bound for layer, bound in zip(layers, lower, strict=True)]
        assert drawn_y == pytest.approx(expected, rel=1e-12)
        part = balance(shown, variant=variant)
        score = balancedness(gpu_loads(shown.loads, part.phy2log, part.logcnt, shown.num_gpus))
        assert f"balancedness {score:.4f}" in str(series.get_label())

    reference = balance(full)
    band = bars(axes)
    assert [bar.get_x() + bar.get_width() / 2 for bar in band] == pytest.approx(layers)
    for row, (layer, bar) in enumerate(zip(layers, band, strict=True)):
        split, answer = certified[row]
        assert [tuple(b) for b in split] == reference_split(full, reference.phy2log[layer])
        assert float(answer.bound) == lower[row]
        assert bar.get_y() == 1.0
        assert bar.get_y() + bar.get_height() == pytest.approx(
            float(answer.objective) / float(answer.bound), rel=1e-12
        )
    assert level(axes, plots.LOWER_BOUND_LABEL + " = 1") == 1.0
    assert axes.get_ylabel() == plots.TRACE_Y_LABEL
    assert "layer" in axes.get_xlabel()
    assert "gen-3" in axes.get_title()
    assert "(288, 8, 4, 32)" in axes.get_title()


def write_trace(folder: Path, name: str, seed: int, layers: int = 2) -> np.ndarray:
    loads = generated_loads(seed=seed, num_layers=layers)
    rows = [[0.0] * 256, *loads.tolist()]  # a leading dense layer, dropped on load
    (folder / f"{name}.json").write_text(json.dumps({"logical_count": rows}))
    return loads


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_trace(folder, "tiny_a", seed=1)
    write_trace(folder, "tiny_b", seed=2)
    return folder


def gate_report(traces: Sequence[str]) -> dict[str, Any]:
    gaps = [
        {"peak": 5.0, "optimum": "4", "relative": 0.25},
        {"peak": 3.0, "optimum": "3", "relative": 0.0},
        {"peak": 11.0, "optimum": "10", "relative": 0.1},
    ]
    return {
        "format": 2,
        "target": "my_engine:rebalance",
        "verdict": "fail",
        "header": {"trace_cluster": list(TRACE_CLUSTER), "budget": "quick {...}"},
        "findings": [{"check": "contract"}],
        "checks": {},
        "optimality": {"layers_compared": 3, "at_optimum": 1, "max_gap": 0.25, "gaps": gaps},
        "traces": [
            {
                "trace": name,
                "generated": False,
                "balancedness": 0.5 + 0.1 * i,
                "mean_peak_over_lower_bound": 1.2 + 0.1 * i,
                "max_peak_over_lower_bound": 1.5 + 0.1 * i,
                "gpus_with_duplicate_replicas": 0,
                "seconds_per_call": 0.1,
            }
            for i, name in enumerate(traces)
        ],
    }


def series(axes: Axes, label: str) -> tuple[list[float], list[float]]:
    return data_of(line(axes, label))


def data_of(drawn: Line2D) -> tuple[list[float], list[float]]:
    x = np.asarray(drawn.get_xdata(), dtype=float).tolist()
    y = np.asarray(drawn.get_ydata(), dtype=float).tolist()
    return x, y


def test_the_gate_figure_draws_the_reports_gaps_and_traces_beside_the_reference(
    data: Path,
) -> None:
    report = gate_report(["tiny_a", "tiny_b", "not_in_data"])
    figure = plots.gate_figure(report, data=str(data), fast=False)
    gaps_axes, balance_axes, bound_axes = figure.axes[:3]
    assert heights(gaps_axes) == pytest.approx([25.0, 10.0, 0.0])
    assert gaps_axes.get_ylabel() == plots.GAP_Y_LABEL
    assert "3 tiny layers" in gaps_axes.get_title()
    assert "1 at the optimum" in gaps_axes.get_title()

    target = "target my_engine:rebalance"
    traces = report["traces"]
    assert series(balance_axes, target) == ([t["balancedness"] for t in traces], [0, 1, 2])
    assert series(bound_axes, target + ": mean") == (
        [t["mean_peak_over_lower_bound"] for t in traces],
        [0, 1, 2],
    )
    assert series(bound_axes, target + ": max")[0] == [
        t["max_peak_over_lower_bound"] for t in traces
    ]
    expected: dict[str, list[float]] = {"balancedness": [], "mean": [], "max": []}
    for name in ("tiny_a", "tiny_b"):
        problem = BalancingProblem(
            json_loads(data / f"{name}.json"), *TRACE_CLUSTER
        )  # the reference, scored here from scratch
        result = balance(problem)
        loads = gpu_loads(problem.loads, result.phy2log, result.logcnt, problem.num_gpus)
        ratios = [
            float(loads[layer].max()) / float(layer_lower_bound(problem, layer))
            for layer in range(problem.num_layers)
        ]
        expected["balancedness"].append(balancedness(loads))
        expected["mean"].append(float(np.mean(ratios)))
        expected["max"].append(max(ratios))
    drawn = series(balance_axes, "reference (refined)")
    assert drawn[1] == [0, 1]  # the trace missing from the data has no reference
    assert drawn[0] == pytest.approx(expected["balancedness"], rel=1e-12)
    assert series(bound_axes, "reference (refined): mean")[0] == pytest.approx(expected["mean"])
    assert series(bound_axes, "reference (refined): max")[0] == pytest.approx(expected["max"])
    assert [t.get_text() for t in balance_axes.get_yticklabels()] == [
        "tiny_a",
        "tiny_b",
        "not_in_data",
    ]
    assert "not_in_data" in bound_axes.get_title()
    assert balance_axes.get_xlabel() == plots.BALANCEDNESS_LABEL
    assert bound_axes.get_xlabel() == plots.PEAK_BOUND_LABEL
    assert "my_engine:rebalance: FAIL" in figure.get_suptitle()


def json_loads(path: Path) -> np.ndarray:
    return np.asarray(json.loads(path.read_text())["logical_count"][1:], dtype=float)


def test_the_gate_figure_says_what_a_report_lacks() -> None:
    report = gate_report([])
    del report["optimality"]["gaps"]
    report["checks"] = {"traces": "skipped: outside the target's domain"}
    figure = plots.gate_figure(report)
    texts = [t.get_text() for axes in figure.axes for t in axes.texts]
    assert "the report lists no per-layer gaps (an older report)" in texts
    assert "traces not scored: skipped: outside the target's domain" in texts
    for broken, message in (
        ({"format": 1}, "not a gate report of format 2"),
        ({**report, "verdict": "incomplete"}, "did not finish"),
    ):
        with pytest.raises(ValueError, match=message):
            plots.gate_figure(broken)


def hide_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def without_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)


def test_without_matplotlib_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path
) -> None:
    hide_matplotlib(monkeypatch)
    problem, layer = LAYER_CASES[0]
    with pytest.raises(plots.PlottingUnavailable, match=re.escape("pip install 'eplb-spec[plot]'")):
        plots.layer_stages_figure(problem, layer)
    for command in (
        ["plot", "trace", "--data", str(data), "--out", str(tmp_path / "a")],
        ["report", "--data", str(data), "--plot", str(tmp_path / "b")],
        ["gate", "--plot", str(tmp_path / "c")],
    ):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # refused before any work
        assert captured.err.count("\n") == 1
        assert "pip install 'eplb-spec[plot]'" in captured.err
    assert not (tmp_path / "a").exists()


def assert_figure_files(folder: Path, stem: str) -> None:
    assert (folder / f"{stem}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in (folder / f"{stem}.svg").read_text()


def test_plot_commands_write_png_and_svg(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures"
    assert main(["plot", "layer", "--data", str(data), "--trace", "tiny_b", "--layer", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    assert_figure_files(out, "layer-tiny_b-1")
    assert main(["plot", "trace", "--data", str(data), "--layers", "1", "--out", str(out)]) == 0
    assert_figure_files(out, "trace-tiny_a")
    report = tmp_path / "run.json"
    report.write_text(json.dumps(gate_report(["tiny_a"])))
    assert main(["plot", "gate", str(report), "--data", str(data), "--out", str(out)]) == 0
    assert_figure_files(out, "gate-run")
    printed = capsys.readouterr().out
    assert "2 real traces from" in printed
    assert f"wrote {out / 'gate-run.svg'}" in printed


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["plot", "layer", "--trace", "nope"], "unknown trace 'nope'; known: tiny_a, tiny_b"),
        (["plot", "layer", "--layer", "2"], r"--layer must be in [0, 2) for trace tiny_a, got 2"),
        (["plot", "trace", "--layers", "0"], "--layers must be at least 1, got 0"),
        (["plot", "trace", "--gpus", "7"], "num_replicas (288) must be divisible by num_gpus (7)"),
        (["plot", "gate", "missing.json"], "cannot read the gate report missing.json"),
        (["report", "--plot", "FILE"], "--plot FILE: cannot create the folder"),
        (["gate", "--same-as", "refined", "--plot", "OUT"], "does not apply to --same-as"),
    ],
)
def test_plot_commands_reject_bad_arguments_in_one_line(
    arguments: list[str],
    message: str,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("FILE").write_text("a file, not a folder")
    extra = ["--out", "OUT"] if arguments[0] == "plot" else []
    assert main([*arguments, *extra, "--data", str(data)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" or "real traces" in captured.out
    assert captured.err.count("\n") == 1
    assert message in captured.err


def test_asked_for_generated_loads_the_plots_use_the_stand_in_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(workloads.DATA_ENV, raising=False)
    assert (
        main(["plot", "trace", "--layers", "1", "--out", str(tmp_path), "--data", "generated"]) == 0
    )
    assert "GENERATED workload" in capsys.readouterr().out
    assert_figure_files(tmp_path, "trace-generated-lognormal-seed0")
    assert "(GENERATED stand-in)" in (tmp_path / "trace-generated-lognormal-seed0.svg").read_text()


def test_plot_gate_rejects_an_unfinished_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "run.json"
    report.write_text(json.dumps({"format": 2, "target": "t", "verdict": "incomplete"}))
    assert main(["plot", "gate", str(report), "--out", str(tmp_path)]) == 2
    assert "the run did not finish" in capsys.readouterr().err


def test_report_and_gate_write_the_figures_of_their_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = BalancingProblem(json_loads(data / "tiny_a.json"), *TRACE_CLUSTER)
    result = balance(problem)
    peaks = peak_gpu_load(problem.loads, result.phy2log, result.logcnt, problem.num_gpus)
    worst = int(
        np.argmax([peaks[layer] / float(layer_lower_bound(problem, layer)) for layer in (0, 1)])
    )
    out = tmp_path / "figures"
    assert main(["report", "--data", str(data), "--plot", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"layer-tiny_a-{worst}.png",
        f"layer-tiny_a-{worst}.svg",
        "trace-tiny_a.png",
        "trace-tiny_a.svg",
    ]
    assert_figure_files(out, f"layer-tiny_a-{worst}")
    assert_figure_files(out, "trace-tiny_a")
    report = tmp_path / "gate.json"
    command = ["gate", "--quick", "--checks", "traces", "--data", str(data)]
    assert main([*command, "--json", str(report), "--plot", str(out)]) == 0
    assert_figure_files(out, "gate-gate")
    assert json.loads(report.read_text())["verdict"] == "pass"
    assert "wrote" in capsys.readouterr().out
