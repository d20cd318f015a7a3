"""Throughput of the evaluator: candidates per hour, and where a candidate's time goes.

``eplb-spec evaluate-bench`` (``nox -s bench-evaluate``) scores the same set of valid
candidates (the reference, each copy with other bytes so that none is deduplicated) with
the default settings (``--quick`` budget, speed measured) on each backend: a local pool
of 1 and 2 workers and a Dask ``LocalCluster`` of 2 worker processes; then, on the first
backend, a batch where one program in ten never answers. It then evaluates
one candidate twice in this process with every call to the candidate counted, to split
its time into start-up, isolation, trace loading, the candidate's own calls and the
checking around them. Nothing here is asserted; the tests check correctness.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from properties import gate
from properties.distribute import Backend, DaskCluster, LocalPool
from properties.evaluate import (
    Settings,
    evaluate,
    evaluate_many,
    find_candidates,
    speed_reference,
)
from properties.isolation import DEFAULT_MEMORY_MB, CallFailure, CallResult, IsolatedTarget
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.problem import BalancingProblem

CANDIDATE = "from impl import rebalance_experts as rebalance_experts\n"
HANGING = "import time\n\n\ndef rebalance_experts(*args):\n    time.sleep(10**6)\n"
"""A program that never answers: one in ten of the mixed run (a search loop's share)."""


@dataclass
class BackendRun:
    backend: str
    candidates: int
    seconds: float  # from opening the backend to the last line
    first_line_s: float  # start-up included
    evaluation_s_mean: float  # inside evaluate, per candidate, as the workers saw it

    @property
    def per_hour(self) -> float:
        return 3600.0 * self.candidates / self.seconds


@dataclass
class Breakdown:
    """One evaluation in this process, every call to the candidate counted."""

    label: str
    total_s: float
    worker_start_s: float  # the candidate's fresh interpreter, up to its import
    calls: int
    calls_s: float  # the candidate's calls, seen from the checking side (IPC included)
    trace_bounds_s: float  # certified lower bounds of the traces (cached per process)
    other_s: float = 0.0  # checking, shrinking, trace loading, the fast path's calls


@dataclass
class Figures:
    machine: str
    runs: list[BackendRun] = field(default_factory=list)
    breakdown: list[Breakdown] = field(default_factory=list)
    fixed_costs_s: dict[str, float] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)


def write_candidates(folder: Path, count: int, hanging_every: int = 0) -> list[str]:
    """``count`` candidates; with ``hanging_every`` N, every N-th one hangs."""
    folder.mkdir(exist_ok=True)
    paths = []
    for index in range(count):
        hangs = hanging_every > 0 and index % hanging_every == hanging_every - 1
        path = folder / f"{'hanging' if hangs else 'candidate'}_{index:03d}.py"
        path.write_text((HANGING if hangs else CANDIDATE) + f"# variant {index}\n")
        paths.append(str(path))
    return paths


def open_backend(spec: str) -> Backend:
    kind, _, count = spec.partition(":")
    if not count.isdigit() or int(count) < 1 or kind not in ("pool", "dask"):
        raise ValueError(f"--backends: {spec!r} is not pool:N or dask:N")
    return LocalPool(int(count)) if kind == "pool" else DaskCluster(f"local:{count}")


def time_backend(
    spec: str, paths: list[str], settings: Settings, label: str | None = None
) -> BackendRun:
    start = time.perf_counter()
    backend = open_backend(spec)
    lines: list[dict[str, Any]] = []
    first: list[float] = []

    def emit(line: dict[str, Any]) -> None:
        if not first:
            first.append(time.perf_counter() - start)
        lines.append(line)

    try:
        evaluate_many(find_candidates(paths), settings, backend, emit)
    finally:
        backend.close()
    seconds = time.perf_counter() - start
    bad = [
        x
        for x in lines
        if x.get("verdict") != "pass" and not Path(str(x.get("program"))).name.startswith("hang")
    ]
    if bad:
        raise RuntimeError(f"a benchmark candidate did not pass: {bad[0]}")
    return BackendRun(
        label or spec,
        len(lines),
        seconds,
        first[0],
        statistics.fmean(float(x["evaluation_seconds"]) for x in lines),
    )


@contextmanager
def counted_calls(breakdown: Breakdown) -> Iterator[None]:
    """Count the gate's calls to the candidate and the start of its worker."""

    class Counted(IsolatedTarget):
        def start(self) -> None:
            began = time.perf_counter()
            super().start()
            breakdown.worker_start_s += time.perf_counter() - began

        def call(self, *args: Any) -> CallResult | CallFailure:
            result = super().call(*args)
            breakdown.calls += 1
            if isinstance(result, CallResult):
                breakdown.calls_s += result.seconds
            return result

    bounds = gate.trace_lower_bounds

    def timed_bounds(problem: BalancingProblem) -> Any:
        began = time.perf_counter()
        found = bounds(problem)
        breakdown.trace_bounds_s += time.perf_counter() - began
        return found

    with (
        mock.patch.object(gate, "IsolatedTarget", Counted),
        mock.patch.object(gate, "trace_lower_bounds", timed_bounds),
    ):
        yield


def break_down(path: str, label: str) -> Breakdown:
    breakdown = Breakdown(label, 0.0, 0.0, 0, 0.0, 0.0)
    with counted_calls(breakdown):
        result = evaluate(path)
    breakdown.total_s = float(result["evaluation_seconds"])
    breakdown.other_s = (
        breakdown.total_s - breakdown.worker_start_s - breakdown.calls_s - breakdown.trace_bounds_s
    )
    return breakdown


def fixed_costs(data: str | None) -> dict[str, float]:
    """Costs paid once per evaluator process: its imports, the traces, the fast path."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import properties.evaluate"], check=True)
    costs = {"evaluator process start and imports": time.perf_counter() - began}
    began = time.perf_counter()
    default_workloads(data)
    costs["loading the 12 traces"] = time.perf_counter() - began
    began = time.perf_counter()
    workloads, _ = default_workloads(data)
    problem = BalancingProblem(workloads[0].loads, *TRACE_CLUSTER)
    gate.trace_lower_bounds(problem)
    costs["certified lower bounds of one trace"] = time.perf_counter() - began
    return costs


def resident_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_per_evaluation(path: str) -> dict[str, float]:
    """Resident memory of the three processes of one evaluation."""
    reference, _ = speed_reference(DEFAULT_MEMORY_MB)
    with IsolatedTarget(f"{path}:rebalance_experts", 60.0) as candidate:
        assert candidate.process is not None
        assert reference.process is not None
        return {
            "evaluator process (this one)": resident_mb(os.getpid()),
            "candidate worker": resident_mb(candidate.process.pid),
            "fast-path worker": resident_mb(reference.process.pid),
        }


DEFAULT_BACKENDS = "pool:1,pool:2,dask:2"


def default_backends() -> tuple[str, str]:
    """The backends a plain run measures, and a note when Dask's is left out."""
    if importlib.util.find_spec("distributed") is None:
        note = "Dask is not installed, so dask:2 is left out (pip install 'eplb-spec[dask]')"
        return "pool:1,pool:2", note
    return DEFAULT_BACKENDS, ""


def run_evaluate_benchmark(
    candidates: int, repeats: int, backends: str | None, json_path: str | None
) -> int:
    """``backends`` None: the default list, leaving Dask out (and saying so) when it is
    not installed; a Dask backend asked for by name without Dask is an error."""
    if candidates < 1 or repeats < 1:
        raise ValueError("--candidates and --repeats must be at least 1")
    if backends is None:
        backends, note = default_backends()
        if note:
            print(f"eplb-spec evaluate-bench: note: {note}")
    specs = [s.strip() for s in backends.split(",") if s.strip()]
    for spec in specs:
        if spec.startswith("dask") and importlib.util.find_spec("distributed") is None:
            raise ValueError(f"{spec} needs Dask: pip install 'eplb-spec[dask]'")
    figures = Figures(
        machine=f"{os.cpu_count()} CPUs (shared with other work: figures vary; best of "
        f"{repeats} run(s) shown with the spread)"
    )
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="eplb-evaluate-bench-") as folder:
        paths = write_candidates(Path(folder), candidates)
        print(f"eplb-spec evaluate-bench: {candidates} valid candidates, quick budget, speed on")
        print(f"  machine: {figures.machine}")
        for _ in range(repeats):
            for spec in specs:  # interleaved, so that load changes hit every backend
                run = time_backend(spec, paths, settings)
                figures.runs.append(run)
                print(
                    f"  {spec:<8} {run.seconds:7.1f} s  {run.per_hour:7.0f} candidates/hour  "
                    f"first line after {run.first_line_s:5.1f} s  "
                    f"{run.evaluation_s_mean:5.1f} s per evaluation inside the worker"
                )
        mixed = write_candidates(Path(folder) / "mixed", max(candidates, 10), 10)
        label = f"{specs[0]}, 10 % hanging"
        run = time_backend(specs[0], mixed, settings, label)
        figures.runs.append(run)
        print(
            f"  {label}: {run.seconds:7.1f} s  {run.per_hour:7.0f} candidates/hour "
            f"({len(mixed)} candidates, one in ten never answers; {settings.timeout_s:g} s "
            "per call: a hang costs one timeout)"
        )
        figures.fixed_costs_s = fixed_costs(None)
        for label in ("cold (first in this process)", "warm (bounds and fast path kept)"):
            figures.breakdown.append(break_down(paths[0], label))
        figures.memory_mb = memory_per_evaluation(paths[0])
    print_figures(figures, specs)
    if json_path:
        document = {
            "machine": figures.machine,
            "runs": [{**asdict(r), "per_hour": r.per_hour} for r in figures.runs],
            "breakdown": [asdict(b) for b in figures.breakdown],
            "fixed_costs_s": figures.fixed_costs_s,
            "memory_mb": figures.memory_mb,
        }
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def print_figures(figures: Figures, specs: list[str]) -> None:
    print("\ncandidates per hour (best, and the spread over runs):")
    best: dict[str, float] = {}
    for spec in specs:
        rates = [r.per_hour for r in figures.runs if r.backend == spec]
        best[spec] = max(rates)
        print(f"  {spec:<8} best {max(rates):7.0f}   runs: {', '.join(f'{x:.0f}' for x in rates)}")
    if "pool:1" in best:
        for spec, rate in best.items():
            print(f"  {spec:<8} / pool:1 = {rate / best['pool:1']:.2f}")
    print("\none candidate, evaluated in this process (seconds):")
    print(
        f"  {'':<34}{'total':>7}{'worker':>8}{'calls':>7}{'in calls':>9}{'bounds':>8}{'other':>7}"
    )
    for b in figures.breakdown:
        print(
            f"  {b.label:<34}{b.total_s:>7.2f}{b.worker_start_s:>8.2f}{b.calls:>7}"
            f"{b.calls_s:>9.2f}{b.trace_bounds_s:>8.2f}{b.other_s:>7.2f}"
        )
    print(
        "  worker: starting the candidate's isolated interpreter (torch import included);"
        " in calls: the candidate's calls seen from the checker (IPC included); bounds: the"
        " traces' certified lower bounds (cached per process); other: Hypothesis, the checks,"
        " shrinking, trace loading and the fast path's timing calls."
    )
    print("\nonce per evaluator process (seconds):")
    for what, seconds in figures.fixed_costs_s.items():
        print(f"  {what:<44}{seconds:7.2f}")
    print("\nresident memory of one evaluation's processes (MB):")
    for what, mb in figures.memory_mb.items():
        print(f"  {what:<44}{mb:7.0f}")
