"""Rebalancing on the real traces: how many transfers each way of rebalancing needs.

For every ordered pair of traces (old, new), the cluster runs the reference's placement
of the old trace and rebalances to the new trace's loads (every layer). Per pair, summed
over the layers:

- ``stateless``: the reference's placement of the new loads, as it comes;
- ``slots_kept``: the same, with slot preservation alone (``impl.keep_slots``; what
  vLLM 0.33.0 does): the same transfers, fewer slots rewritten;
- ``relabeled``: the relabeling optimum (``impl.migrate``): the fewest transfers among
  the placements with exactly the stateless answer's GPU loads;
- ``lower_bound``: a lower bound on the fewest transfers of *any* valid placement whose
  peak in each layer is at most the stateless answer's (counts and slots free): the
  analytical bound of ``oracle.migration`` (``analytical_lower_bounds``, no CP-SAT: the
  CP-SAT part takes seconds per layer, too slow for every layer of every pair);
- on ``interval_layers`` layers per pair, the certified interval of
  ``fewest_transfers_interval`` (CP-SAT, one worker, seed 0) at the same budget.

Plus the trade-off curve (``tradeoff_curve``: the fewest transfers for a peak at most
``(1 + eps)`` times the best known) for a few layers of one pair. Jobs (one per new
trace, one per trade-off layer) run on a ``properties.distribute`` backend.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from impl.balancer import balance
from oracle.cpsat import SolverSettings
from oracle.migration import (
    analytical_lower_bounds,
    best_known_peak,
    fewest_transfers_interval,
    placement_peak,
    tradeoff_curve,
)
from oracle.result import Status
from properties.distribute import Backend, Inline, run_jobs
from properties.progress import progress
from properties.rebalance import relabeling_optimum
from properties.workloads import TRACE_CLUSTER, Workload, default_workloads, generated_loads
from spec.migration import count_transfers, exact_gpu_loads, network_nodes
from spec.problem import BalancingProblem
from studies.budgeted import (
    BOUND_EPS,
    BUDGETED_EPS,
    BudgetedFigures,
    budgeted_pairs,
    budgeted_summary,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Cluster = tuple[int, int, int, int]

WAYS = ("stateless", "slots_kept", "relabeled")
DEFAULT_EPS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
QUICK_EPS = (0.0, 0.1)


@dataclass(frozen=True)
class Settings:
    """What the study computes: ``traces`` (None: all), ``layers`` (None: all) per trace,
    CP-SAT intervals on ``interval_layers`` layers of the first ``interval_pairs`` pairs
    of ``neighbour_pairs`` (None: every pair; about 10 s a layer, so by default one per
    trace), and the trade-off curve of ``tradeoff_layers`` layers at ``eps``;
    ``time_limit_s`` per CP-SAT solve."""

    traces: int | None = None
    layers: int | None = None
    interval_layers: int = 1
    interval_pairs: int | None = 12
    tradeoff_layers: int = 3
    eps: tuple[float, ...] = DEFAULT_EPS
    time_limit_s: float = 10.0
    budgeted_eps: tuple[float, ...] = BUDGETED_EPS
    budgeted_bound_eps: tuple[float, ...] = BOUND_EPS

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            traces=3,
            layers=4,
            interval_layers=1,
            interval_pairs=1,
            tradeoff_layers=1,
            eps=QUICK_EPS,
            time_limit_s=2.0,
        )


@dataclass(frozen=True)
class Interval:
    """The certified interval on the fewest transfers of one layer at the budget."""

    layer: int
    lower: int
    upper: int | None
    relabeled: int
    status: str
    seconds: float


@dataclass(frozen=True)
class PairFigures:
    """One (old trace, new trace) pair, summed over its layers (``WAYS`` keys)."""

    old: str
    new: str
    layers: int
    transfers: dict[str, int]
    inter_node: dict[str, int]
    rewritten: dict[str, int]  # slots whose expert changes
    lower_bound: int  # analytical, summed over the layers
    layers_at_bound: int  # layers where the relabeling optimum meets the bound: proven fewest
    intervals: list[Interval] = field(default_factory=list)
    budgeted: list[BudgetedFigures] = field(default_factory=list)  # one per budgeted eps


@dataclass(frozen=True)
class NewTraceJob:
    """Every pair into one new trace: the old placements, the new loads."""

    new: str
    loads: FloatArray
    olds: tuple[tuple[str, IntArray], ...]
    cluster: Cluster
    interval_layers: tuple[int, ...]
    interval_olds: frozenset[str]  # the old traces whose pairs get intervals
    time_limit_s: float
    budgeted_eps: tuple[float, ...] = BUDGETED_EPS
    budgeted_bound_eps: tuple[float, ...] = BOUND_EPS


def sizes(problem: BalancingProblem) -> dict[str, int]:
    return {
        "num_experts": problem.num_experts,
        "num_gpus": problem.num_gpus,
        "num_nodes": network_nodes(problem),
    }


def stateless_peaks(problem: BalancingProblem, phy2log: IntArray) -> list[Fraction]:
    """The exact peak GPU load of each layer."""
    return [max(row) for row in exact_gpu_loads(problem.loads, phy2log, problem.num_gpus)]


def new_trace_job(job: NewTraceJob) -> list[PairFigures]:
    """The figures of every pair into ``job.new``."""
    problem = BalancingProblem(job.loads, *job.cluster)
    stateless = balance(problem).phy2log
    peaks = stateless_peaks(problem, stateless)
    placements: list[dict[str, IntArray]] = [
        {
            "stateless": stateless,
            "slots_kept": relabeling_optimum(problem, old, stateless, relabel=False),
            "relabeled": relabeling_optimum(problem, old, stateless),
        }
        for _, old in job.olds
    ]
    bounds = [
        analytical_lower_bounds(problem, layer, [old[layer] for _, old in job.olds], peaks[layer])
        for layer in range(problem.num_layers)
    ]
    settings = SolverSettings(time_limit_s=job.time_limit_s)
    budgeted = budgeted_pairs(
        problem, [old for _, old in job.olds], peaks, job.budgeted_eps, job.budgeted_bound_eps
    )
    results = []
    for index, (name, old) in enumerate(job.olds):
        counts = {
            way: count_transfers(old, placements[index][way], **sizes(problem)) for way in WAYS
        }
        fewest = counts["relabeled"].per_layer
        lower = [bounds[layer][index] for layer in range(problem.num_layers)]
        if any(b is None for b in lower):
            raise AssertionError("the reference's own placement meets the budget")
        intervals = []
        for layer in job.interval_layers if name in job.interval_olds else ():
            start = time.perf_counter()
            row = placements[index]["relabeled"][layer].tolist()
            answer = fewest_transfers_interval(
                problem, layer, old, peaks[layer], [row], settings=settings
            ).result
            intervals.append(
                Interval(
                    layer,
                    int(answer.bound),
                    None if answer.objective is None else int(answer.objective),
                    int(fewest[layer]),
                    answer.status.value,
                    time.perf_counter() - start,
                )
            )
        results.append(
            PairFigures(
                old=name,
                new=job.new,
                layers=problem.num_layers,
                transfers={way: counts[way].total for way in WAYS},
                inter_node={way: int(counts[way].inter_node.sum()) for way in WAYS},
                rewritten={way: int(counts[way].rewritten.sum()) for way in WAYS},
                lower_bound=sum(int(b) for b in lower if b is not None),
                layers_at_bound=sum(
                    int(fewest[layer]) == lower[layer] for layer in range(problem.num_layers)
                ),
                intervals=intervals,
                budgeted=budgeted[index],
            )
        )
    return results


@dataclass(frozen=True)
class TradeoffJob:
    old: str
    new: str
    layer: int
    loads: FloatArray
    previous: IntArray
    cluster: Cluster
    eps: tuple[float, ...]
    time_limit_s: float


@dataclass(frozen=True)
class TradeoffPointFigure:
    eps: float
    budget_over_best: float
    lower: int | None
    upper: int | None
    status: str


@dataclass(frozen=True)
class TradeoffFigures:
    """One layer's trade-off curve, and where each way of rebalancing lands on it
    (``peaks``: peak over the best known; ``transfers``)."""

    old: str
    new: str
    layer: int
    best_peak: float
    points: list[TradeoffPointFigure]
    peaks: dict[str, float]  # WAYS and "old" (the old placement kept as it is)
    transfers: dict[str, int]
    seconds: float


def tradeoff_job(job: TradeoffJob) -> TradeoffFigures:
    start = time.perf_counter()
    problem = BalancingProblem(job.loads, *job.cluster)
    stateless = balance(problem).phy2log
    layer = job.layer
    relabeled = relabeling_optimum(problem, job.previous, stateless)
    rows = {"stateless": stateless[layer].tolist(), "relabeled": relabeled[layer].tolist()}
    settings = SolverSettings(time_limit_s=job.time_limit_s)
    best = best_known_peak(problem, layer, [rows["stateless"]], settings=settings)
    curve = tradeoff_curve(
        problem,
        layer,
        job.previous,
        list(job.eps),
        best_peak=best,
        candidates=[rows["relabeled"]],
        settings=settings,
    )

    def over_best(peak: Fraction) -> float:
        return float(peak / best) if best > 0 else 1.0

    old_row = job.previous[layer].tolist()
    new_transfers = count_transfers(job.previous, relabeled, **sizes(problem)).per_layer
    plain = count_transfers(job.previous, stateless, **sizes(problem)).per_layer
    return TradeoffFigures(
        old=job.old,
        new=job.new,
        layer=layer,
        best_peak=float(best),
        points=[
            TradeoffPointFigure(float(p.eps), over_best(p.budget), p.lower, p.upper, p.status.value)
            for p in curve
        ],
        peaks={
            "stateless": over_best(placement_peak(problem, layer, rows["stateless"])),
            "slots_kept": over_best(placement_peak(problem, layer, rows["stateless"])),
            "relabeled": over_best(placement_peak(problem, layer, rows["relabeled"])),
            "old": over_best(placement_peak(problem, layer, old_row)),
        },
        transfers={
            "stateless": int(plain[layer]),
            "slots_kept": int(plain[layer]),
            "relabeled": int(new_transfers[layer]),
            "old": 0,
        },
        seconds=time.perf_counter() - start,
    )


def study_workloads(data: str | None, count: int | None) -> tuple[list[Workload], str]:
    """The real traces (the first ``count``); without them, as many generated
    workloads of the same shape (seeds 0, 1, ...), and a note saying which."""
    workloads, note = default_workloads(data)
    if workloads[0].generated:
        wanted = count or 12
        workloads = [
            Workload(f"generated-lognormal-seed{seed}", generated_loads(seed), generated=True)
            for seed in range(wanted)
        ]
        note = note.replace("a GENERATED workload", f"{wanted} GENERATED workloads")
    return (workloads if count is None else workloads[:count]), note


def spread(count: int, total: int) -> tuple[int, ...]:
    """``count`` indices spread evenly over ``range(total)``."""
    count = min(count, total)
    return tuple(sorted({round((i + 0.5) * total / count - 0.5) for i in range(count)}))


def neighbour_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered pair, each trace to the next one first (``i -> i + 1``, wrapping),
    then to the one after (``i -> i + 2``), ...: any prefix of ``n`` pairs has each trace
    once as the old and once as the new one."""
    count = len(names)
    return [
        (names[i], names[(i + shift) % count]) for shift in range(1, count) for i in range(count)
    ]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "worst": float(max(values))}


@dataclass
class StudyResult:
    note: str
    cluster: Cluster
    settings: Settings
    pairs: list[PairFigures]
    tradeoffs: list[TradeoffFigures]
    seconds: float
    backend: str
    errors: list[str]

    def summaries(self) -> dict[str, Any]:
        """Median and worst over the pairs of each column, and of the gaps."""
        result: dict[str, Any] = {}
        for way in WAYS:
            result[way] = summary([p.transfers[way] for p in self.pairs])
        result["lower_bound"] = summary([p.lower_bound for p in self.pairs])
        result["slots_kept_minus_relabeled"] = summary(
            [p.transfers["slots_kept"] - p.transfers["relabeled"] for p in self.pairs]
        )
        result["relabeled_over_slots_kept"] = summary(
            [p.transfers["relabeled"] / max(p.transfers["slots_kept"], 1) for p in self.pairs]
        )
        result["rewritten"] = {way: summary([p.rewritten[way] for p in self.pairs]) for way in WAYS}
        result["inter_node"] = {
            way: summary([p.inter_node[way] for p in self.pairs]) for way in WAYS
        }
        if self.pairs and self.pairs[0].budgeted:
            result["budgeted"] = budgeted_summary([p.budgeted for p in self.pairs])
        intervals = [i for p in self.pairs for i in p.intervals]
        if intervals:
            result["intervals"] = {
                "layers": len(intervals),
                "relabeled": sum(i.relabeled for i in intervals),
                "lower": sum(i.lower for i in intervals),
                "upper": sum(i.upper for i in intervals if i.upper is not None),
                "upper_known": sum(i.upper is not None for i in intervals),
                "proven": sum(i.status == Status.OPTIMAL.value for i in intervals),
                "median_seconds": statistics.median(i.seconds for i in intervals),
            }
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "source": self.note,
            "cluster": list(self.cluster),
            "settings": asdict(self.settings),
            "oracle_bound": (
                "analytical lower bound of oracle.migration (no CP-SAT) on every layer; "
                "CP-SAT intervals (fewest_transfers_interval) on the layers listed per pair"
            ),
            "summary": self.summaries(),
            "pairs": [asdict(p) for p in self.pairs],
            "tradeoffs": [asdict(t) for t in self.tradeoffs],
            "seconds": self.seconds,
            "backend": self.backend,
            "errors": self.errors,
        }


def run_study(
    data: str | None,
    settings: Settings,
    backend: Backend | None = None,
    cluster: Cluster = TRACE_CLUSTER,
    started: float | None = None,
) -> StudyResult:
    """The study on the traces in ``data`` (or the shipped ones, or generated); its time
    counts from ``started`` (a ``time.perf_counter()``; default: now)."""
    start = time.perf_counter() if started is None else started
    backend = backend or Inline()
    workloads, note = study_workloads(data, settings.traces)
    if len(workloads) < 2:
        raise ValueError(f"the study needs at least 2 traces, found {len(workloads)}")
    layers = settings.layers
    loads = {w.name: (w.loads if layers is None else w.loads[:layers]) for w in workloads}
    placements = {
        name: balance(BalancingProblem(value, *cluster)).phy2log
        for name, value in progress(loads.items(), "placements", len(loads))
    }
    num_layers = next(iter(loads.values())).shape[0]
    interval_layers = spread(settings.interval_layers, num_layers)
    names = [w.name for w in workloads]
    with_intervals = set(neighbour_pairs(names)[: settings.interval_pairs])
    jobs = [
        NewTraceJob(
            new,
            loads[new],
            tuple((old, placements[old]) for old in names if old != new),
            cluster,
            interval_layers,
            frozenset(old for old, into in with_intervals if into == new),
            settings.time_limit_s,
            settings.budgeted_eps,
            settings.budgeted_bound_eps,
        )
        for new in names
    ]
    errors: list[str] = []
    by_pair: dict[tuple[str, str], PairFigures] = {}
    for outcome in progress(run_jobs(new_trace_job, jobs, backend), "traces", len(jobs)):
        if outcome.value is None:
            errors.append(f"pairs into {outcome.job.new}: {outcome.error}")
            continue
        for figures in outcome.value:
            by_pair[(figures.old, figures.new)] = figures
    pairs = [by_pair[(a, b)] for a in names for b in names if (a, b) in by_pair]
    tradeoffs = tradeoff_figures(pairs, loads, placements, cluster, settings, backend, errors)
    return StudyResult(
        note,
        cluster,
        settings,
        pairs,
        tradeoffs,
        time.perf_counter() - start,
        backend.description,
        errors,
    )


def tradeoff_pair(pairs: Sequence[PairFigures]) -> PairFigures:
    """The pair whose relabeling optimum is the median over the pairs (the lower one)."""
    ordered = sorted(pairs, key=lambda p: (p.transfers["relabeled"], p.old, p.new))
    return ordered[(len(ordered) - 1) // 2]


def tradeoff_figures(
    pairs: Sequence[PairFigures],
    loads: dict[str, FloatArray],
    placements: dict[str, IntArray],
    cluster: Cluster,
    settings: Settings,
    backend: Backend,
    errors: list[str],
) -> list[TradeoffFigures]:
    """The curves of ``settings.tradeoff_layers`` layers of the median pair: its layers
    ordered by the relabeling optimum's transfers, then spread over that order (the
    fewest, the median, the most, ...)."""
    if not pairs or settings.tradeoff_layers < 1:
        return []
    pair = tradeoff_pair(pairs)
    problem = BalancingProblem(loads[pair.new], *cluster)
    stateless = balance(problem).phy2log
    previous = placements[pair.old]
    relabeled = relabeling_optimum(problem, previous, stateless)
    per_layer = count_transfers(previous, relabeled, **sizes(problem)).per_layer
    order = sorted(range(problem.num_layers), key=lambda layer: (int(per_layer[layer]), layer))
    chosen = [order[i] for i in spread(settings.tradeoff_layers, len(order))]
    jobs = [
        TradeoffJob(
            pair.old,
            pair.new,
            layer,
            loads[pair.new],
            previous,
            cluster,
            settings.eps,
            settings.time_limit_s,
        )
        for layer in chosen
    ]
    found = {}
    for outcome in progress(run_jobs(tradeoff_job, jobs, backend), "trade-offs", len(jobs)):
        if outcome.value is None:
            errors.append(f"trade-off of layer {outcome.job.layer}: {outcome.error}")
        else:
            found[outcome.value.layer] = outcome.value
    return [found[layer] for layer in chosen if layer in found]


# --- printing -----------------------------------------------------------------------------


def print_study(result: StudyResult) -> None:
    replicas, groups, nodes, gpus = result.cluster
    pairs = result.pairs
    layers = pairs[0].layers if pairs else 0
    print(
        f"eplb-spec migration study ({result.note}); (R, Gr, N, P) = "
        f"({replicas}, {groups}, {nodes}, {gpus}); {len(pairs)} ordered pairs x {layers} layers; "
        f"{result.backend}"
    )
    print(
        "per pair (old placement -> new loads), transfers summed over the layers:\n"
        "  stateless: the reference's placement of the new loads as it comes\n"
        "  slots kept: the same with slot preservation alone (vLLM's rule): the same "
        "transfers, fewer slots rewritten\n"
        "  relabeled: the relabeling optimum (exactly the stateless GPU loads)\n"
        "  bound: lower bound on any placement at most as peaked, layer by layer "
        "(ANALYTICAL bound of oracle.migration on every layer; CP-SAT too slow for all)"
    )
    print(
        f"{'old -> new':<48}{'stateless':>10}{'relabeled':>10}{'bound':>7}"
        f"{'kept-relab':>11}{'rewritten s/k/r':>22}"
    )
    for p in pairs:
        rewritten = "/".join(str(p.rewritten[w]) for w in WAYS)
        print(
            f"{p.old + ' -> ' + p.new:<48}{p.transfers['stateless']:>10}"
            f"{p.transfers['relabeled']:>10}{p.lower_bound:>7}"
            f"{p.transfers['slots_kept'] - p.transfers['relabeled']:>11}{rewritten:>22}"
        )
    s = result.summaries()
    if pairs:
        print("\nover the pairs (median / worst):")
        for key, label in [
            ("stateless", "stateless transfers"),
            ("slots_kept", "slot preservation alone"),
            ("relabeled", "relabeling optimum"),
            ("lower_bound", "oracle's bound (analytical)"),
            ("slots_kept_minus_relabeled", "slot preservation - relabeling optimum"),
        ]:
            print(f"  {label:<42}{s[key]['median']:>10.0f} / {s[key]['worst']:.0f}")
        ratio = s["relabeled_over_slots_kept"]
        print(
            f"  {'relabeling optimum / slot preservation':<42}{ratio['median']:>10.3f} / "
            f"{ratio['worst']:.3f}"
        )
        for way in WAYS:
            r = s["rewritten"][way]
            print(f"  {'slots rewritten, ' + way:<42}{r['median']:>10.0f} / {r['worst']:.0f}")
        at_bound = sum(p.layers_at_bound for p in pairs)
        print(
            f"  layers where the relabeling optimum meets the bound (proven fewest): "
            f"{at_bound} of {sum(p.layers for p in pairs)}"
        )
    if "budgeted" in s:
        print_budgeted(s["budgeted"], s)
    if "intervals" in s:
        i = s["intervals"]
        print(
            f"\nCP-SAT intervals (fewest_transfers_interval, {result.settings.time_limit_s:g} s "
            f"per solve) on {i['layers']} layer(s): relabeling optimum {i['relabeled']}, "
            f"fewest in [{i['lower']}, {i['upper']}] ({i['upper_known']} with a placement, "
            f"{i['proven']} proven), median {i['median_seconds']:.1f} s a layer"
        )
    for t in result.tradeoffs:
        print(
            f"\ntrade-off, {t.old} -> {t.new}, layer {t.layer} (best known peak {t.best_peak:.0f}; "
            f"stateless/relabeled peak {t.peaks['relabeled']:.4f} x best, the old placement "
            f"{t.peaks['old']:.4f} x best):"
        )
        print(f"  {'eps':>6}{'peak <= x best':>16}{'fewest transfers':>20}  status")
        for point in t.points:
            upper = "?" if point.upper is None else str(point.upper)
            lower = "-" if point.lower is None else str(point.lower)
            interval = f"[{lower}, {upper}]"
            print(f"  {point.eps:>6g}{point.budget_over_best:>16.4f}{interval:>20}  {point.status}")
        print(
            f"  stateless {t.transfers['stateless']}, relabeled {t.transfers['relabeled']} "
            f"transfers ({t.seconds:.0f} s)"
        )
    for error in result.errors:
        print(f"NOT COMPUTED: {error}")
    print(f"\n{result.seconds:.0f} s")


def print_budgeted(rows: Sequence[dict[str, Any]], s: dict[str, Any]) -> None:
    print(
        "\nbudgeted rebalancing (impl.incremental, fast path): peak within (1 + eps) x the "
        "stateless peak, per pair (median / worst over the pairs); the bound is "
        "oracle.budgeted's load-flow lower bound for the same peak (analytical in brackets); "
        "CPU seconds per whole pair (process time, one thread)"
    )
    print(
        f"  {'eps':>6}{'transfers':>18}{'bound (analytical)':>28}{'x bound':>16}"
        f"{'fell back':>10}{'s / pair':>14}{'bound s':>10}"
    )
    for row in rows:
        t, b, a, x = row["transfers"], row["bound"], row["analytical"], row["transfers_over_bound"]
        bound = (
            f"{b['median']:>9.0f} / {b['worst']:<5.0f} ({a['median']:.0f})"
            if b is not None
            else f"{'-':>18}"
        )
        over = f"{x['median']:>8.2f} / {x['worst']:<5.2f}" if x is not None else f"{'-':>16}"
        print(
            f"  {row['eps']:>6g}{t['median']:>9.0f} / {t['worst']:<6.0f}{bound}{over}"
            f"{row['fell_back']:>8}"
            f"{row['seconds']['median']:>8.2f} / {row['seconds']['worst']:<5.2f}"
            + (f"{row['bound_seconds']['median']:>8.1f}" if b is not None else "")
        )
    print(
        f"  beside: stateless {s['stateless']['median']:.0f} / {s['stateless']['worst']:.0f}, "
        f"slot preservation {s['slots_kept']['median']:.0f} / {s['slots_kept']['worst']:.0f}, "
        f"relabeling optimum {s['relabeled']['median']:.0f} / {s['relabeled']['worst']:.0f} "
        f"(all at the stateless peak exactly)"
    )


def run_migration_study(
    data: str | None,
    quick: bool,
    json_path: str | None,
    plot: str | None,
    backend: Backend | None = None,
    interval_layers: int | None = None,
    interval_pairs: int | None = None,
    started: float | None = None,
    tradeoff_layers: int | None = None,
) -> int:
    """``eplb-spec migration``; its time counts from ``started`` (the command's start)."""
    settings = Settings.quick() if quick else Settings()
    if interval_layers is not None:
        settings = replace(settings, interval_layers=interval_layers)
    if interval_pairs is not None:
        settings = replace(settings, interval_pairs=interval_pairs)
    if tradeoff_layers is not None:
        settings = replace(settings, tradeoff_layers=tradeoff_layers)
    folder = None
    if plot is not None:
        from studies.plots import prepare_folder

        folder = prepare_folder(plot, "--plot")
    result = run_study(data, settings, backend, started=started)
    print_study(result)
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if folder is not None and result.pairs and result.pairs[0].budgeted:
        from studies.budgeted import budgeted_figure
        from studies.plots import save_figure

        for path in save_figure(budgeted_figure(result.pairs), folder, "migration-budgeted"):
            print(f"wrote {path}")
    if folder is not None and result.tradeoffs:
        from studies.plots import save_figure, tradeoff_figure

        for path in save_figure(tradeoff_figure(result.tradeoffs), folder, "migration-tradeoff"):
            print(f"wrote {path}")
    return 1 if result.errors else 0
