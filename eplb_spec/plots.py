"""``eplb-spec plot layer|trace|gate|readme``, and ``--plot`` on ``gate``: arguments to
calls of ``studies.plots``."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

# What the figures need (studies.plots: torch, and matplotlib when drawing) is imported
# by each command as it runs, so that building the parser stays cheap.
from properties.traces import TRACE_CLUSTER


def cluster_of(args: argparse.Namespace) -> tuple[int, int, int, int]:
    return (args.replicas, args.groups, args.nodes, args.gpus)


def print_written(paths: Sequence[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


def plot_layer(args: argparse.Namespace) -> int:
    from spec.problem import BalancingProblem
    from studies.plots import (
        display_name,
        find_workload,
        layer_stages_figure,
        layer_stem,
        prepare_folder,
        reference_worst_layer,
        save_figure,
    )

    folder = prepare_folder(args.out)
    workload, note = find_workload(args.data, args.trace)
    print(note)
    problem = BalancingProblem(workload.loads, *cluster_of(args))
    layer = args.layer
    if layer is None:
        layer = reference_worst_layer(problem)
        print(f"layer {layer}: the reference's worst (peak furthest above the lower bound)")
    elif not 0 <= layer < problem.num_layers:
        raise ValueError(
            f"--layer must be in [0, {problem.num_layers}) for trace {workload.name}, got {layer}"
        )
    figure = layer_stages_figure(problem, layer, name=display_name(workload))
    print_written(save_figure(figure, folder, layer_stem(workload, layer)))
    return 0


def plot_trace(args: argparse.Namespace) -> int:
    from studies.plots import find_workload, prepare_folder, save_figure, trace_figure

    folder = prepare_folder(args.out)
    workload, note = find_workload(args.data, args.trace)
    print(note)
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers must be at least 1, got {args.layers}")
    count = len(workload.loads) if args.layers is None else min(args.layers, len(workload.loads))
    figure = trace_figure(
        workload.loads,
        cluster_of(args),
        layers=range(count),
        name=workload.name,
        generated=workload.generated,
    )
    print_written(save_figure(figure, folder, f"trace-{workload.name}"))
    return 0


def read_gate_report(path: str) -> dict[str, Any]:
    from studies.plots import check_gate_report

    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the gate report {path}: {error}") from None
    try:
        check_gate_report(document)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    assert isinstance(document, dict)
    return document


def plot_gate(args: argparse.Namespace) -> int:
    from studies.plots import gate_figure, prepare_folder, save_figure

    folder = prepare_folder(args.out)
    report = read_gate_report(args.report)
    figure = gate_figure(report, data=args.data)
    print_written(save_figure(figure, folder, f"gate-{Path(args.report).stem}"))
    return 0


def plot_shapes(args: argparse.Namespace) -> int:
    """The balancers across cluster shapes: ``shapes.png``/``.svg`` and ``shapes.json``."""
    from dataclasses import asdict

    from properties.workloads import default_workloads
    from studies.plots import prepare_folder, save_figure
    from studies.shapes import shape_sweep, shapes_figure

    folder = prepare_folder(args.out)
    workloads, note = default_workloads(args.data)
    print(note)
    cells = shape_sweep(workloads, layer_step=args.layer_step)
    scores = [c.score for c in cells if c.score is not None]
    for cell in cells:
        if cell.score is None:
            print(f"{cell.job.trace} {cell.job.cluster}: not certified: {cell.error}")
    sampled = f"every {args.layer_step}th layer" if args.layer_step > 1 else "every layer"
    source = "a generated stand-in" if workloads[0].generated else f"{len(workloads)} traces"
    figure = shapes_figure(scores, f"{source}; {sampled} of each")
    written = save_figure(figure, folder, "shapes")
    table = folder / "shapes.json"
    table.write_text(json.dumps([asdict(s) for s in scores], indent=1) + "\n")
    print_written([*written, table])
    return 0


README_STEMS = ("trace-layers", "layer-stages", "gate-report")


def plot_readme(args: argparse.Namespace) -> int:
    """The figures the README shows: a real trace layer by layer, its worst layer stage
    by stage, and a quick gate run of the reference. PNG only (the SVGs are larger)."""
    from properties.gate import DEFAULT_TARGET, run_gate
    from studies.plots import (
        find_workload,
        gate_figure,
        prepare_folder,
        report_figures,
        save_figure,
    )

    folder = prepare_folder(args.out)
    workload, note = find_workload(args.data, None)
    print(note)
    written = report_figures(
        folder, workload, TRACE_CLUSTER, stems=README_STEMS[:2], formats=("png",)
    )
    print(f"running a quick gate of {DEFAULT_TARGET} for the gate figure")
    report = run_gate(DEFAULT_TARGET, quick=True, data=args.data).to_json()
    written += save_figure(
        gate_figure(report, data=args.data), folder, README_STEMS[2], formats=("png",)
    )
    print_written(written)
    return 0


MAX_CLUSTER_VALUE = 2**16  # a figure draws one bar per GPU; far above any drawable cluster


def cluster_value(text: str) -> int:
    """A cluster option: an integer in [1, MAX_CLUSTER_VALUE]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= MAX_CLUSTER_VALUE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_CLUSTER_VALUE}, got {value}")
    return value


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    replicas, groups, nodes, gpus = TRACE_CLUSTER
    for option, default in (
        ("--replicas", replicas),
        ("--groups", groups),
        ("--nodes", nodes),
        ("--gpus", gpus),
    ):
        parser.add_argument(option, type=cluster_value, default=default, help=f"default {default}")


Parser = TypeVar("Parser", bound=argparse.ArgumentParser)


def add_plot_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """``eplb-spec plot layer|trace|gate|readme`` (the subparsers take the main parser's
    class)."""
    plot = commands.add_parser(
        "plot",
        help="figures (PNG and SVG) of the balancers; needs the plot extra "
        "(pip install 'eplb-spec[plot]')",
        description="Figures of what the balancers do. Traces are found as for report "
        "(--data DIR, $EPLB_SPEC_DATA, else the shipped traces); --data generated draws "
        "a generated stand-in, and says so.",
    )
    kinds = plot.add_subparsers(dest="plot_command", required=True, metavar="FIGURE")
    layer = kinds.add_parser(
        "layer", help="one layer, stage by stage, for the reference and the baseline"
    )
    layer.add_argument("--trace", help="trace name (default: the first)")
    layer.add_argument("--layer", type=int, help="MoE layer (default: the reference's worst layer)")
    trace = kinds.add_parser("trace", help="a trace, layer by layer, against certified bounds")
    trace.add_argument("--trace", help="trace name (default: the first)")
    trace.add_argument("--layers", type=int, help="only the first N layers")
    for parser in (layer, trace):
        add_cluster_options(parser)
    gate = kinds.add_parser("gate", help="a gate report written by eplb-spec gate --json")
    gate.add_argument("report", help="the gate's JSON report (format 2)")
    shapes = kinds.add_parser(
        "shapes",
        help="the reference, the baseline and the joint balancer against certified bounds "
        "across cluster shapes (1-9 slots per GPU), per trace",
    )
    shapes.add_argument(
        "--layer-step",
        type=cluster_value,
        default=8,
        help="certify every N-th layer of each trace (default 8; 1: all, slow)",
    )
    readme = kinds.add_parser(
        "readme", help="regenerate the README's figures (a trace, its worst layer, a quick gate)"
    )
    for parser in (layer, trace, gate, shapes, readme):
        parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures")
        parser.add_argument("--data", help="folder of trace *.json files")
    plot.set_defaults(handler=plot_main)


PLOT_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "layer": plot_layer,
    "trace": plot_trace,
    "gate": plot_gate,
    "shapes": plot_shapes,
    "readme": plot_readme,
}


def plot_main(args: argparse.Namespace) -> int:
    """``eplb-spec plot ...``; bad arguments and a missing matplotlib are ValueErrors
    (exit 2, one line)."""
    from studies.plots import PlottingUnavailable

    try:
        return PLOT_COMMANDS[args.plot_command](args)
    except PlottingUnavailable as error:
        raise ValueError(str(error)) from None


def gate_with_figure(
    args: argparse.Namespace, run_gate_command: Callable[[argparse.Namespace], int]
) -> int:
    """``eplb-spec gate ... --plot DIR``: the gate as usual, then the figure of its report
    (the report goes through ``--json FILE``, or a temporary file)."""
    from studies.plots import gate_figure, prepare_folder, save_figure

    if args.same_as is not None:
        raise ValueError("--plot draws a gate report; it does not apply to --same-as")
    folder = prepare_folder(args.plot, "--plot")
    with tempfile.TemporaryDirectory(prefix="eplb-spec-plot-") as scratch:
        json_path = args.json or str(Path(scratch) / "gate.json")
        code = run_gate_command(
            argparse.Namespace(**{**vars(args), "plot": None, "json": json_path})
        )
        if code not in (0, 1):
            return code
        report = read_gate_report(json_path)
        stem = f"gate-{Path(args.json).stem}" if args.json else "gate"
        print_written(save_figure(gate_figure(report, data=args.data), folder, stem))
    return code
