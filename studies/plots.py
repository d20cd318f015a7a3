"""Figures of what the balancers do: one layer stage by stage, a trace layer by layer, and
a gate report.

matplotlib is an optional extra (``pip install 'eplb-spec[plot]'``), imported only when a
figure is drawn. Figures are built with matplotlib's object API on the Agg canvas: nothing
here opens a window or changes pyplot's backend. Each ``*_figure`` function returns a
``matplotlib.figure.Figure`` (the tests read its bars and lines back); ``save_figure``
writes one as PNG and SVG. The numbers drawn come from ``impl.explain`` (the reference's
own intermediate decisions), ``spec.objectives`` and the oracle's certified bounds;
nothing here re-implements a step of the balancer.

The ``eplb-spec plot`` commands and the ``--plot DIR`` options of ``report`` and ``gate``
are wired here too (``add_plot_commands``, ``plot_main``, ``report_figures``,
``gate_with_figure``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from impl.balancer import Variant, balance
from impl.explain import NodeTrace, explain_layer
from properties.workloads import TRACE_CLUSTER, Workload, default_workloads
from spec.objectives import balancedness, gpu_loads, peak_gpu_load
from spec.problem import BalancingProblem

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'eplb-spec[plot]'"
DPI = 80  # modest: the committed PNGs stay small
REFERENCE_COLOR, BASELINE_COLOR, OPTIMUM_COLOR = "tab:blue", "tab:orange", "tab:green"
BOUND_STYLE: dict[str, Any] = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2, "zorder": 4}
MEAN_STYLE: dict[str, Any] = {"color": "black", "linestyle": ":", "linewidth": 1.4, "zorder": 4}
DUPLICATE_HATCH = "///"

LOWER_BOUND_LABEL = "certified lower bound on the optimum (oracle)"
MEAN_LABEL = "mean GPU load (perfect balance)"
HEAVIEST_LABEL = "heaviest single replica of the node (the largest piece to pack)"
DUPLICATE_LABEL = "GPU holding two replicas of one expert"


class PlottingUnavailable(ImportError):
    """matplotlib is not installed; the message names the command that installs it."""


def require_matplotlib() -> None:
    """Import matplotlib, or raise ``PlottingUnavailable`` saying how to install it."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError as error:
        raise PlottingUnavailable(
            f"the figures need matplotlib, which cannot be imported ({error}); "
            f"install it with: {INSTALL_HINT}"
        ) from None


def new_figure(width: float, height: float) -> Figure:
    """An empty figure on the Agg canvas (never a display, never pyplot's state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(
    figure: Figure, folder: Path, stem: str, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """Write ``folder/stem.png`` and ``folder/stem.svg`` (reproducibly: no date, no
    version stamp, fixed SVG ids) and return their paths."""
    from matplotlib import rc_context

    written = []
    for extension in formats:
        path = folder / f"{stem}.{extension}"
        metadata: dict[str, Any] = {"Software": None} if extension == "png" else {"Date": None}
        try:
            with rc_context({"svg.hashsalt": "eplb-spec", "svg.fonttype": "none"}):
                figure.savefig(path, format=extension, dpi=DPI, metadata=metadata)
        except OSError as error:
            raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
        written.append(path)
    return written


def ratio(value: float, bound: float) -> float:
    """``value / bound``; 1 for an all-zero layer (bound 0, and then every peak is 0)."""
    return value / bound if bound > 0 else 1.0


# --- one layer, stage by stage ------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """The per-GPU loads after one step (global GPU numbering).

    Before the replicas are packed (``placed`` False) a GPU's load is its node's load
    spread evenly over the node's GPUs. ``heaviest_replica[n]`` (replication stage only)
    is the heaviest single replica of node ``n``; ``duplicates[g]`` says GPU ``g`` holds
    two replicas of one expert (always False before packing).
    """

    title: str
    placed: bool
    loads: list[float]
    duplicates: list[bool]
    heaviest_replica: list[float] | None = None


@dataclass(frozen=True)
class LayerStages:
    variant: Variant
    label: str
    stages: list[Stage]


VARIANT_LABELS: dict[Variant, str] = {
    "refined": "reference (refined, both refinements)",
    "baseline": "baseline (DeepSeek-style)",
}


def packed_loads(node: NodeTrace, packing_pack: Sequence[int], gpus: int) -> list[float]:
    """The node's GPU loads for one packing of its replicas."""
    loads = [0.0] * gpus
    for weight, gpu in zip(node.weights, packing_pack, strict=True):
        loads[gpu] += weight
    return loads


def packed_duplicates(node: NodeTrace, packing_pack: Sequence[int], gpus: int) -> list[bool]:
    """Which of the node's GPUs hold two replicas of one expert in this packing."""
    seen: set[tuple[int, int]] = set()
    duplicated = [False] * gpus
    for label, gpu in zip(node.layout, packing_pack, strict=True):
        if (label, gpu) in seen:
            duplicated[gpu] = True
        seen.add((label, gpu))
    return duplicated


def layer_stages(problem: BalancingProblem, layer: int, variant: Variant) -> LayerStages:
    """The per-GPU loads after each step of ``variant`` on one layer, from
    ``impl.explain.explain_layer`` (the reference's own intermediate decisions)."""
    trace = explain_layer(problem, layer, variant=variant)
    gpus = problem.gpus_per_node
    node_load = [0.0] * problem.packing_nodes
    for group, home in enumerate(trace.group_packing.pack):
        node_load[home] += trace.group_loads[group]
    spread = [node_load[g // gpus] / gpus for g in range(problem.num_gpus)]
    heaviest = [max(w / c for w, c in zip(n.loads, n.counts, strict=True)) for n in trace.nodes]
    none = [False] * problem.num_gpus
    packed: list[float] = []
    packed_dup: list[bool] = []
    final: list[float] = []
    final_dup: list[bool] = []
    for node in trace.nodes:
        packed += packed_loads(node, node.packed.pack, gpus)
        packed_dup += packed_duplicates(node, node.packed.pack, gpus)
        final += packed_loads(node, node.packing.pack, gpus)
        final_dup += packed_duplicates(node, node.packing.pack, gpus)
    if variant == "refined":
        refined = [n.node for n in trace.nodes if n.counts_refined]
        moved = f" (A moved a replica on node {refined})" if refined else ""
        titles = (
            "1. groups to nodes",
            f"2. water-filling + refinement A{moved}",
            "3. diverse greedy packing",
            "4. refinement B (final)",
        )
    else:
        titles = (
            "1. groups to nodes",
            "2. greedy replication",
            "3. balanced packing",
            "4. final (no refinement B)",
        )
    return LayerStages(
        variant,
        VARIANT_LABELS[variant],
        [
            Stage(titles[0], False, spread, none),
            Stage(titles[1], False, spread, none, heaviest),
            Stage(titles[2], True, packed, packed_dup),
            Stage(titles[3], True, final, final_dup),
        ],
    )


def draw_stage(
    axes: Axes,
    problem: BalancingProblem,
    stage: Stage,
    color: str,
    lower: float,
    mean: float,
) -> None:
    from matplotlib.ticker import EngFormatter

    gpus = problem.gpus_per_node
    positions = list(range(problem.num_gpus))
    bars = axes.bar(
        positions,
        stage.loads,
        width=0.85,
        color=color,
        edgecolor="white",
        linewidth=0.3,
        label="GPU load",
    )
    for gpu, bar in enumerate(bars):
        bar.set_alpha(1.0 if (gpu // gpus) % 2 == 0 else 0.6)  # nodes alternate in shade
        if stage.duplicates[gpu]:
            bar.set_hatch(DUPLICATE_HATCH)
            bar.set_edgecolor("black")
    if stage.heaviest_replica is not None:
        axes.hlines(
            stage.heaviest_replica,
            [n * gpus - 0.45 for n in range(problem.packing_nodes)],
            [(n + 1) * gpus - 0.55 for n in range(problem.packing_nodes)],
            colors="black",
            linewidth=2.5,
            zorder=3,
            label=HEAVIEST_LABEL,
        )
    axes.axhline(lower, label=LOWER_BOUND_LABEL, **BOUND_STYLE)
    axes.axhline(mean, label=MEAN_LABEL, **MEAN_STYLE)
    what = "peak" if stage.placed else "heaviest node's share"
    axes.set_title(
        f"{stage.title}\n{what} = {ratio(max(stage.loads), lower):.4f} x bound", fontsize=9
    )
    axes.set_xticks(
        [n * gpus + (gpus - 1) / 2 for n in range(problem.packing_nodes)],
        [f"node {n}" for n in range(problem.packing_nodes)],
        fontsize=8,
    )
    axes.set_xlim(-0.6, problem.num_gpus - 0.4)
    axes.yaxis.set_major_formatter(EngFormatter())


def layer_stages_figure(problem: BalancingProblem, layer: int, *, name: str = "") -> Figure:
    """Per-GPU loads of one layer after each step, for the reference (``refined`` with
    both refinements, top row) and the baseline (bottom row).

    Step 1 (groups to nodes) and step 2 (replication) do not place replicas on GPUs yet:
    their bars are each node's load spread over its GPUs. Step 2 adds, per node, the
    heaviest single replica: what the replication fixes (no packing can put less than
    that on the GPU that receives it). Steps 3 and 4 are the real per-GPU loads; hatched
    bars are GPUs holding two replicas of one expert. The dashed line is the oracle's
    certified lower bound on the layer's optimum, the dotted one the mean GPU load.
    """
    require_matplotlib()
    if not 0 <= layer < problem.num_layers:
        raise ValueError(f"layer must be in [0, {problem.num_layers}), got {layer}")
    from matplotlib.patches import Patch

    from oracle.pipeline import layer_lower_bound  # loads the solver only when drawing

    rows = [layer_stages(problem, layer, "refined"), layer_stages(problem, layer, "baseline")]
    lower = float(layer_lower_bound(problem, layer))
    mean = float(problem.loads[layer].sum()) / problem.num_gpus
    figure = new_figure(15, 6.4)
    grid = figure.subplots(2, 4, sharey=True, sharex=True, squeeze=False)
    top = max(
        [lower, mean]
        + [v for row in rows for stage in row.stages for v in stage.loads]
        + [v for row in rows for s in row.stages for v in (s.heaviest_replica or [])]
    )
    for axes_row, row, color in zip(grid, rows, (REFERENCE_COLOR, BASELINE_COLOR), strict=True):
        for axes, stage in zip(axes_row, row.stages, strict=True):
            draw_stage(axes, problem, stage, color, lower, mean)
            axes.set_ylim(0, top * 1.08 if top > 0 else 1.0)
        axes_row[0].set_ylabel(f"{row.label}\nGPU load", fontsize=9)
    for axes in grid[1]:
        axes.set_xlabel("GPUs, by node", fontsize=8)
    source = f"{name}, " if name else ""
    figure.suptitle(
        f"{source}layer {layer}: per-GPU load after each step of the balancer "
        f"(R, Gr, N, P) = ({problem.num_replicas}, {problem.num_groups}, "
        f"{problem.num_nodes}, {problem.num_gpus}), {problem.policy.value} policy",
        fontsize=11,
    )
    duplicates = sum(any(s.duplicates) for row in rows for s in row.stages)
    handles = [
        grid[0][1].get_lines()[0],
        grid[0][1].get_lines()[1],
        grid[0][1].collections[0],
        Patch(
            facecolor="white",
            edgecolor="black",
            hatch=DUPLICATE_HATCH,
            label=DUPLICATE_LABEL + ("" if duplicates else " (none in this layer)"),
        ),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return figure


# --- a trace, layer by layer --------------------------------------------------------------


@dataclass(frozen=True)
class TraceQuality:
    """Per layer: the peak GPU load of the reference and the baseline, and the oracle's
    certified interval ``[lower, upper]`` on the least possible peak."""

    name: str
    generated: bool
    cluster: tuple[int, int, int, int]
    layers: list[int]
    lower: list[float]
    upper: list[float]
    reference_peak: list[float]
    baseline_peak: list[float]
    reference_balancedness: float
    baseline_balancedness: float

    def over_bound(self, peaks: Sequence[float]) -> list[float]:
        return [ratio(p, b) for p, b in zip(peaks, self.lower, strict=True)]

    @property
    def worst_layer(self) -> int:
        """The layer where the reference's peak is furthest above the lower bound."""
        return self.layers[furthest_above(self.reference_peak, self.lower)]


def furthest_above(peaks: Sequence[float], lower: Sequence[float]) -> int:
    """The index of the largest peak over its bound (the first, on ties)."""
    scores = [ratio(p, b) for p, b in zip(peaks, lower, strict=True)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def node_blocks(problem: BalancingProblem, phy2log_row: Sequence[int]) -> list[tuple[int, ...]]:
    """The groups each node holds in a one-layer placement (the split it used)."""
    size, slots = problem.group_size, problem.slots_per_node
    return [
        tuple(sorted({int(e) // size for e in phy2log_row[n * slots : (n + 1) * slots]}))
        for n in range(problem.packing_nodes)
    ]


def chosen_layers(num_layers: int, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = [int(layer) for layer in layers]
    if not chosen:
        raise ValueError("layers must name at least one layer")
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layers must be in [0, {num_layers}), got {bad}")
    return chosen


def trace_quality(
    loads: Any,
    cluster: tuple[int, int, int, int] = TRACE_CLUSTER,
    *,
    layers: Sequence[int] | None = None,
    name: str = "",
    generated: bool = False,
) -> TraceQuality:
    """Peaks of both balancers and the certified interval of every chosen layer.

    The interval is ``oracle.pipeline.certify_layer`` on the reference's own split of
    the groups (its lower bound minimises over every split; its upper bound is a
    placement the oracle builds and checks itself, about 0.05 s a layer).
    """
    from oracle.pipeline import certify_layer  # loads the solver only when needed

    full = BalancingProblem(loads, *cluster)
    chosen = chosen_layers(full.num_layers, layers)
    problem = BalancingProblem(full.loads[chosen], *cluster)
    reference = balance(problem, variant="refined")
    baseline = balance(problem, variant="baseline")
    num_gpus = problem.num_gpus
    reference_loads = gpu_loads(problem.loads, reference.phy2log, reference.logcnt, num_gpus)
    baseline_loads = gpu_loads(problem.loads, baseline.phy2log, baseline.logcnt, num_gpus)
    lower, upper = [], []
    for row in range(problem.num_layers):
        split = node_blocks(problem, reference.phy2log[row].tolist())
        answer = certify_layer(problem, row, split).result
        assert answer.objective is not None
        lower.append(float(answer.bound))
        upper.append(float(answer.objective))
    return TraceQuality(
        name=name,
        generated=generated,
        cluster=cluster,
        layers=chosen,
        lower=lower,
        upper=upper,
        reference_peak=reference_loads.max(-1).tolist(),
        baseline_peak=baseline_loads.max(-1).tolist(),
        reference_balancedness=balancedness(reference_loads),
        baseline_balancedness=balancedness(baseline_loads),
    )


TRACE_Y_LABEL = "peak GPU load / certified lower bound"


def draw_trace(quality: TraceQuality) -> Figure:
    """The figure of ``trace_figure`` from precomputed numbers."""
    figure = new_figure(12, 4.8)
    axes = figure.add_subplot()
    x = quality.layers
    axes.bar(
        x,
        [ratio(u, lo) - 1 for u, lo in zip(quality.upper, quality.lower, strict=True)],
        bottom=1.0,
        width=0.8,
        color=OPTIMUM_COLOR,
        alpha=0.45,
        label="the optimum lies in this band: [lower bound, oracle's placement]",
    )
    axes.plot(
        x,
        quality.over_bound(quality.reference_peak),
        "o-",
        color=REFERENCE_COLOR,
        markersize=3.5,
        linewidth=1,
        label=f"reference (refined): balancedness {quality.reference_balancedness:.4f}",
    )
    axes.plot(
        x,
        quality.over_bound(quality.baseline_peak),
        "s--",
        color=BASELINE_COLOR,
        markersize=3,
        linewidth=1,
        label=f"baseline (DeepSeek-style): balancedness {quality.baseline_balancedness:.4f}",
    )
    axes.axhline(1.0, label=LOWER_BOUND_LABEL + " = 1", **BOUND_STYLE)
    axes.set_xlabel("MoE layer (dense layers dropped)")
    axes.set_ylabel(TRACE_Y_LABEL)
    replicas, groups, nodes, gpus = quality.cluster
    source = " (GENERATED stand-in)" if quality.generated else ""
    axes.set_title(
        f"{quality.name}{source} at (R, Gr, N, P) = ({replicas}, {groups}, {nodes}, {gpus}): "
        "peak over the certified lower bound, per layer (1 is provably optimal)",
        fontsize=10,
    )
    axes.legend(fontsize=8, loc="upper right")
    axes.margins(x=0.01)
    return figure


def trace_figure(
    loads: Any,
    cluster: tuple[int, int, int, int] = TRACE_CLUSTER,
    *,
    layers: Sequence[int] | None = None,
    name: str = "",
    generated: bool = False,
) -> Figure:
    """Per layer of a trace: the peak GPU load over the certified lower bound, for the
    reference and the baseline, and the certified optimum interval as a band from 1.

    Peak over the bound is drawn rather than balancedness (mean over peak) because it
    measures each layer against what is provably possible: 1 means optimal, and the
    oracle's interval sits on the same scale. The trace-wide balancedness of each
    balancer is in the legend. ``layers`` limits the layers (certifying one takes
    about 0.05 s).
    """
    require_matplotlib()
    return draw_trace(trace_quality(loads, cluster, layers=layers, name=name, generated=generated))


# --- a gate report ------------------------------------------------------------------------


def check_gate_report(report: Mapping[str, Any]) -> None:
    """ValueError unless ``report`` is a finished gate report of format 2."""
    if not isinstance(report, Mapping) or report.get("format") != 2:
        found = report.get("format") if isinstance(report, Mapping) else type(report).__name__
        raise ValueError(f"not a gate report of format 2 (format: {found!r})")
    if report.get("verdict") not in ("pass", "fail"):
        raise ValueError(
            f"the gate report's verdict is {report.get('verdict')!r}: the run did not finish"
        )


def report_cluster(report: Mapping[str, Any]) -> tuple[int, int, int, int]:
    given = report.get("header", {}).get("trace_cluster", TRACE_CLUSTER)
    if not (isinstance(given, (list, tuple)) and len(given) == 4):
        raise ValueError(f"the report's header trace_cluster is not 4 integers: {given!r}")
    replicas, groups, nodes, gpus = (int(v) for v in given)
    return replicas, groups, nodes, gpus


@dataclass(frozen=True)
class TraceScore:
    """A balancer on one trace, as the gate scores it."""

    balancedness: float
    mean_peak_over_lower_bound: float
    max_peak_over_lower_bound: float


def reference_scores(
    report: Mapping[str, Any], data: str | None = None, *, fast: bool = True
) -> tuple[dict[str, TraceScore], str]:
    """The reference's scores on the traces the report scored (same cluster, same
    scoring as the gate: ``properties.gate.score_trace``), and the workload note."""
    from properties.gate import score_trace

    names = [t["trace"] for t in report.get("traces", [])]
    if not names:
        return {}, ""
    cluster = report_cluster(report)
    workloads, note = default_workloads(data)
    by_name = {w.name: w for w in workloads}
    scores = {}
    for name in names:
        if name not in by_name:
            continue
        problem = BalancingProblem(by_name[name].loads, *cluster)
        start = time.perf_counter()
        result = balance(problem, fast=fast)
        scored = score_trace(
            name, by_name[name].generated, problem, result, [time.perf_counter() - start]
        )
        scores[name] = TraceScore(
            scored.balancedness,
            scored.mean_peak_over_lower_bound,
            scored.max_peak_over_lower_bound,
        )
    return scores, note


GAP_Y_LABEL = "peak / proven optimum - 1"


def draw_gaps(axes: Axes, report: Mapping[str, Any]) -> None:
    """The proven gaps of the tiny layers, largest first, in percent."""
    optimality = report.get("optimality") or {}
    gaps = sorted((100 * g["relative"] for g in optimality.get("gaps", [])), reverse=True)
    axes.set_xlabel("tiny layers the gate tried, sorted by gap")
    axes.set_ylabel(GAP_Y_LABEL)
    if not gaps:
        why = (
            "the report lists no per-layer gaps (an older report)"
            if optimality
            else "no layer's optimum was proven in this run"
        )
        axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, wrap=True)
        axes.set_title("gap to the proven optimum", fontsize=10)
        return
    axes.bar(range(len(gaps)), gaps, width=0.9, color=TARGET_COLOR, label="gap")
    at_optimum = sum(g <= 1e-10 for g in gaps)
    axes.set_title(
        f"gap to the proven optimum on {len(gaps)} tiny layers:\n{at_optimum} at the optimum, "
        f"mean {statistics.fmean(gaps):.2g}%, max {gaps[0]:.2g}%",
        fontsize=10,
    )
    axes.set_xlim(-0.6, len(gaps) - 0.4)


TARGET_COLOR = "tab:purple"
BALANCEDNESS_LABEL = "balancedness: sum of mean / sum of peak GPU load (1 is perfect)"
PEAK_BOUND_LABEL = "peak GPU load / certified lower bound (1 is optimal)"


def draw_trace_scores(
    balance_axes: Axes,
    bound_axes: Axes,
    report: Mapping[str, Any],
    reference: Mapping[str, TraceScore],
) -> None:
    """Per trace, the target's scores (filled markers) beside the reference's (hollow):
    balancedness, and the mean and max over the layers of peak over the lower bound."""
    traces = report.get("traces", [])
    if not traces:
        status = report.get("checks", {}).get("traces", "not run")
        for axes in (balance_axes, bound_axes):
            axes.text(
                0.5,
                0.5,
                f"traces not scored: {status}",
                ha="center",
                va="center",
                transform=axes.transAxes,
                wrap=True,
            )
        return
    names = [t["trace"] for t in traces]
    rows = list(range(len(names)))
    known = [i for i, n in enumerate(names) if n in reference]
    target = f"target {report.get('target')}"

    def draw(axes: Axes, values: list[float], at: list[int], marker: str, label: str) -> None:
        mine = label.startswith("target")
        axes.plot(
            values,
            at,
            marker,
            linestyle="none",
            color=TARGET_COLOR if mine else REFERENCE_COLOR,
            markerfacecolor=TARGET_COLOR if mine else "none",
            markersize=6 if mine else 10,
            label=label,
        )

    draw(balance_axes, [t["balancedness"] for t in traces], rows, "o", target)
    draw(
        balance_axes,
        [reference[names[i]].balancedness for i in known],
        known,
        "D",
        "reference (refined)",
    )
    draw(
        bound_axes, [t["mean_peak_over_lower_bound"] for t in traces], rows, "o", target + ": mean"
    )
    draw(bound_axes, [t["max_peak_over_lower_bound"] for t in traces], rows, "^", target + ": max")
    draw(
        bound_axes,
        [reference[names[i]].mean_peak_over_lower_bound for i in known],
        known,
        "D",
        "reference (refined): mean",
    )
    draw(
        bound_axes,
        [reference[names[i]].max_peak_over_lower_bound for i in known],
        known,
        "v",
        "reference (refined): max",
    )
    balance_axes.set_yticks(rows, names, fontsize=8)
    balance_axes.set_ylim(len(names) - 0.5, -0.5)
    bound_axes.tick_params(labelleft=False)
    balance_axes.set_xlabel(BALANCEDNESS_LABEL)
    balance_axes.set_title("per trace: balancedness", fontsize=10)
    bound_axes.set_xlabel(PEAK_BOUND_LABEL)
    bound_axes.set_title("per trace: peak over the bound, mean and max over layers", fontsize=10)
    missing = [n for n in names if n not in reference]
    if missing:
        bound_axes.set_title(
            f"per trace: peak over the bound (no reference for {missing}: not in the data)",
            fontsize=9,
        )
    for axes in (balance_axes, bound_axes):
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def gate_figure(report: Mapping[str, Any], *, data: str | None = None, fast: bool = True) -> Figure:
    """A gate report (the JSON of ``eplb-spec gate --json``, format 2): the gap to the
    proven optimum over the tiny layers it tried, sorted, and per trace the target's
    balancedness and peak over the certified lower bound beside the reference's
    (computed here, with ``impl``'s fast path when ``fast``, on the same traces and the
    cluster the report names)."""
    require_matplotlib()
    check_gate_report(report)
    from matplotlib.ticker import PercentFormatter

    reference, _ = reference_scores(report, data, fast=fast)
    figure = new_figure(16, 5.2)
    grid = figure.add_gridspec(1, 3, width_ratios=[1.1, 1, 1])
    gaps_axes = figure.add_subplot(grid[0, 0])
    balance_axes = figure.add_subplot(grid[0, 1])
    bound_axes = figure.add_subplot(grid[0, 2], sharey=balance_axes)
    gaps_axes.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    draw_gaps(gaps_axes, report)
    draw_trace_scores(balance_axes, bound_axes, report, reference)
    budget = str(report.get("header", {}).get("budget", "")).split(" ")[0]
    findings = len(report.get("findings", []))
    figure.suptitle(
        f"eplb-spec gate: {report.get('target')}: {str(report.get('verdict')).upper()} "
        f"({budget or 'budget not recorded'} run, {findings} finding(s)); traces at "
        f"(R, Gr, N, P) = {report_cluster(report)}",
        fontsize=11,
    )
    return figure


# --- rebalancing: peak against transfers -------------------------------------------------

INTERVAL_LABEL = "the fewest transfers lie in this band (oracle: certified interval)"
FOUND_LABEL = "fewest found (a placement the oracle built and checked)"
PROVEN_LABEL = "certified lower bound on the fewest"
WAY_STYLES: dict[str, tuple[str, str, str]] = {
    "stateless": ("X", "tab:red", "stateless rebalance = slot preservation alone (vLLM)"),
    "relabeled": ("*", REFERENCE_COLOR, "relabeling optimum (same GPU loads as stateless)"),
    "old": ("s", "black", "keep the old placement (no transfer)"),
}


def tradeoff_figure(curves: Sequence[Any]) -> Figure:
    """Peak against transfers for a few layers (``studies.migration.TradeoffFigures``):
    for each budget ``(1 + eps) x`` the best known peak, the oracle's certified interval
    on the fewest transfers of a placement within it (a band between the certified lower
    bound and the best placement found), and where the stateless rebalance, the
    relabeling optimum and the old placement land (peak over the best known, transfers).
    """
    require_matplotlib()
    if not curves:
        raise ValueError("tradeoff_figure needs at least one curve")
    figure = new_figure(max(10.0, 5.2 * len(curves)), 5.0)
    grid = figure.subplots(1, len(curves), squeeze=False)[0]
    for axes, curve in zip(grid, curves, strict=True):
        points = [p for p in curve.points if p.lower is not None]
        x = [p.budget_over_best for p in points]
        lower = [float(p.lower) for p in points]
        upper = [float("nan") if p.upper is None else float(p.upper) for p in points]
        axes.fill_between(x, lower, upper, color=OPTIMUM_COLOR, alpha=0.3, label=INTERVAL_LABEL)
        axes.plot(x, upper, "o-", color=OPTIMUM_COLOR, markersize=4, label=FOUND_LABEL)
        axes.plot(x, lower, "v--", color="tab:gray", markersize=4, label=PROVEN_LABEL)
        for way, (marker, color, label) in WAY_STYLES.items():
            axes.plot(
                [curve.peaks[way]],
                [curve.transfers[way]],
                marker,
                color=color,
                markersize=11 if marker == "*" else 8,
                linestyle="none",
                label=label,
            )
        axes.set_xlabel("peak GPU load / best known peak (budget 1 + eps)")
        axes.set_ylabel("transfers ((expert, GPU) pairs that arrive)")
        axes.set_title(f"layer {curve.layer}", fontsize=10)
        axes.set_ylim(bottom=0)
    first = curves[0]
    figure.suptitle(
        f"rebalancing from the placement of {first.old} to the loads of {first.new}:\n"
        "the fewest transfers for a peak within (1 + eps) x the best known, per layer",
        fontsize=11,
    )
    handles, labels = grid[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return figure


# --- writers and the command line ---------------------------------------------------------


def prepare_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check that figures can be drawn and written to ``path`` (created if missing);
    ValueError (the command line's exit 2) otherwise, before any long computation."""
    try:
        require_matplotlib()
    except PlottingUnavailable as error:
        raise ValueError(str(error)) from None
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot create the folder ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the folder is not writable")
    return folder


def find_workload(data: str | None, trace: str | None) -> tuple[Workload, str]:
    """The named trace (or the first), and the note saying where the traces came from."""
    workloads, note = default_workloads(data)
    if trace is None:
        return workloads[0], note
    for workload in workloads:
        if workload.name == trace:
            return workload, note
    known = ", ".join(w.name for w in workloads)
    raise ValueError(f"unknown trace {trace!r}; known: {known}")


def display_name(workload: Workload) -> str:
    return f"{workload.name} (GENERATED stand-in)" if workload.generated else workload.name


def layer_stem(workload: Workload, layer: int) -> str:
    return f"layer-{workload.name}-{layer}"


def report_figures(
    folder: Path,
    workload: Workload,
    cluster: tuple[int, int, int, int],
    *,
    layers: Sequence[int] | None = None,
    stems: tuple[str, str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """A trace's figure and the stage figure of its worst layer (for the reference)."""
    quality = trace_quality(
        workload.loads, cluster, layers=layers, name=workload.name, generated=workload.generated
    )
    worst = quality.worst_layer
    trace_stem, stage_stem = stems or (f"trace-{workload.name}", layer_stem(workload, worst))
    written = save_figure(draw_trace(quality), folder, trace_stem, formats)
    problem = BalancingProblem(workload.loads, *cluster)
    stages = layer_stages_figure(problem, worst, name=display_name(workload))
    return written + save_figure(stages, folder, stage_stem, formats)


def reference_worst_layer(problem: BalancingProblem) -> int:
    """The layer where the reference's peak is furthest above the certified lower bound."""
    from oracle.pipeline import layer_lower_bound

    result = balance(problem)
    peaks = peak_gpu_load(problem.loads, result.phy2log, result.logcnt, problem.num_gpus)
    lower = [float(layer_lower_bound(problem, layer)) for layer in range(problem.num_layers)]
    return furthest_above(peaks.tolist(), lower)


__all__ = [
    "INSTALL_HINT",
    "LayerStages",
    "PlottingUnavailable",
    "Stage",
    "TraceQuality",
    "gate_figure",
    "layer_stages",
    "layer_stages_figure",
    "prepare_folder",
    "reference_worst_layer",
    "report_figures",
    "require_matplotlib",
    "save_figure",
    "trace_figure",
    "trace_quality",
    "tradeoff_figure",
]
