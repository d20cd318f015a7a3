"""The speed benchmark: reference, baseline and fast implementation, side by side.

Every timing is a median over repeated calls after warm-up, with the implementations
interleaved round by round so that drift on the machine hits them alike. Ratios are
taken within this one run. Nothing here is asserted: speed claims live only here.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from impl.balancer import Variant, balance
from impl.fast import default_threads
from impl.steps import layout_by_expert, water_fill
from properties.workloads import TRACE_CLUSTER, default_workloads, generated_loads
from spec.problem import BalancingProblem

LARGE_SHAPE = (96, 512)
E2E_REPEATS = 300  # calls of each part of the fast path's breakdown
LARGE_CLUSTER = (576, 16, 8, 64)


@dataclass(frozen=True)
class Contender:
    name: str
    variant: str
    fast: bool
    threads: int | None = None


CONTENDERS = (
    Contender("baseline (reference)", "baseline", False),
    Contender("refined (reference)", "refined", False),
    Contender("baseline (fast)", "baseline", True),
    Contender("refined (fast, 1 thread)", "refined", True, threads=1),
    Contender("refined (fast)", "refined", True),
)


@dataclass(frozen=True)
class Timing:
    case: str
    contender: str
    median_ms: float
    speedup_vs_baseline: float


@dataclass(frozen=True)
class ScalingPoint:
    axis: str
    layers: int
    experts: int
    replicas: int
    gpus: int
    median_ms: float
    ms_per_layer: float


def call(problem: BalancingProblem, contender: Contender) -> Callable[[], object]:
    variant: Variant = "refined" if contender.variant == "refined" else "baseline"
    return lambda: balance(problem, variant=variant, fast=contender.fast, threads=contender.threads)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def time_side_by_side(
    problems: Sequence[BalancingProblem], contenders: Sequence[Contender], rounds: int
) -> dict[str, float]:
    """Median ms per call of each contender, interleaved over problems and rounds."""
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for contender in contenders:  # warm-up: compile and fill caches
        call(problems[0], contender)()
    for _ in range(rounds):
        for problem in problems:
            for contender in contenders:
                run = call(problem, contender)
                repeats = 20 if contender.fast else 1
                start = time.perf_counter()
                for _ in range(repeats):
                    run()
                samples[contender.name].append((time.perf_counter() - start) / repeats)
    return {name: median_ms(values) for name, values in samples.items()}


def timings_for(case: str, medians: dict[str, float]) -> list[Timing]:
    base = medians[CONTENDERS[0].name]
    return [Timing(case, name, ms, base / ms) for name, ms in medians.items()]


def fast_scaling(rounds: int) -> list[ScalingPoint]:
    """How the fast refined balancer's time grows with layers, experts and GPUs."""
    fast_refined = CONTENDERS[-1]
    points: list[tuple[str, int, int, int, int, int, int]] = []
    for layers in (29, 58, 116, 232, 464):
        points.append(("layers", layers, 256, 288, 8, 4, 32))
    for experts in (64, 128, 256, 512, 1024):
        points.append(("experts", 58, experts, experts + experts // 8, 8, 4, 32))
    for gpus in (8, 16, 32, 64, 128):
        points.append(("gpus", 58, 256, max(288, gpus * 2), 8, 4, gpus))
    result = []
    for axis, layers, experts, at_least, groups, nodes, gpus in points:
        replicas = at_least + (-at_least) % gpus
        loads = generated_loads(seed=1, num_layers=layers, num_experts=experts)
        problem = BalancingProblem(loads, replicas, groups, nodes, gpus)
        ms = time_side_by_side([problem], [fast_refined], rounds)[fast_refined.name]
        result.append(ScalingPoint(axis, layers, experts, replicas, gpus, ms, ms / layers))
    return result


def diverse_greedy_numpy(
    weights: np.ndarray, labels: np.ndarray, num_gpus: int, num_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """The diverse greedy step vectorised with NumPy over all rows (one NumPy pass per
    placement): the alternative the compiled kernel was chosen over, kept for the
    comparison in ``technique_comparison``."""
    rows, count = weights.shape
    cap = count // num_gpus
    order = np.argsort(-weights, axis=1, kind="stable")
    load = np.zeros((rows, num_gpus))
    size = np.zeros((rows, num_gpus), dtype=np.int64)
    held = np.zeros((rows, num_labels, num_gpus), dtype=np.int64)
    pack = np.empty((rows, count), dtype=np.int64)
    rank = np.empty((rows, count), dtype=np.int64)
    every = np.arange(rows)
    never = np.iinfo(np.int64).max
    for step in range(count):
        item = order[:, step]
        label = labels[every, item]
        same = np.where(size >= cap, never, held[every, label])
        chosen = same == same.min(1, keepdims=True)
        lightest = np.where(chosen, load, np.inf)
        chosen &= lightest == lightest.min(1, keepdims=True)
        fewest = np.where(chosen, size, never)
        chosen &= fewest == fewest.min(1, keepdims=True)
        target = chosen.argmax(1)
        pack[every, item] = target
        rank[every, item] = size[every, target]
        load[every, target] += weights[every, item]
        size[every, target] += 1
        held[every, label, target] += 1
    return pack, rank


def technique_comparison(problem: BalancingProblem, rounds: int) -> dict[str, float]:
    """The diverse greedy step on all rows of ``problem``: NumPy-vectorised against the
    compiled kernel (ms per call, medians); both give the same packing."""
    from impl import fast

    groups = fast.group_loads_rows(problem.loads, problem.packing_groups)
    group_pack, group_rank = fast.pack_balanced_rows(groups, problem.packing_nodes)
    experts = fast.node_local_experts_rows(
        group_pack, group_rank, problem.packing_nodes, problem.group_size
    )
    rows = fast.gather_rows(problem.loads, experts, problem.packing_nodes).tolist()
    counts = [water_fill(row, problem.slots_per_node) for row in rows]
    layout = np.array([layout_by_expert(c) for c in counts], dtype=np.int64)
    weights = np.array(
        [
            [row[i] / c[i] for i in labels]
            for row, c, labels in zip(rows, counts, layout, strict=True)
        ]
    )
    gpus, labels = problem.gpus_per_node, problem.experts_per_node
    compiled = fast.pack_diverse_rows(weights, layout, gpus, labels)
    vectorised = diverse_greedy_numpy(weights, layout, gpus, labels)
    if not all(np.array_equal(a, b) for a, b in zip(compiled, vectorised, strict=True)):
        raise AssertionError("the NumPy diverse greedy disagrees with the compiled one")
    result = {}
    for name, run in (
        ("numpy", lambda: diverse_greedy_numpy(weights, layout, gpus, labels)),
        ("compiled", lambda: fast.pack_diverse_rows(weights, layout, gpus, labels)),
    ):
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(5):
                run()
            samples.append((time.perf_counter() - start) / 5)
        result[name] = median_ms(samples)
    return result


@dataclass(frozen=True)
class Stage:
    """One part of the fast path's end-to-end call, timed alone."""

    name: str
    min_ms: float
    median_ms: float


@dataclass(frozen=True)
class Rival:
    """Another balancer on the same trace, in the same run as the fast path."""

    name: str
    median_ms: float
    times_fast: float  # its median over the fast path's end-to-end median
    note: str = ""


END_TO_END = "end to end: rebalance_experts(weight, ..., fast=True)"


def interleaved_samples(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each, the calls interleaved repeat by repeat (after one
    warm-up call each)."""
    for run in calls.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, run in calls.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return samples


def fast_path_breakdown(
    loads: np.ndarray, cluster: tuple[int, int, int, int], repeats: int
) -> list[Stage]:
    """``rebalance_experts(..., fast=True)`` on ``loads`` as int64 token counts in a
    torch tensor (what an engine passes), and each of its parts alone: checking and
    converting the input, step 1 (compiled), steps 2 to 4 with the outputs (compiled),
    and wrapping the outputs as tensors. Min and median ms over ``repeats`` calls."""
    import torch

    from impl import fast, rebalance_experts

    weight = torch.from_numpy(np.ascontiguousarray(loads, dtype=np.int64))
    problem = BalancingProblem(weight, *cluster)
    nodes = problem.packing_nodes
    rows = fast.node_rows(problem.loads, problem.packing_groups, nodes)
    arrays = fast.place_layers(
        *rows,
        problem.num_replicas,
        nodes,
        problem.num_gpus,
        refined=True,
        refine_a=True,
        refine_b=True,
    )
    calls: dict[str, Callable[[], object]] = {
        END_TO_END: lambda: rebalance_experts(weight, *cluster, fast=True),
        "  checking and converting the input (BalancingProblem)": lambda: BalancingProblem(
            weight, *cluster
        ),
        "  step 1, compiled: groups to nodes (fast.node_rows)": lambda: fast.node_rows(
            problem.loads, problem.packing_groups, nodes
        ),
        "  steps 2-4, compiled, outputs filled (fast.place_layers)": lambda: fast.place_layers(
            *rows,
            problem.num_replicas,
            nodes,
            problem.num_gpus,
            refined=True,
            refine_a=True,
            refine_b=True,
        ),
        "  the outputs as torch tensors": lambda: [torch.from_numpy(a) for a in arrays[:3]],
    }
    samples = interleaved_samples(calls, repeats)
    return [Stage(name, min(values) * 1e3, median_ms(values)) for name, values in samples.items()]


def rivals(
    loads: np.ndarray, cluster: tuple[int, int, int, int], rounds: int, fast_median_ms: float
) -> list[Rival]:
    """The readable reference and, where their releases are cached, vLLM's and SGLang's
    balancers on the same trace (each in the dtype its engine's caller passes), timed in
    this run; their ratio to the fast path's end-to-end median."""
    import torch

    from impl import rebalance_experts
    from properties.engines import find_engine, pinned_targets
    from properties.worker import TargetError

    int64 = torch.from_numpy(np.ascontiguousarray(loads, dtype=np.int64))
    calls: dict[str, Callable[[], object]] = {
        "refined (reference, readable)": lambda: rebalance_experts(int64, *cluster),
        "baseline (reference, readable)": lambda: rebalance_experts(
            int64, *cluster, variant="baseline"
        ),
    }
    missing: list[Rival] = []
    for target in pinned_targets():
        try:
            adapter = find_engine(target)
        except TargetError as error:
            missing.append(Rival(target, math.nan, math.nan, f"not timed: {error}"))
            continue
        if adapter is None or adapter.outside_domain(loads.shape[1], cluster):
            continue
        weight = int64.to(getattr(torch, adapter.caller_dtype or "int64"))
        calls[target] = functools.partial(adapter.load(), weight, *cluster)
    samples = interleaved_samples(calls, rounds)
    timed = [
        Rival(name, median_ms(values), median_ms(values) / fast_median_ms)
        for name, values in samples.items()
    ]
    return timed + missing


MEMORY_PROBE = """
import sys
from impl.balancer import Variant, balance
from impl.fast import default_threads
from properties.workloads import generated_loads
from spec.problem import BalancingProblem


def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


layers, experts, replicas, groups, nodes, gpus = (int(x) for x in sys.argv[1:])
warm = BalancingProblem(generated_loads(2, 2, experts), replicas, groups, nodes, gpus)
balance(warm, fast=True)
problem = BalancingProblem(generated_loads(1, layers, experts), replicas, groups, nodes, gpus)
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the peak resident set size (VmHWM) to the current one
before = status_kb("VmRSS")
balance(problem, fast=True)
print(status_kb("VmHWM") - before)
"""


def peak_memory_mb(shape: tuple[int, int], cluster: tuple[int, int, int, int]) -> float | None:
    """Rise of the peak resident memory during one fast call, in a fresh process (MB).

    Linux only (it resets and reads the process's VmHWM); None elsewhere.
    """
    arguments = [str(x) for x in (*shape, *cluster)]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, *arguments], capture_output=True, text=True
    )
    if result.returncode != 0:
        return None
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def run_benchmark(data: str | None, rounds: int, json_path: str | None) -> int:
    workloads, note = default_workloads(data)
    trace_problems = [BalancingProblem(w.loads, *TRACE_CLUSTER) for w in workloads]
    large_loads = generated_loads(seed=7, num_layers=LARGE_SHAPE[0], num_experts=LARGE_SHAPE[1])
    large = BalancingProblem(large_loads, *LARGE_CLUSTER)

    print(f"eplb-spec benchmark ({note})")
    print(
        f"median ms per call after warm-up, {rounds} interleaved round(s); the fast "
        f"implementation uses up to {default_threads()} thread(s) unless marked"
    )
    timings = timings_for(
        f"traces {workloads[0].loads.shape[0]}x{workloads[0].loads.shape[1]} {TRACE_CLUSTER}",
        time_side_by_side(trace_problems, CONTENDERS, rounds),
    )
    timings += timings_for(
        f"generated {LARGE_SHAPE[0]}x{LARGE_SHAPE[1]} {LARGE_CLUSTER}",
        time_side_by_side([large], CONTENDERS, max(1, rounds)),
    )
    print(f"\n{'case':<46}{'implementation':<24}{'ms/call':>10}{'x baseline':>12}")
    for t in timings:
        print(f"{t.case:<46}{t.contender:<24}{t.median_ms:>10.3f}{t.speedup_vs_baseline:>12.1f}")

    first = workloads[0]
    stages = fast_path_breakdown(first.loads, TRACE_CLUSTER, E2E_REPEATS)
    end_to_end = stages[0]
    shape = f"{first.loads.shape[0]}x{first.loads.shape[1]}"
    print(
        f"\nthe fast path on {first.name} ({shape} at {TRACE_CLUSTER}), int64 token counts in "
        f"a torch tensor; {E2E_REPEATS} interleaved calls each, ms"
    )
    print(f"{'part':<62}{'min':>9}{'median':>9}")
    for stage in stages:
        print(f"{stage.name:<62}{stage.min_ms:>9.3f}{stage.median_ms:>9.3f}")
    parts = sum(stage.median_ms for stage in stages[1:])
    print(f"{'  the parts together (the rest: Python between them)':<62}{'':>9}{parts:>9.3f}")
    others = rivals(first.loads, TRACE_CLUSTER, max(3, rounds), end_to_end.median_ms)
    print(f"\n{'same trace, same run':<46}{'ms/call':>10}{'x fast e2e':>12}")
    for rival in others:
        if rival.note:
            print(f"{rival.name:<46}  {rival.note}")
        else:
            print(f"{rival.name:<46}{rival.median_ms:>10.2f}{rival.times_fast:>12.0f}")

    technique = technique_comparison(trace_problems[0], max(3, rounds))
    rows_of_one_trace = trace_problems[0].num_layers * trace_problems[0].packing_nodes
    print(
        f"\ndiverse greedy step on all {rows_of_one_trace} rows of one trace: "
        f"NumPy-vectorised {technique['numpy']:.3f} ms, compiled {technique['compiled']:.3f} ms "
        f"({technique['numpy'] / technique['compiled']:.1f}x): why the fast path is compiled"
    )

    scaling = fast_scaling(max(3, rounds))
    print(
        f"\nfast refined scaling (generated loads)\n{'axis':<8}{'layers':>7}{'experts':>8}"
        f"{'replicas':>9}{'gpus':>6}{'ms/call':>10}{'ms/layer':>10}"
    )
    for p in scaling:
        print(
            f"{p.axis:<8}{p.layers:>7}{p.experts:>8}{p.replicas:>9}{p.gpus:>6}"
            f"{p.median_ms:>10.3f}{p.ms_per_layer:>10.4f}"
        )

    memory = peak_memory_mb(LARGE_SHAPE, LARGE_CLUSTER)
    shown = "not measurable here (needs Linux /proc)" if memory is None else f"{memory:.1f} MB"
    print(f"\npeak memory rise of one fast call at {LARGE_SHAPE} {LARGE_CLUSTER}: {shown}")
    if json_path:
        document = {
            "source": note,
            "rounds": rounds,
            "timings": [asdict(t) for t in timings],
            "fast_path": [asdict(stage) for stage in stages],
            "rivals": [asdict(rival) for rival in others],
            "scaling": [asdict(p) for p in scaling],
            "diverse_greedy_ms": technique,
            "peak_memory_mb": memory,
        }
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    return 0
