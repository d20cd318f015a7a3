"""Score candidate balancers for a program search (OpenEvolve, ShinkaEvolve and the like).

``evaluate(program_path)`` runs the gate on the program's ``rebalance_experts`` (in a
process of its own, as every gate target) and returns one flat dict: numeric metrics, a
``combined_score`` to maximise, and ``feedback`` a language model can act on::

    from properties.evaluate import evaluate

    result = evaluate("candidate.py")            # or function="my_balancer"
    result["combined_score"], result["feedback"]

``combined_score`` is 0 for any program that breaks the contract (``feedback`` names the
rule and the smallest failing input); otherwise it is ``score_formula`` below. The same
program gives the same result, timings aside (``TIMING_KEYS``), so a search can cache it
by ``key`` (the program's SHA-256, the function, the evaluator's version and settings).

``evaluate_many`` scores many programs through ``properties.distribute`` (a local process
pool, a Dask cluster or Ray) and streams one JSON line per program, resumably.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import json
import math
import multiprocessing
import multiprocessing.util
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

from properties.distribute import Backend, choose_backend, run_jobs
from properties.gate import (
    BUG_REPORT,
    NEEDS,
    QUICK,
    THOROUGH,
    Budget,
    GateReport,
    InternalError,
    choose_sections,
    printable,
    run_gate,
    signals_end_the_run,
)
from properties.isolation import (
    DEFAULT_MEMORY_MB,
    IsolatedTarget,
    TargetError,
    end_subtree,
    protect_gate_process,
)
from properties.suite import Finding, call_ok
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.problem import BalancingProblem

EVALUATOR_VERSION = "1"
"""Raised whenever a metric, the formula or the feedback changes meaning."""

DEFAULT_FUNCTION = "rebalance_experts"
DEFAULT_TIMEOUT_S = 30.0
SPEED_REFERENCE = "impl:rebalance_experts_fast"
TIMING_ROUNDS = 3
REFERENCE_TIMEOUT_S = 600.0  # the fast path compiles on its first call in a fresh checkout

# The combined score (``score_formula``): quality, and a speed factor that is exactly 1
# up to SLOW_FREE times the fast path's time, then loses SLOW_PENALTY per tenfold, down to
# SLOW_FLOOR.
SLOW_FREE = 100.0
SLOW_PENALTY = 0.25
SLOW_FLOOR = 0.5

TIMING_KEYS = (
    "seconds_per_call",
    "fast_seconds_per_call",
    "time_ratio",
    "evaluation_seconds",
    "feedback",
)
"""Keys whose values vary from run to run (``feedback`` quotes the timings); all other
keys are the same for the same program and settings."""

METRIC_KEYS = (
    "combined_score",
    "passed",
    "findings",
    "balancedness",
    "peak_over_bound_mean",
    "peak_over_bound_max",
    "duplicate_gpus",
    "traces_scored",
    "optimality_gap_max",
    "optimality_gap_mean",
    "optimality_layers",
    "seconds_per_call",
    "fast_seconds_per_call",
    "time_ratio",
    "evaluation_seconds",
)
"""The numeric entries of a result; a metric that was not measured is 0."""

FUNCTION_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FEEDBACK_FINDINGS = 5


def speed_factor(time_ratio: float) -> float:
    """1 up to ``SLOW_FREE`` times the fast path's time (and when not measured, 0);
    then ``SLOW_PENALTY`` less per tenfold, never below ``SLOW_FLOOR``."""
    if not time_ratio > SLOW_FREE:
        return 1.0
    return max(SLOW_FLOOR, 1.0 - SLOW_PENALTY * math.log10(time_ratio / SLOW_FREE))


def score_formula(
    passed: bool, peak_over_bound_mean: float, traces_scored: int, time_ratio: float
) -> float:
    """The combined score, in one place.

    0 when the gate fails the program. Otherwise ``quality * speed_factor(time_ratio)``
    with ``quality = 1 / peak_over_bound_mean``: the peak GPU load over a certified lower
    bound on the optimum, averaged over the layers of the traces, so 1 means provably
    optimal on every layer. Without traces scored (a run that skips them) quality is 1.
    """
    if not passed:
        return 0.0
    quality = 1.0 / peak_over_bound_mean if traces_scored and peak_over_bound_mean > 0 else 1.0
    return quality * speed_factor(time_ratio)


def package_version() -> str:
    try:
        return version("eplb-spec")
    except PackageNotFoundError:
        return "unknown"


def evaluator_version() -> str:
    return f"{EVALUATOR_VERSION} (eplb-spec {package_version()})"


@dataclass(frozen=True)
class Settings:
    """How candidates are evaluated; part of every result's ``key``."""

    budget: Budget = QUICK
    checks: tuple[str, ...] | None = None
    skip: tuple[str, ...] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    data: str | None = None
    measure_speed: bool = True

    @property
    def sections(self) -> tuple[str, ...]:
        """The gate's sections that run. A program is one stateless balancer, so the
        sections that need an old placement or another target (rebalance, schedule and
        the refinements) do not."""
        chosen = choose_sections(self.checks, self.skip)
        runs = tuple(s for s in chosen if s not in NEEDS)
        if not runs:
            raise ValueError(
                f"no section to run: {', '.join(chosen) or 'none chosen'} need(s) an old "
                "placement or a target of their own, which evaluate does not take"
            )
        return runs

    def signature(self) -> dict[str, Any]:
        return {
            "budget": asdict(self.budget),
            "sections": list(self.sections),
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "data": self.data,
            "measure_speed": self.measure_speed,
        }


def make_settings(
    *,
    quick: bool = True,
    budget: Budget | None = None,
    checks: Collection[str] | None = None,
    skip: Collection[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    data: str | None = None,
    measure_speed: bool = True,
) -> Settings:
    settings = Settings(
        budget=budget or (QUICK if quick else THOROUGH),
        checks=None if checks is None else tuple(checks),
        skip=None if skip is None else tuple(skip),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        data=data,
        measure_speed=measure_speed,
    )
    settings.sections  # noqa: B018  (unknown section names are refused here)
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 256:
        raise ValueError(f"memory_mb must be an int of at least 256, got {memory_mb!r}")
    return settings


def result_key(program_sha256: str, function: str, settings: Settings) -> str:
    """What a search caches a result by: the program's bytes, the function, the
    evaluator's version and the settings."""
    document = {
        "program_sha256": program_sha256,
        "function": function,
        "evaluator_version": evaluator_version(),
        "settings": settings.signature(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


# The fast path runs in a worker of its own that this process keeps (starting one per
# evaluation would double its start-up cost); a lock keeps timings of two evaluations in
# one process from overlapping.
_reference_lock = threading.Lock()
_reference: list[IsolatedTarget] = []


def speed_reference(memory_mb: int) -> tuple[IsolatedTarget, bool]:
    """The fast path's worker (call with ``_reference_lock`` held), and whether it is new."""
    if _reference and (_reference[0].dead is not None or _reference[0].memory_mb != memory_mb):
        _reference.pop().close()
    if _reference:
        return _reference[0], False
    _reference.append(IsolatedTarget(SPEED_REFERENCE, REFERENCE_TIMEOUT_S, memory_mb=memory_mb))
    return _reference[0], True


def close_speed_reference() -> None:
    while _reference:
        _reference.pop().close()


atexit.register(close_speed_reference)
# A multiprocessing worker (a pool's) leaves through os._exit, past atexit; this runs.
multiprocessing.util.Finalize(None, close_speed_reference, exitpriority=10)


@dataclass
class Timing:
    """Median seconds per call of the candidate and of the fast path, same input."""

    candidate: float = 0.0
    fast: float = 0.0
    trace: str = ""

    @property
    def ratio(self) -> float:
        return self.candidate / self.fast if self.candidate > 0 and self.fast > 0 else 0.0


def time_against_fast_path(
    caller: IsolatedTarget, report: GateReport, settings: Settings, timing: Timing
) -> None:
    """After the checks, with the candidate's worker still up: time it and the fast path
    on the first trace scored, interleaved, ``TIMING_ROUNDS`` calls each. A call that
    fails now, on an input it answered during the checks, is a finding."""
    if report.verdict != "pass" or not report.traces:
        return
    workloads, _ = default_workloads(settings.data)
    name = report.traces[0].trace
    loads = next(w.loads for w in workloads if w.name == name)
    problem = BalancingProblem(loads, *TRACE_CLUSTER)
    where = {
        "trace": name,
        **dict(
            zip(("num_replicas", "num_groups", "num_nodes", "num_gpus"), TRACE_CLUSTER, strict=True)
        ),
    }
    candidate_times, fast_times = [], []
    with _reference_lock:
        fast, fresh = speed_reference(settings.memory_mb)
        try:
            if fresh:
                call_ok(fast.call, problem)  # loads (or compiles) the fast path
            for _ in range(TIMING_ROUNDS):
                try:
                    candidate_times.append(call_ok(caller.call, problem).seconds)
                except Finding as finding:
                    report.record(
                        Finding(
                            finding.check, f"when timed again: {finding.message}", finding.code
                        ),
                        where,
                    )
                    return
                fast_times.append(call_ok(fast.call, problem).seconds)
        except Finding as finding:
            raise InternalError(f"the fast path failed while timing: {finding}") from None
    timing.candidate = statistics.median(candidate_times)
    timing.fast = statistics.median(fast_times)
    timing.trace = name


def rule_of(report: GateReport) -> str:
    if not report.findings:
        return ""
    first = report.findings[0]
    return first.check if first.code in ("", first.check) else f"{first.check}/{first.code}"


CONTRACT_SUMMARY = (
    "The function is called as f(weight, num_replicas, num_groups, num_nodes, num_gpus) "
    "with weight a torch.Tensor [layers, experts] of loads, and returns (phy2log [layers, "
    "num_replicas], log2phy [layers, experts, num_replicas - experts + 1], logcnt [layers, "
    "experts]) as int64 (or phy2log alone). Every expert gets at least one replica and the "
    "counts sum to num_replicas; when num_groups % num_nodes == 0 every group of "
    "consecutive experts, with all its replicas, stays on one node; the weight tensor is "
    "left unmodified; the same input gives the same output; invalid input raises "
    "ValueError or gets a valid placement."
)


def rejection_feedback(report: GateReport) -> str:
    lines = [
        "REJECTED (combined_score 0): the program breaks the EPLB contract checked by "
        "eplb-spec; fix this before anything else.",
    ]
    for index, finding in enumerate(report.findings[:FEEDBACK_FINDINGS]):
        rule = (
            finding.check
            if finding.code in ("", finding.check)
            else f"{finding.check}/{finding.code}"
        )
        seen = f" (seen {finding.count} times)" if finding.count > 1 else ""
        lead = "Rule broken" if index == 0 else "Also broken"
        lines.append(f"{lead}: [{rule}]{seen} {printable(finding.message, 600)}")
        if finding.note:
            lines.append(f"  note: {printable(finding.note, 400)}")
        if finding.input is not None:
            lines.append(f"  smallest failing input: {printable(json.dumps(finding.input), 1500)}")
    if len(report.findings) > FEEDBACK_FINDINGS:
        lines.append(f"(and {len(report.findings) - FEEDBACK_FINDINGS} more causes)")
    lines.append(CONTRACT_SUMMARY)
    return "\n".join(lines)


def acceptance_feedback(report: GateReport, metrics: dict[str, Any], timing: Timing) -> str:
    lines = [
        f"ACCEPTED: the program passes every check of the eplb-spec gate that ran "
        f"({', '.join(f'{k} {v}' for k, v in report.checks.items())}).",
        f"combined_score {metrics['combined_score']:.6f} = 1 / (peak over the certified "
        f"lower bound, mean {metrics['peak_over_bound_mean']:.6f}) x speed factor "
        f"{speed_factor(metrics['time_ratio']):.3f}.",
    ]
    if report.traces:
        worst = max(report.traces, key=lambda t: t.max_peak_over_lower_bound)
        lines.append(
            f"On {len(report.traces)} real trace(s) at (num_replicas, num_groups, num_nodes, "
            f"num_gpus) = {TRACE_CLUSTER}: balancedness {metrics['balancedness']:.6f} (mean "
            f"GPU load / peak GPU load summed over layers, 1 is perfect); the peak GPU load "
            f"is {metrics['peak_over_bound_mean'] - 1:.4%} above a proven lower bound on "
            f"the optimum on average, {metrics['peak_over_bound_max'] - 1:.4%} in the worst "
            f"layer (trace {worst.trace}). Lower the peak GPU load of the worst layers to "
            f"score higher."
        )
    if metrics["duplicate_gpus"]:
        lines.append(
            f"{metrics['duplicate_gpus']} GPU(s) hold two replicas of one expert (a replica "
            "that spreads no load)."
        )
    if report.optimality:
        lines.append(
            f"On {metrics['optimality_layers']} layers of tiny problems solved exactly, the "
            f"worst peak is {metrics['optimality_gap_max']:.4%} above the optimum."
        )
    if timing.candidate > 0:
        lines.append(
            f"Speed: {timing.candidate * 1e3:.1f} ms per call on {timing.trace}, "
            f"{timing.ratio:.1f}x the compiled fast path ({timing.fast * 1e3:.1f} ms) in the "
            f"same isolation; no penalty up to {SLOW_FREE:g}x."
        )
    return "\n".join(lines)


def metrics_of(report: GateReport, timing: Timing) -> dict[str, Any]:
    traces = report.traces
    optimality = report.optimality
    passed = report.verdict == "pass"
    metrics: dict[str, Any] = {
        "passed": 1.0 if passed else 0.0,
        "findings": len(report.findings),
        "balancedness": statistics.fmean(t.balancedness for t in traces) if traces else 0.0,
        "peak_over_bound_mean": (
            statistics.fmean(t.mean_peak_over_lower_bound for t in traces) if traces else 0.0
        ),
        "peak_over_bound_max": max((t.max_peak_over_lower_bound for t in traces), default=0.0),
        "duplicate_gpus": sum(t.gpus_with_duplicate_replicas for t in traces),
        "traces_scored": len(traces),
        "optimality_gap_max": float(optimality.get("max_gap", 0.0)),
        "optimality_gap_mean": float(optimality.get("mean_gap", 0.0)),
        "optimality_layers": int(optimality.get("layers_compared", 0)),
        "seconds_per_call": timing.candidate,
        "fast_seconds_per_call": timing.fast,
        "time_ratio": timing.ratio,
    }
    metrics["combined_score"] = score_formula(
        passed, metrics["peak_over_bound_mean"], len(traces), timing.ratio
    )
    return metrics


def unimportable(error: TargetError, function: str) -> tuple[dict[str, Any], str]:
    metrics: dict[str, Any] = dict.fromkeys(METRIC_KEYS, 0.0)
    metrics.update(findings=1, duplicate_gpus=0, traces_scored=0, optimality_layers=0)
    feedback = (
        f"REJECTED (combined_score 0): the program cannot be used: {printable(str(error), 1500)}\n"
        f"It must be a Python file defining {function}(weight, num_replicas, num_groups, "
        f"num_nodes, num_gpus) at module level, importable within the time limit.\n"
        + CONTRACT_SUMMARY
    )
    return metrics, feedback


def check_function_name(function: str) -> None:
    if not isinstance(function, str) or not FUNCTION_NAME.fullmatch(function):
        raise ValueError(
            f"function must be a name like rebalance_experts or Class.method, got {function!r}"
        )


def evaluate(
    program_path: str | os.PathLike[str],
    *,
    function: str = DEFAULT_FUNCTION,
    quick: bool = True,
    budget: Budget | None = None,
    checks: Collection[str] | None = None,
    skip: Collection[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    data: str | None = None,
    measure_speed: bool = True,
) -> dict[str, Any]:
    """Score the program at ``program_path`` (its function ``function``).

    Returns a flat dict: the numbers of ``METRIC_KEYS``, ``verdict`` (``pass``,
    ``fail`` or ``unusable``: it cannot be imported), ``rule`` (the first finding's
    ``check/code``), ``feedback``, and what identifies the result (``program``,
    ``function``, ``program_sha256``, ``evaluator_version``, ``budget``, ``sections``,
    ``key``, ``status``). The program's bytes are read once, hashed, and evaluated from a
    private copy, so the result belongs to exactly those bytes (the program must be
    self-contained: it may import installed packages, not files beside it).
    Raises ValueError for bad arguments and ``InternalError`` for a fault of eplb-spec.
    """
    settings = make_settings(
        quick=quick,
        budget=budget,
        checks=checks,
        skip=skip,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        data=data,
        measure_speed=measure_speed,
    )
    check_function_name(function)
    try:
        source = Path(program_path).read_bytes()
    except OSError as error:
        raise ValueError(
            f"program_path: cannot read {str(program_path)!r}: {error.strerror}"
        ) from None
    return evaluate_source(source, function, settings, str(program_path))


def evaluate_source(source: bytes, function: str, settings: Settings, label: str) -> dict[str, Any]:
    """``evaluate`` on a program's bytes; ``label`` names it in the result."""
    check_function_name(function)
    folder = Path(tempfile.mkdtemp(prefix="eplb-candidate-"))
    try:
        name = Path(label).name
        path = folder / (name if name.endswith(".py") else "candidate.py")
        path.write_bytes(source)
        return evaluate_copy(path, source, function, settings, label)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def evaluate_copy(
    path: Path, source: bytes, function: str, settings: Settings, label: str
) -> dict[str, Any]:
    digest = hashlib.sha256(source).hexdigest()
    start = time.perf_counter()
    timing = Timing()

    def after_checks(caller: IsolatedTarget, report: GateReport) -> None:
        if settings.measure_speed:
            time_against_fast_path(caller, report, settings, timing)

    try:
        report = run_gate(
            f"{path}:{function}",
            budget=settings.budget,
            checks=settings.sections,
            timeout_s=settings.timeout_s,
            memory_mb=settings.memory_mb,
            data=settings.data,
            after_checks=after_checks,
            timeouts_allowed=1,  # a hang costs one timeout, not three and restarts
        )
    except TargetError as error:
        metrics, feedback = unimportable(error, function)
        verdict, rule = "unusable", "import"
    else:
        metrics = metrics_of(report, timing)
        verdict, rule = report.verdict, rule_of(report)
        feedback = (
            acceptance_feedback(report, metrics, timing)
            if report.verdict == "pass"
            else rejection_feedback(report)
        )
    metrics["evaluation_seconds"] = time.perf_counter() - start
    feedback = feedback.replace(str(path), label)  # the private copy's path varies
    return {
        "program": label,
        "function": function,
        "program_sha256": digest,
        "evaluator_version": evaluator_version(),
        "budget": settings.budget.name,
        "sections": ",".join(settings.sections),
        "key": result_key(digest, function, settings),
        "status": "evaluated",
        "verdict": verdict,
        "rule": rule,
        **{k: metrics[k] for k in METRIC_KEYS},
        "feedback": feedback,
    }


def split_metrics(result: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The numeric entries (OpenEvolve's ``metrics``) and the text ones (its
    ``artifacts``: ``feedback``, ``verdict``, ``rule``...) of a result."""
    numbers = {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    texts = {k: str(v) for k, v in result.items() if isinstance(v, str)}
    return numbers, texts


def write_shinka_results(result: dict[str, Any], results_dir: str | os.PathLike[str]) -> None:
    """ShinkaEvolve's result files: ``metrics.json`` (``combined_score``, ``public``,
    ``private``, ``text_feedback``) and ``correct.json`` (``correct``, ``error``)."""
    numbers, texts = split_metrics(result)
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "combined_score": numbers.get("combined_score", 0.0),
        "public": {k: v for k, v in numbers.items() if k != "combined_score"},
        "private": {k: v for k, v in texts.items() if k != "feedback"},
        "text_feedback": texts.get("feedback", ""),
    }
    passed = result.get("verdict") == "pass"
    correct = {"correct": passed, "error": None if passed else texts.get("feedback", "")}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "correct.json").write_text(json.dumps(correct, indent=2) + "\n")


# ---------------------------------------------------------------------------------------
# Many candidates


@dataclass(frozen=True)
class Candidate:
    """One program to score: where it was found, its function, its bytes."""

    program: str
    function: str
    source: bytes = field(repr=False)
    sha256: str


@dataclass(frozen=True)
class EvaluationJob:
    """What a worker needs: the program's bytes travel with it (no shared disk needed)."""

    candidate: Candidate
    settings: Settings


GLOB_CHARACTERS = frozenset("*?[")


def split_spec(spec: str, function: str) -> tuple[str, str]:
    """``PROGRAM.py:FUNCTION`` into its parts (``function`` when none is given)."""
    location, colon, name = spec.rpartition(":")
    if colon and location.endswith(".py") and FUNCTION_NAME.fullmatch(name):
        return location, name
    return spec, function


def find_candidates(specs: Sequence[str], function: str = DEFAULT_FUNCTION) -> list[Candidate]:
    """Programs named by files, folders (their ``*.py``) or globs (``**`` recurses)."""
    check_function_name(function)
    found: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        location, name = split_spec(spec, function)
        path = Path(location)
        if path.is_dir():
            files = sorted(str(p) for p in path.glob("*.py") if p.is_file())
            if not files:
                raise ValueError(f"program: folder {location!r} holds no *.py file")
        elif path.is_file():
            files = [location]
        elif GLOB_CHARACTERS & set(location):
            files = sorted(p for p in glob.glob(location, recursive=True) if p.endswith(".py"))
            files = [p for p in files if Path(p).is_file()]
            if not files:
                raise ValueError(f"program: no *.py file matches {location!r}")
        else:
            raise ValueError(f"program: no file or folder {location!r}")
        for file in files:
            if (str(Path(file).resolve()), name) in seen:
                continue
            seen.add((str(Path(file).resolve()), name))
            try:
                source = Path(file).read_bytes()
            except OSError as error:
                raise ValueError(f"program: cannot read {file!r}: {error.strerror}") from None
            found.append(Candidate(file, name, source, hashlib.sha256(source).hexdigest()))
    return found


def run_evaluation_job(job: EvaluationJob) -> dict[str, Any]:
    """Evaluate one candidate on a worker. Never raises for anything the candidate
    does; an internal error of eplb-spec is a result with ``status: error``."""
    candidate = job.candidate
    try:
        with signals_end_the_run(), warnings.catch_warnings():
            # On a Dask worker the gate runs beside the worker's event loop, whose use of
            # the random module Hypothesis takes for a strategy's: its data do not depend
            # on that module (they are derandomized), so the warning is noise there.
            warnings.filterwarnings(
                "ignore", message="Do not use the `random` module", category=Warning
            )
            return evaluate_source(
                candidate.source, candidate.function, job.settings, candidate.program
            )
    except (InternalError, ValueError) as error:
        reason = printable(str(error), 2000)
        return {**identity(candidate, job.settings), "status": "error", "reason": reason}
    except KeyboardInterrupt:
        # SIGTERM from a pool being shut down: the target's processes are ended (the
        # gate's context managers ran); a pool worker then leaves at once.
        if multiprocessing.parent_process() is not None:
            close_speed_reference()
            os._exit(143)
        raise


def identity(candidate: Candidate, settings: Settings) -> dict[str, Any]:
    return {
        "program": candidate.program,
        "function": candidate.function,
        "program_sha256": candidate.sha256,
        "evaluator_version": evaluator_version(),
        "budget": settings.budget.name,
        "sections": ",".join(settings.sections),
        "key": result_key(candidate.sha256, candidate.function, settings),
    }


def finished_keys(path: str | os.PathLike[str]) -> set[str]:
    """Keys with an ``evaluated`` line in an output file (a torn last line is ignored)."""
    done: set[str] = set()
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return done
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("status") == "evaluated"
            and isinstance(entry.get("key"), str)
        ):
            done.add(entry["key"])
    return done


@dataclass
class BatchSummary:
    candidates: int = 0
    skipped: int = 0
    evaluated: int = 0
    not_evaluated: int = 0
    errors: int = 0
    seconds: float = 0.0


def evaluate_many(
    candidates: Sequence[Candidate],
    settings: Settings,
    backend: Backend,
    emit: Callable[[dict[str, Any]], None],
    *,
    skip_keys: Collection[str] = (),
    max_attempts: int = 3,
    progress: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Score every candidate on ``backend``; ``emit`` gets one line per candidate, as
    each is done. Candidates whose key is in ``skip_keys`` are skipped; candidates with
    the same key (the same bytes and function) are evaluated once and each gets its line.
    A candidate that could not be evaluated gets a line with ``status: not-evaluated``.
    """
    summary = BatchSummary(candidates=len(candidates))
    start = time.perf_counter()
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        key = result_key(candidate.sha256, candidate.function, settings)
        if key in skip_keys:
            summary.skipped += 1
            continue
        groups.setdefault(key, []).append(candidate)
    jobs = [EvaluationJob(group[0], settings) for group in groups.values()]
    done = 0
    for outcome in run_jobs(run_evaluation_job, jobs, backend, max_attempts=max_attempts):
        key = result_key(outcome.job.candidate.sha256, outcome.job.candidate.function, settings)
        for candidate in groups[key]:
            if outcome.value is not None:
                line = {**outcome.value, "program": candidate.program, "attempts": outcome.attempts}
            else:
                line = {
                    **identity(candidate, settings),
                    "status": "not-evaluated",
                    "reason": outcome.error,
                    "attempts": outcome.attempts,
                }
            emit(line)
            done += 1
            status = line["status"]
            if status == "evaluated":
                summary.evaluated += 1
            elif status == "error":
                summary.errors += 1
            else:
                summary.not_evaluated += 1
            if progress is not None:
                score = line.get("combined_score")
                what = (
                    f"{line['verdict']} {score:.6f}"
                    if status == "evaluated"
                    else f"{status}: {line.get('reason', '')}"
                )
                count = f"[{done}/{summary.candidates - summary.skipped}]"
                progress(f"{count} {printable(candidate.program)}: {printable(what)}")
    summary.seconds = time.perf_counter() - start
    return summary


class LineWriter:
    """Appends JSON lines to a file, each flushed to disk before the next."""

    def __init__(self, path: str | None) -> None:
        self.stream: TextIO
        if path is None:
            self.stream, self.owned = sys.stdout, False
            return
        target = Path(path)
        torn = (
            target.exists()
            and target.stat().st_size > 0
            and not target.read_bytes().endswith(b"\n")
        )
        self.stream, self.owned = target.open("a"), True
        if torn:  # a line cut short by a crash: end it, so the next one stands alone
            self.stream.write("\n")

    def __call__(self, line: dict[str, Any]) -> None:
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()
        if self.owned:
            os.fsync(self.stream.fileno())

    def close(self) -> None:
        if self.owned:
            self.stream.close()


EXIT_DONE, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def check_out(out: str) -> None:
    """``--out`` names a file this process can append to (a folder, a path under a file
    or under /proc is refused in one line)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {out}: is a folder, not a file")
    if path.resolve().is_relative_to("/proc"):
        raise ValueError(f"--out {out}: is under /proc, not a file for results")
    try:
        with path.open("a"):
            pass
    except OSError as error:
        raise ValueError(f"--out {out}: cannot be written ({error.strerror})") from None


def single_program(specs: Sequence[str]) -> bool:
    return len(specs) == 1 and Path(split_spec(specs[0], DEFAULT_FUNCTION)[0]).is_file()


def evaluate_main(
    specs: Sequence[str],
    *,
    function: str = DEFAULT_FUNCTION,
    settings: Settings | None = None,
    out: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    ray: str | None = None,
    max_attempts: int = 3,
) -> int:
    """The ``eplb-spec evaluate`` command. One program (and no --out, --workers,
    --scheduler or --ray): one JSON object on stdout, exit 0 (whatever the verdict).
    Otherwise one JSON line per program, exit 0 when each got an ``evaluated`` line, 1
    when some could not be. 2: bad arguments; 3: an internal error; 130: interrupted."""
    settings = settings or Settings()
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"--max-attempts must be a positive int, got {max_attempts!r}")
    candidates = find_candidates(specs, function)
    if single_program(specs) and all(x is None for x in (out, workers, scheduler, ray)):
        candidate = candidates[0]
        try:
            with signals_end_the_run():
                result = evaluate_source(
                    candidate.source, candidate.function, settings, candidate.program
                )
        except InternalError as error:
            print(f"eplb-spec evaluate: INTERNAL ERROR ({BUG_REPORT}):\n{error}", file=sys.stderr)
            return EXIT_INTERNAL
        except KeyboardInterrupt:
            print("eplb-spec evaluate: interrupted; no result", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(json.dumps(result, indent=2))
        return EXIT_DONE
    if out is not None:
        check_out(out)
    skip = finished_keys(out) if out is not None else set()
    backend = choose_backend(workers, scheduler, ray)
    writer = LineWriter(out)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    protect_gate_process()  # what a worker's targets leave behind comes back here
    interrupted = False
    with signals_end_the_run():  # SIGINT, SIGTERM, SIGHUP: every process below is ended
        try:
            progress(f"eplb-spec evaluate: {len(candidates)} program(s) on {backend.description}")
            summary = evaluate_many(
                candidates,
                settings,
                backend,
                writer,
                skip_keys=skip,
                max_attempts=max_attempts,
                progress=progress,
            )
        except KeyboardInterrupt:
            interrupted = True
            end_subtree()  # pool or Dask workers, their gates' workers and every target
        finally:
            writer.close()
            backend.close()
    if interrupted:
        progress(
            "eplb-spec evaluate: interrupted; the lines written stand, rerun with --out to resume"
        )
        return EXIT_INTERRUPTED
    progress(
        f"eplb-spec evaluate: {summary.evaluated} evaluated, {summary.skipped} already in "
        f"{out}, {summary.not_evaluated} not evaluated, {summary.errors} internal errors, "
        f"{summary.seconds:.1f} s"
    )
    return EXIT_DONE if summary.not_evaluated == summary.errors == 0 else EXIT_INCOMPLETE


def iter_results(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The lines of an output file, the last one per key (a resumed run may have
    written a ``not-evaluated`` line before the ``evaluated`` one)."""
    latest: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            latest[f"{entry.get('key')}:{entry.get('program')}"] = entry
    yield from latest.values()


__all__ = [
    "EVALUATOR_VERSION",
    "METRIC_KEYS",
    "TIMING_KEYS",
    "Candidate",
    "Settings",
    "evaluate",
    "evaluate_many",
    "find_candidates",
    "iter_results",
    "make_settings",
    "score_formula",
    "split_metrics",
    "write_shinka_results",
]
