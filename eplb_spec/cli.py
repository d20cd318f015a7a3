"""The ``eplb-spec`` command line: every subcommand's arguments, checked before any work,
then one call into the kit (``properties``), the oracle or the studies (``studies``).

``eplb-spec`` with no arguments runs ``report`` (``studies.report``): the refined
reference and its baseline on the real traces (or a generated stand-in, said so).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

# Only the standard library at import time: --help and argument errors answer before any
# solver, torch, NumPy or Hypothesis is loaded (tests/test_cli_startup.py); each command
# imports what it needs when it runs.
from properties.traces import TRACE_CLUSTER

if TYPE_CHECKING:
    from properties.workloads import Workload

# Upper limits of numeric options: far above any sensible run, low enough that nothing
# downstream overflows (a per-call timeout goes to a pipe's poll, in nanoseconds).
MAX_TIMEOUT_S = 86_400.0
MAX_ROUNDS = 1000
MAX_VECTORS = 10_000
MAX_CLUSTER_VALUE = 2**28
DATA_HELP = (
    "folder of trace *.json files (default: the 12 real traces shipped with eplb-spec, "
    "or $EPLB_SPEC_DATA; 'generated' for a generated stand-in)"
)


class UsageError(ValueError):
    """A command-line argument argparse refused."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is raised, for ``main`` to print as one line and
    return exit status 2 (argparse would print the usage too and exit)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


MIN_MEMORY_MB, MAX_MEMORY_MB = 256, 1 << 24


def reference_name(text: str) -> str:
    """A name ``--same-as`` knows (``properties.fidelity.REFERENCES``)."""
    from properties.fidelity import REFERENCES, reference_named

    try:
        reference_named(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(sorted(REFERENCES))}, got {text!r}"
        ) from None
    return text


def finite_float(low: float, high: float, *, strict_low: bool, what: str) -> Callable[[str], float]:
    """A finite float in ``(low, high]`` (``[low, high]`` unless ``strict_low``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        above_low = value > low if strict_low else value >= low
        if not (math.isfinite(value) and above_low and value <= high):
            side = "above" if strict_low else "at least"
            raise argparse.ArgumentTypeError(
                f"must be a finite {what} {side} {low:g} and at most {high:g}, got {text}"
            )
        return value

    return parse


def check_writable(path: str | None, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory, not a file")
    existed = target.exists()
    try:
        with target.open("a"):
            pass
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot write ({error.strerror})") from None
    if not existed:
        target.unlink()


def check_cluster_options(
    cluster: tuple[int, int, int, int], workloads: Sequence[Workload]
) -> None:
    """The report's cluster against every workload, before any balancing."""
    from spec.problem import check_cluster, check_output_size

    replicas, groups, nodes, gpus = cluster
    options = f"--replicas {replicas} --groups {groups} --nodes {nodes} --gpus {gpus}"
    for workload in workloads:
        layers, experts = workload.loads.shape
        try:
            check_cluster(experts, replicas, groups, nodes, gpus)
            check_output_size(layers, experts, replicas)
        except ValueError as error:
            raise ValueError(f"{options} on {workload.name} ({experts} experts): {error}") from None


def run_report(args: argparse.Namespace) -> int:
    from properties.progress import progress
    from properties.workloads import default_workloads
    from studies.report import print_trace_report, report_document, report_trace

    cluster = (args.replicas, args.groups, args.nodes, args.gpus)
    if args.plot is not None:
        from studies.plots import prepare_folder

        prepare_folder(args.plot, "--plot")
    workloads, note = default_workloads(args.data)
    check_cluster_options(cluster, workloads)
    rows = [report_trace(w, cluster) for w in progress(workloads, "traces")]
    print_trace_report(rows, cluster, note)
    if args.plot is not None:
        from studies.plots import report_figures

        for path in report_figures(Path(args.plot), workloads[0], cluster):
            print(f"wrote {path}")
    if args.json:
        document = report_document(rows, cluster, note)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="eplb-spec",
        description="Specification, reference and checks for expert-parallelism load balancing.",
    )
    commands = parser.add_subparsers(dest="command")
    report = commands.add_parser(
        "report",
        help="(default) reference vs baseline on the real traces",
        description="Balancedness of the reference and the baseline per trace, and how many "
        "layers each refinement changed.",
    )
    report.add_argument("--data", help=DATA_HELP)
    replicas, groups, nodes, gpus = TRACE_CLUSTER
    size = bounded_int(1, MAX_CLUSTER_VALUE)
    report.add_argument("--replicas", type=size, default=replicas, help=f"default {replicas}")
    report.add_argument("--groups", type=size, default=groups, help=f"default {groups}")
    report.add_argument("--nodes", type=size, default=nodes, help=f"default {nodes}")
    report.add_argument("--gpus", type=size, default=gpus, help=f"default {gpus}")
    report.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    report.add_argument(
        "--plot",
        metavar="DIR",
        help="also write figures: the first trace layer by layer, and its worst layer "
        "stage by stage (needs matplotlib)",
    )
    report.set_defaults(handler=run_report)

    bench = commands.add_parser(
        "bench",
        help="time reference, baseline and fast implementation side by side",
        description="Median time per call of each implementation on the traces and on a "
        "larger generated case, the fast implementation's scaling, and its peak memory.",
    )
    bench.add_argument("--data", help=DATA_HELP)
    bench.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        default=3,
        help=f"interleaved rounds, 1..{MAX_ROUNDS} (default 3)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the tables as JSON")
    bench.set_defaults(handler=run_bench)

    oracle_bench = commands.add_parser(
        "bench-oracle",
        help="oracle speed and reach, and certified gaps of the balancers on the traces",
    )
    oracle_bench.add_argument("--data", help=DATA_HELP)
    oracle_bench.add_argument("--quick", action="store_true", help="fewer instances and layers")
    oracle_bench.add_argument("--json", metavar="FILE", help="also write the tables as JSON")
    oracle_bench.add_argument(
        "--clusters",
        nargs="+",
        metavar="R,G,N,P",
        help="cluster shapes (replicas,groups,nodes,gpus) of the certification sweep "
        "(default: " + ",".join(map(str, TRACE_CLUSTER)) + ")",
    )
    oracle_bench.add_argument(
        "--sweep-only",
        action="store_true",
        help="only the certification sweep of the traces (no solver timings)",
    )
    add_backend_options(oracle_bench, default_workers=1)
    oracle_bench.set_defaults(handler=run_oracle_bench)

    gate = commands.add_parser(
        "gate",
        help="check an EPLB implementation against the spec and the oracle",
        description="Exit status 0: pass; 1: findings; 2: the target cannot be imported or "
        "an argument is wrong; 3: an internal error of the gate; 130: interrupted.",
    )
    gate.add_argument(
        "--impl",
        default="impl:rebalance_experts",
        metavar="TARGET",
        help="package.module:function or path/to/file.py:function with DeepSeek's "
        "rebalance_experts signature (default: this project's reference)",
    )
    gate.add_argument("--quick", action="store_true", help="reduced suite, under 30 s")
    gate.add_argument(
        "--timeout",
        type=finite_float(0.0, MAX_TIMEOUT_S, strict_low=True, what="number of seconds"),
        default=60.0,
        help=f"seconds per call, at most {MAX_TIMEOUT_S:g} (default 60)",
    )
    gate.add_argument(
        "--max-gap",
        type=finite_float(0.0, 1e6, strict_low=False, what="percentage"),
        metavar="PERCENT",
        help="fail when a layer's peak is proven more than PERCENT above the optimum (above "
        "the least peak of a valid placement at hand), on generated problems or traces",
    )
    gate.add_argument("--data", help=DATA_HELP)
    gate.add_argument("--json", metavar="FILE", help="write the report as JSON")
    gate.add_argument(
        "--plot", metavar="DIR", help="also write the figure of the report (needs matplotlib)"
    )
    gate.add_argument(
        "--refine-a",
        metavar="TARGET",
        help="also check a refinement-A function refine(loads, counts) -> counts "
        "(the reference: impl:refine_counts)",
    )
    gate.add_argument(
        "--refine-b",
        metavar="TARGET",
        help="also check a refinement-B function refine(weights, gpu, rank, num_gpus) -> "
        "(gpu, rank) (the reference: impl:refine_swap_lists)",
    )
    gate.add_argument(
        "--previous",
        metavar="KEYWORD|6",
        help="also check rebalancing from an old placement (the rebalance section): how the "
        "target takes it, an int64 [layers, replicas] phy2log, as a keyword argument (this "
        "project's reference: previous) or 6, the sixth positional argument (vLLM's "
        "old_global_expert_indices; --impl vllm needs none)",
    )
    gate.add_argument(
        "--eps",
        type=float,
        metavar="TOLERANCE",
        help="with --previous: the target is a budgeted rebalancer whose peak must stay within "
        "(1 + TOLERANCE) x its own stateless answer's (e.g. 0.01); its transfers are set "
        "beside the relabeling optimum, impl.incremental and the oracle's load-flow bound",
    )
    gate.add_argument(
        "--max-transfers",
        type=int,
        metavar="K",
        help="with --previous: the target is a budgeted rebalancer that may make at most K "
        "transfers per layer and never a peak above the old placement's",
    )
    gate.add_argument(
        "--schedule",
        metavar="TARGET",
        help="also check a transfer schedule f(previous, phy2log, num_experts, num_gpus, "
        "num_nodes) -> (transfers [T, 5], num_batches [L]) (the reference: "
        "properties.rebalance:reference_schedule; vLLM's: vllm:migration_scheduler)",
    )
    gate.add_argument(
        "--no-exchanges",
        action="store_true",
        default=None,
        help="with --schedule: a GPU may only send or only receive, with one peer, per batch "
        "(vLLM's rule, the default for vllm:migration_scheduler); otherwise an exchange "
        "with the one peer is allowed",
    )
    gate.add_argument(
        "--checks",
        metavar="SECTIONS",
        help="comma-separated sections to run (default: all): contract, deterministic, "
        "input-forms, optimality, bad-input, traces, rebalance, schedule, refinement-a, "
        "refinement-b",
    )
    gate.add_argument("--skip", metavar="SECTIONS", help="comma-separated sections to leave out")
    gate.add_argument(
        "--same-as",
        metavar="REFERENCE",
        type=reference_name,
        help="fidelity mode: compare the target's placements with a reference's, step by "
        "step (refined, refined-without-a, refined-without-b, refined-without-refinements, "
        "baseline)",
    )
    gate.add_argument(
        "--same-balance",
        "--tolerate-ties",
        dest="same_balance",
        action="store_true",
        help="with --same-as: pass when no layer's peak differs from the reference's beyond "
        "rounding (the same GPU loads: ties, near ties, numbering, slot order; or other "
        "loads at the same peak); a layer worse or better for balance fails "
        "(--tolerate-ties: old name)",
    )
    gate.add_argument(
        "--memory-mb",
        type=bounded_int(MIN_MEMORY_MB, MAX_MEMORY_MB),
        default=4096,
        help="address-space limit of the target's process, in MB (default 4096)",
    )
    gate.set_defaults(handler=run_gate_command)

    vectors = commands.add_parser(
        "vectors",
        help="write JSON test vectors (instances with proven answers) in tiers by size",
    )
    vectors.add_argument("--out", default="vectors", help="folder (default: vectors)")
    vectors.add_argument("--tiers", default="small", help="comma-separated: small,medium,large")
    vectors.add_argument(
        "--count", type=bounded_int(1, MAX_VECTORS), default=None, help="vectors per tier"
    )
    vectors.set_defaults(handler=run_vectors)

    balancer_vectors = commands.add_parser(
        "balancer-vectors",
        help="write the reference's exact outputs as JSON vectors for ports "
        "(vectors/balancer/README.md)",
    )
    balancer_vectors.add_argument(
        "--out", default="vectors/balancer", help="folder (default: vectors/balancer)"
    )
    balancer_vectors.add_argument(
        "--tiers",
        default="handpicked,small,traces",
        help="comma-separated: handpicked,small,traces (the real traces: shipped, or --data)",
    )
    balancer_vectors.add_argument("--data", help=DATA_HELP)
    balancer_vectors.set_defaults(handler=run_balancer_vectors)

    solve = commands.add_parser(
        "solve",
        help="solve one instance file exactly and print the result as JSON",
        description="Instance files (format 1): "
        '{"problem": "replication", "weights": [...], "num_slots": S}, '
        '{"problem": "packing", "weights": [...], "num_packs": G, "labels": [...]}, '
        '{"problem": "joint", "weights": [...], "num_slots": S, "num_packs": G, '
        '"distinct": false}, {"problem": "layer", "weights": [...], "num_replicas": R, '
        '"num_groups": Gr, "num_nodes": N, "num_gpus": P}; optional "time_limit_s" '
        '(default 10, bounds the whole solve) and "seed" (default 0).',
    )
    solve.add_argument("file", help="instance JSON file")
    solve.add_argument(
        "--out",
        metavar="FILE",
        help="also write the answer there: for a layer instance the placement behind the "
        "objective (phy2log, log2phy, logcnt for one layer) and whether it is proven "
        "optimal; JSON, or NumPy arrays when FILE ends in .npz",
    )
    solve.set_defaults(handler=run_solve)

    migration = commands.add_parser(
        "migration",
        help="rebalancing between the traces: transfers of a stateless rebalance, of slot "
        "preservation, of the relabeling optimum, and the oracle's bound",
        description="For every ordered pair of traces, the reference's placement of the first "
        "rebalanced to the second's loads; per pair the transfers of each way and the "
        "oracle's lower bound, summaries over the pairs, and the trade-off of peak against "
        "transfers for a few layers.",
    )
    migration.add_argument("--data", help=DATA_HELP)
    migration.add_argument(
        "--quick", action="store_true", help="3 traces, 4 layers, one interval, one curve"
    )
    migration.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    migration.add_argument(
        "--plot", metavar="DIR", help="also draw the trade-off curves (needs matplotlib)"
    )
    migration.add_argument(
        "--interval-layers",
        type=bounded_int(0, 1000),
        metavar="K",
        help="layers per pair that also get the oracle's CP-SAT interval, about 10 s each "
        "(default 1; 0 for none)",
    )
    migration.add_argument(
        "--interval-pairs",
        type=bounded_int(0, 1_000_000),
        metavar="M",
        help="how many pairs, spread over all of them, get those intervals (default 12; "
        "0 for none)",
    )
    migration.add_argument(
        "--tradeoff-layers",
        type=bounded_int(0, 1000),
        metavar="K",
        help="layers of the median pair that get the oracle's trade-off curve, minutes each "
        "(default 3; 0 for none)",
    )
    add_backend_options(migration, default_workers=None)
    migration.set_defaults(handler=run_migration)

    from eplb_spec.plots import add_plot_commands

    add_plot_commands(commands)
    add_evaluate_commands(commands)
    return parser


def run_oracle_bench(args: argparse.Namespace) -> int:
    from properties.distribute import Inline, choose_backend
    from studies.oracle_bench import parse_clusters, run_oracle_benchmark

    clusters = parse_clusters(args.clusters) if args.clusters else [TRACE_CLUSTER]
    local = args.scheduler is None and args.ray is None and args.workers in (None, 1)
    backend = Inline() if local else choose_backend(args.workers, args.scheduler, args.ray)
    try:
        return run_oracle_benchmark(
            args.data, args.quick, args.json, clusters, backend, sweep_only=args.sweep_only
        )
    finally:
        backend.close()


def run_migration(args: argparse.Namespace) -> int:
    from properties.distribute import Inline, choose_backend
    from studies.migration import run_migration_study

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    local = args.scheduler is None and args.ray is None and args.workers == 1
    backend = Inline() if local else choose_backend(args.workers, args.scheduler, args.ray)
    try:
        return run_migration_study(
            args.data,
            args.quick,
            args.json,
            args.plot,
            backend,
            args.interval_layers,
            args.interval_pairs,
            tradeoff_layers=getattr(args, "tradeoff_layers", None),
            started=getattr(args, "started", None),
        )
    finally:
        backend.close()


def run_gate_command(args: argparse.Namespace) -> int:
    from properties.gate import gate_main
    from properties.workloads import default_workloads

    # --timeout and --max-gap were checked by their argparse types
    default_workloads(args.data)  # a bad trace is an error now, not after the checks
    if args.plot is not None:
        from eplb_spec.plots import gate_with_figure

        return gate_with_figure(args, run_gate_command)

    if args.same_as is None and args.same_balance:
        raise ValueError("--same-balance applies to the fidelity mode: give --same-as REFERENCE")
    if args.same_as is not None:
        from properties.gate import same_as_main

        not_in_fidelity = {
            "--max-gap": args.max_gap,
            "--checks": args.checks,
            "--skip": args.skip,
            "--refine-a": args.refine_a,
            "--refine-b": args.refine_b,
            "--previous": getattr(args, "previous", None),
            "--schedule": getattr(args, "schedule", None),
            "--no-exchanges": getattr(args, "no_exchanges", None),
            "--eps": getattr(args, "eps", None),
            "--max-transfers": getattr(args, "max_transfers", None),
        }
        given = [option for option, value in not_in_fidelity.items() if value is not None]
        if given:
            raise ValueError(
                f"--same-as runs the fidelity mode alone; {', '.join(given)} belong to the "
                "gate's checks (run them without --same-as)"
            )

        return same_as_main(
            args.impl,
            args.same_as,
            args.quick,
            args.timeout,
            args.data,
            args.json,
            args.same_balance,
            args.memory_mb,
        )

    return gate_main(
        args.impl,
        args.quick,
        args.timeout,
        args.max_gap,
        args.data,
        args.json,
        args.refine_a,
        args.refine_b,
        checks=split_sections(args.checks),
        skip=split_sections(args.skip),
        memory_mb=args.memory_mb,
        previous=getattr(args, "previous", None),
        schedule=getattr(args, "schedule", None),
        schedule_exchanges=None if not getattr(args, "no_exchanges", None) else False,
        started=getattr(args, "started", None),
        eps=getattr(args, "eps", None),
        max_transfers=getattr(args, "max_transfers", None),
    )


def run_vectors(args: argparse.Namespace) -> int:
    from properties.vectors import TIERS, write_tiers

    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise ValueError(f"--tiers must name some of {', '.join(TIERS)}, got {args.tiers!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {args.out}: cannot create the folder ({error.strerror})") from None
    for tier in tiers:
        check_writable(str(out / f"{tier}.json"), "--out")
    defaults = {"small": 60, "medium": 30, "large": 12}
    counts = {t: args.count if args.count is not None else defaults.get(t, 10) for t in tiers}
    for path in write_tiers(Path(args.out), tiers, counts):
        print(f"wrote {path}")
    return 0


def run_balancer_vectors(args: argparse.Namespace) -> int:
    from properties.balancer_vectors import write_tiers

    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    for path in write_tiers(Path(args.out), tiers, args.data):
        count = json.loads(path.read_text())["manifest"]["count"]
        print(f"wrote {path}: {count} vectors, {path.stat().st_size} bytes")
    return 0


def run_solve(args: argparse.Namespace) -> int:
    from oracle.instances import read_instance, solve_instance_answer, write_solution

    document = read_instance(args.file)
    result, answer = solve_instance_answer(document)
    print(json.dumps(result.to_json(), indent=2))
    if args.out:
        write_solution(args.out, document, result, answer)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from studies.bench import run_benchmark

    if not 1 <= args.rounds <= MAX_ROUNDS:
        raise ValueError(f"--rounds must be between 1 and {MAX_ROUNDS}, got {args.rounds}")
    return run_benchmark(args.data, args.rounds, args.json)


def add_backend_options(parser: argparse.ArgumentParser, default_workers: int | None) -> None:
    """Where jobs run: a local process pool, a Dask cluster or a Ray cluster."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="local worker processes (default "
        + (f"{default_workers})" if default_workers else "the CPU count)"),
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a Dask scheduler (tcp://host:8786), or local:N for a LocalCluster of N "
        "processes (pip install 'eplb-spec[dask]')",
    )
    where.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="a Ray cluster (auto, ray://host:10001), or local (pip install 'eplb-spec[ray]')",
    )


def add_evaluate_commands(commands: argparse._SubParsersAction[OneLineParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score candidate balancers for a program search (JSON: metrics, "
        "combined_score, feedback)",
        description="One PROGRAM.py: one JSON object. Several, a folder (its *.py) or a glob "
        "('dir/**/*.py'): one JSON line per program, as each is done; with --out FILE, "
        "programs already scored there (same bytes, function, evaluator and settings) are "
        "skipped. Exit status: 0 every program scored (whatever its verdict), 1 some could "
        "not be, 2 bad arguments, 3 an internal error.",
    )
    evaluate.add_argument("programs", nargs="+", metavar="PROGRAM", help="PROGRAM.py[:FUNCTION]")
    evaluate.add_argument(
        "--function", default="rebalance_experts", help="default: rebalance_experts"
    )
    evaluate.add_argument(
        "--thorough", action="store_true", help="the gate's thorough budget (default: quick)"
    )
    evaluate.add_argument("--checks", metavar="SECTIONS", help="comma-separated gate sections")
    evaluate.add_argument("--skip", metavar="SECTIONS", help="sections to leave out")
    evaluate.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per call (default 30)"
    )
    evaluate.add_argument(
        "--memory-mb",
        type=bounded_int(MIN_MEMORY_MB, MAX_MEMORY_MB),
        default=4096,
        help="address-space limit of a program (MB)",
    )
    evaluate.add_argument("--data", help=DATA_HELP)
    evaluate.add_argument(
        "--no-speed", action="store_true", help="do not time against the fast path"
    )
    evaluate.add_argument("--out", metavar="FILE", help="append JSON lines here (resumable)")
    evaluate.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="tries per program when a worker is lost (default 3)",
    )
    add_backend_options(evaluate, default_workers=None)
    evaluate.set_defaults(handler=run_evaluate)

    bench = commands.add_parser(
        "evaluate-bench",
        help="candidates per hour of the evaluator: local pool and Dask LocalCluster",
    )
    bench.add_argument("--candidates", type=int, default=8, help="programs per run (default 8)")
    bench.add_argument("--repeats", type=int, default=1, help="runs per backend (default 1)")
    bench.add_argument(
        "--backends",
        default=None,
        help="comma-separated pool:N / dask:N (default pool:1,pool:2,dask:2; without "
        "Dask installed, pool:1,pool:2 and a note)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(handler=run_evaluate_bench)


def split_sections(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def run_evaluate(args: argparse.Namespace) -> int:
    from properties.evaluate import evaluate_main, make_settings

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    settings = make_settings(
        quick=not args.thorough,
        checks=split_sections(args.checks),
        skip=split_sections(args.skip),
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        data=args.data,
        measure_speed=not args.no_speed,
    )
    return evaluate_main(
        args.programs,
        function=args.function,
        settings=settings,
        out=args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        ray=args.ray,
        max_attempts=args.max_attempts,
    )


def run_evaluate_bench(args: argparse.Namespace) -> int:
    from studies.evaluate_bench import run_evaluate_benchmark

    return run_evaluate_benchmark(args.candidates, args.repeats, args.backends, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; reported times count from the process's start when run as a
    program (``argv`` None), from this call otherwise."""
    from properties.progress import process_started

    started = process_started() if argv is None else time.perf_counter()
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in ("-h", "--help")):
        arguments.insert(0, "report")
    try:
        args = parser.parse_args(arguments)
        args.started = started
        check_writable(getattr(args, "json", None), "--json")
        if getattr(args, "data", None) is not None:
            from properties.traces import find_trace_dir

            find_trace_dir(args.data)
        code: int = args.handler(args)
    except (ValueError, TypeError) as error:
        print(f"eplb-spec: error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
