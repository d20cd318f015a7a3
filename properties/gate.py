"""The correctness gate: check any ``rebalance_experts`` against the spec and the oracle.

``run_gate`` drives the properties of ``properties.suite`` through Hypothesis
(derandomized, so a run repeats) on a target called in a separate process
(``properties.isolation``), then scores it on the real traces. Every check and the
verdict are computed in this process, on plain data; the target never runs here.
Usable from the command line (``eplb-spec gate``) and from any project's pytest::

    from properties.gate import run_gate

    def test_my_balancer_passes_the_eplb_gate():
        report = run_gate("my_engine.eplb:rebalance_experts", quick=True)
        assert report.verdict == "pass", report.summary()
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis import target as steer_towards
from hypothesis.control import currently_in_test_context
from hypothesis.errors import Flaky

from oracle.pipeline import layer_lower_bound
from properties.engines import EngineAdapter, find_engine
from properties.fidelity import FidelityRun
from properties.isolation import (
    DEFAULT_MEMORY_MB,
    INTERRUPTED,
    CallFailure,
    CallResult,
    FailureCount,
    IsolatedTarget,
    TargetError,
    TensorArg,
    end_every_worker,
    end_leftovers,
    interruptible,
)
from properties.quality import (
    ProvenGap,
    describe_gap,
    exact_percent,
    exact_text,
    proven_gaps,
    trace_upper_bounds,
)
from properties.quality import above_limit as proven_gap_above
from properties.quality import summarise as summarise_proven
from properties.rebalance import (
    BudgetedMode,
    BudgetedTally,
    PreviousArgument,
    RebalanceTally,
    ScheduleTally,
    check_budgeted_case,
    check_rebalance_case,
    check_schedule_case,
    describe_previous,
    parse_previous,
)
from properties.strategies import (
    RebalanceCase,
    count_cases,
    engine_regime_examples,
    gate_integer_problems,
    gate_problems,
    rebalance_gate_cases,
    schedule_cases,
    scored_problems,
    swap_cases,
)
from properties.suite import (
    BadInput,
    Finding,
    Gap,
    bad_inputs,
    call_ok,
    check_bad_input,
    check_contract,
    check_deterministic,
    check_input_forms,
    check_optimality,
    check_refinement_a,
    check_refinement_b,
    number,
    other_inputs,
    percent,
    same_outputs,
)
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.objectives import balancedness, gpu_loads, gpus_with_duplicate_replicas, peak_gpu_load
from spec.problem import BalancingProblem

DEFAULT_TARGET = "impl:rebalance_experts"
GIVE_UP_AFTER = 3  # hangs or crashes of the target, all sections together
BUG_REPORT = "this is a fault of eplb-spec, not of the target: please report it"

SECTIONS = (
    "contract",
    "deterministic",
    "input-forms",
    "optimality",
    "bad-input",
    "traces",
    "rebalance",
    "schedule",
    "refinement-a",
    "refinement-b",
)
"""The gate's sections, in the order they run; ``--checks`` and ``--skip`` name them.
``rebalance`` runs when the gate knows how the target takes an old placement
(``--previous``, or an engine adapter that says), ``schedule`` with a ``--schedule``
target, the refinements with theirs."""


class InternalError(Exception):
    """A fault inside the gate itself (the suite, the oracle, Hypothesis)."""


@dataclass(frozen=True)
class Budget:
    name: str
    contract: int
    deterministic: int
    input_forms: int
    optimality: int
    traces: int | None  # None: all
    trace_repeats: int
    rebalance: int = 30
    schedule: int = 30
    traces_elsewhere: int | None = 1  # traces scored at each of the other clusters
    clusters_elsewhere: tuple[tuple[int, int, int, int], ...] = ((288, 8, 1, 8),)


QUICK = Budget(
    "quick",
    contract=100,
    deterministic=20,
    input_forms=20,
    optimality=40,
    traces=2,
    trace_repeats=2,
    rebalance=30,
    schedule=30,
    traces_elsewhere=1,
    clusters_elsewhere=((288, 8, 1, 8),),
)
THOROUGH = Budget(
    "thorough",
    contract=800,
    deterministic=100,
    input_forms=100,
    optimality=200,
    traces=None,
    trace_repeats=3,
    rebalance=150,
    schedule=200,
    traces_elsewhere=None,
    clusters_elsewhere=((288, 8, 2, 16), (288, 8, 1, 8)),
)


@dataclass(frozen=True)
class TraceResult:
    trace: str
    generated: bool
    balancedness: float
    mean_peak_over_lower_bound: float
    max_peak_over_lower_bound: float
    gpus_with_duplicate_replicas: int
    seconds_per_call: float
    cluster: tuple[int, int, int, int] = TRACE_CLUSTER
    mean_proven_gap: float = 0.0  # peak over the least peak of a valid placement at hand, - 1
    max_proven_gap: float = 0.0
    max_proven_gap_layer: int = 0
    max_proven_gap_source: str = ""


def message_shape(message: str) -> str:
    """The first clause of a message with its numbers blanked: repeats of one cause (in
    another layer, trace or example) share a shape."""
    first = message.split("; ")[0]
    return re.sub(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", "#", first)


def input_size(value: dict[str, Any] | None) -> float:
    """How big a failing input is: its loads' count (a named trace counts as huge)."""
    if value is None:
        return math.inf
    if isinstance(value.get("weight"), list):
        return float(np.asarray(value["weight"], dtype=object).size) + len(json.dumps(value)) / 1e9
    return 1e12


def printable(text: str, limit: int = 400) -> str:
    """Text that came from a target, safe to print on one terminal line."""
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


@dataclass
class GateReport:
    target: str
    verdict: str = "pass"
    findings: list[Finding] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    bad_inputs: dict[str, str] = field(default_factory=dict)
    optimality: dict[str, Any] = field(default_factory=dict)
    traces: list[TraceResult] = field(default_factory=list)
    seconds: float = 0.0
    rebalance: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    traces_elsewhere: list[TraceResult] = field(default_factory=list)
    proven_gaps: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[Finding]:
        """The findings (the name of earlier versions)."""
        return self.findings

    def record(self, finding: Finding, where: dict[str, Any] | None, note: str = "") -> None:
        """Add a finding, or count it against the entry of the same cause."""
        self.verdict = "fail"
        shape = message_shape(finding.message)
        for entry in self.findings:
            if (entry.check, entry.code, message_shape(entry.message)) == (
                finding.check,
                finding.code,
                shape,
            ):
                entry.count += 1
                if input_size(where) < input_size(entry.input):
                    entry.input, entry.message = where, finding.message
                return
        self.findings.append(
            Finding(finding.check, finding.message, finding.code, input=where, note=note)
        )

    def summary(self) -> str:
        checked = self.header.get("checked") or [self.target]
        lines = [f"eplb-spec gate: {printable(', '.join(checked))}: {self.verdict.upper()}"]
        about_target = ("call", "sandbox", "target_file") if self.target in checked else ()
        for key in (*about_target, "budget"):
            if key in self.header:
                lines.append(f"  {key.replace('_', ' ')}: {printable(str(self.header[key]))}")
        lines += [f"  note: {printable(n)}" for n in self.notes]
        lines += [f"  {name:<14} {status}" for name, status in self.checks.items()]
        for f in self.findings:
            seen = f" (seen {f.count} times)" if f.count > 1 else ""
            lines.append(f"  FINDING [{f.check}/{f.code}]{seen} {printable(f.message)}")
            if f.note:
                lines.append(f"    {printable(f.note)}")
            if f.input is not None:
                lines.append(f"    smallest input: {printable(json.dumps(f.input), 2000)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        findings = [f.to_json() for f in self.findings]
        return {
            "format": 2,
            "target": self.target,
            "verdict": self.verdict,
            "header": self.header,
            "findings": findings,
            "checks": self.checks,
            "notes": self.notes,
            "bad_inputs": self.bad_inputs,
            "optimality": self.optimality,
            "traces": [asdict(t) for t in self.traces],
            "traces_elsewhere": [asdict(t) for t in self.traces_elsewhere],
            "proven_gaps": self.proven_gaps,
            "rebalance": self.rebalance,
            "schedule": self.schedule,
            "seconds": self.seconds,
        }


CLUSTER_KEYS = ("num_replicas", "num_groups", "num_nodes", "num_gpus")


def describe_input(weight: Any, cluster: tuple[int, int, int, int]) -> dict[str, Any]:
    """A failing input as JSON: the weight (or what names it) and the cluster."""
    return {"weight": weight, **dict(zip(CLUSTER_KEYS, cluster, strict=True))}


def describe(problem: BalancingProblem) -> dict[str, Any]:
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    return describe_input(problem.loads.tolist(), cluster)


def describe_case(case: Any) -> dict[str, Any]:
    if isinstance(case, BalancingProblem):
        return describe(case)
    return asdict(case)


class Progress:
    """A progress bar per section on a terminal (tqdm, on standard error); plain section
    lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.bar: Any = None
        self.section = ""

    def show(self, section: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.live:
            from tqdm import tqdm

            if self.bar is None or section != self.section:
                self.end()
                self.section = section
                self.bar = tqdm(total=total, desc=f"  {section:<14}", file=sys.stderr)
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        elif done == 0:
            sys.stderr.write(f"  {section} ...\n")

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Hunt:
    """What one Hypothesis-driven section saw."""

    examples: int
    checked: int = 0
    skipped: int = 0
    failed_at: int | None = None  # examples checked when the first finding came
    generated: int | None = None  # generated examples checked, once the hand-picked start
    finding: Finding | None = None
    input: dict[str, Any] | None = None
    note: str = ""
    soft: list[tuple[Finding, dict[str, Any]]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.failed_at is not None

    def status(self) -> str:
        outside = f", {self.skipped} outside the target's domain" if self.skipped else ""
        if self.failed_at is None:
            return f"{self.checked} examples{outside}: pass"
        if self.generated is not None and self.failed_at > self.generated:
            picked = self.failed_at - self.generated
            return f"FAIL on hand-picked problem {picked}, after {self.generated} passed{outside}"
        return f"FAIL at example {self.failed_at} of {self.examples}{outside}"


def hunt(
    name: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any, Hunt], None],
    examples: int,
    progress: Progress,
    hand_picked: Sequence[Any] = (),
) -> Hunt:
    """Run ``check`` on ``examples`` generated cases. On a finding, Hypothesis shrinks it
    to the smallest failing case (a hang or crash is kept as first met, to save the time
    each further call would cost). ``check`` sees the ``Hunt`` so that it can record
    only what it observes before the first failure (shrinking replays are not examples).
    ``hand_picked``: cases checked after the generated ones, when those all passed.
    """
    state = Hunt(examples)
    last: list[Any] = []
    stuck: list[tuple[Finding, Any]] = []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    )
    @given(strategy)
    def run(case: Any) -> None:
        if stuck:
            raise stuck[0][0]
        last[:] = [case]
        if state.checked and not state.failed:
            progress.show(name, min(state.checked, examples), examples)
        try:
            check(case, state)
        except Finding as finding:
            if state.failed_at is None:
                state.failed_at = state.checked + 1
                state.finding, state.input = finding, describe_case(case)
            if finding.check in ("timeout", "crash", "undecodable-result"):
                stuck.append((finding, case))
            raise
        if not state.failed:
            state.checked += 1

    progress.show(name, 0, examples)
    try:
        run()
    except Finding as finding:
        if stuck:
            state.finding, state.input = stuck[0][0], describe_case(stuck[0][1])
        else:  # Hypothesis replays the smallest failing example last
            state.finding = finding
            state.input = describe_case(last[0]) if last else state.input
    except Flaky:
        state.note = (
            "the failure did not repeat when the same input was replayed: the target is "
            "nondeterministic or depends on timing; this is the first failing input seen"
        )
    except Exception as error:
        raise InternalError(
            f"section {name!r} stopped on {type(error).__name__}: {error}\n"
            + "".join(traceback.format_exception(error))
        ) from error
    finally:
        progress.end()
    if not state.failed:
        state.generated = state.checked
    for case in hand_picked if not state.failed else ():
        try:
            check(case, state)
        except Finding as finding:
            state.failed_at = state.checked + 1
            state.finding, state.input = finding, describe_case(case)
            break
        state.checked += 1
    return state


@dataclass
class GateRun:
    """The state shared by the sections of one gate run."""

    report: GateReport
    budget: Budget
    caller: IsolatedTarget
    engine: EngineAdapter | None
    failures: FailureCount
    progress: Progress
    max_gap_percent: float | None
    timeout_s: float
    memory_mb: int
    gaps: list[Gap] = field(default_factory=list)
    previous: PreviousArgument | None = None  # how the target takes an old placement
    proven: list[ProvenGap] = field(default_factory=list)  # every layer scored
    failing_proven: list[ProvenGap] = field(default_factory=list)  # the last failing example
    budgeted: BudgetedMode | None = None  # --eps / --max-transfers: a budgeted rebalance

    @property
    def gave_up(self) -> bool:
        return self.failures.count >= GIVE_UP_AFTER or self.caller.dead is not None

    def outside(self, problem: BalancingProblem) -> str | None:
        """Why an engine's caller never makes this call, or None (always for plain
        targets)."""
        if self.engine is None:
            return None
        cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
        return self.engine.outside_domain(
            problem.num_experts, cluster
        ) or self.engine.outside_load_domain(problem.loads)

    def call(self, *args: Any, **kwargs: Any) -> CallResult | CallFailure:
        """The target's call; an engine that only ever receives its caller's dtype gets
        every weight (the first argument) in it, contiguous."""
        if self.engine is not None and self.engine.only_caller_dtype and args:
            dtype = self.engine.caller_dtype or "float64"
            first = args[0]
            if isinstance(first, TensorArg):
                args = (replace(first, dtype=dtype, contiguous=True), *args[1:])
        return self.caller.call(*args, **kwargs)

    def dtype_for(self, values: np.ndarray) -> str:
        """The dtype of the gate's ordinary call: an engine caller's where the values fit
        it exactly, float64 otherwise (and for plain targets)."""
        dtype = None if self.engine is None else self.engine.caller_dtype
        if dtype is None:
            return "float64"
        loads = np.asarray(values, dtype=np.float64)
        limits = np.iinfo(np.dtype(dtype))
        fits = bool(
            np.isfinite(loads).all()
            and (loads == np.round(loads)).all()
            and (loads >= limits.min).all()
            and (loads <= limits.max).all()
        )
        return dtype if fits else "float64"

    def guarded(
        self, check: Callable[[BalancingProblem, Hunt], None]
    ) -> Callable[[BalancingProblem, Hunt], None]:
        """``check`` on problems in the target's domain, while the target is alive."""

        def run(problem: BalancingProblem, state: Hunt) -> None:
            if self.gave_up:
                return
            if self.outside(problem) is not None:
                state.skipped += not state.failed
                return
            check(problem, state)

        return run

    def finish_hunt(self, name: str, state: Hunt) -> None:
        self.report.checks[name] = state.status()
        for finding, where in state.soft:
            self.report.record(finding, where)
        if state.finding is not None:
            self.report.record(state.finding, state.input, state.note)


class SoftFindings(list[Finding]):
    """Findings of one example that do not stop the search (types only, transfers above
    the relabeling optimum), recorded on the hunt until its first failure."""

    def __init__(self, state: Hunt, case: Any) -> None:
        super().__init__()
        self.state, self.case = state, case

    def append(self, finding: Finding) -> None:
        super().append(finding)
        if not self.state.failed:
            self.state.soft.append((finding, describe_case(self.case)))


def run_sections(run: GateRun, chosen: Collection[str]) -> None:
    """The Hypothesis-driven sections."""
    call = run.call

    def contract(problem: BalancingProblem, state: Hunt) -> None:
        soft = SoftFindings(state, problem)
        check_contract(call, problem, soft, run.dtype_for(problem.loads))

    def deterministic(problem: BalancingProblem, state: Hunt) -> None:
        between = [p for p in other_inputs(problem) if run.outside(p) is None]
        check_deterministic(call, problem, run.dtype_for(problem.loads), between)

    def input_forms(problem: BalancingProblem, state: Hunt) -> None:
        check_input_forms(call, problem, run.dtype_for(problem.loads))

    last_gaps: list[Gap] = []

    def optimality(problem: BalancingProblem, state: Hunt) -> None:
        soft = SoftFindings(state, problem)
        dtype = run.dtype_for(problem.loads)
        found: list[Gap] = []
        proven: list[ProvenGap] = []
        where = describe(problem)
        try:
            check_optimality(
                call, problem, run.max_gap_percent, soft, dtype, seen=found, proven=proven
            )
        except Finding:  # Hypothesis replays the smallest failing example last
            run.failing_proven = [replace(g, where={**where, "layer": g.layer}) for g in proven]
            raise
        finally:  # the reported (shrunk) example's gaps join the summary after the hunt
            last_gaps[:] = found
        if not state.failed:
            run.gaps.extend(found)
            run.proven.extend(replace(g, where={**where, "layer": g.layer}) for g in proven)
        if currently_in_test_context():  # not for the hand-picked problems
            steer_towards(max((g.relative for g in found), default=0.0), label="gap to optimum")
            steer_towards(max((float(g.gap) for g in proven), default=0.0), label="proven gap")

    sections: list[
        tuple[str, st.SearchStrategy[BalancingProblem], Callable[[BalancingProblem, Hunt], None]]
    ] = [
        ("contract", gate_problems(), contract),
        ("deterministic", gate_problems(), deterministic),
        ("input-forms", gate_integer_problems(), input_forms),
        ("optimality", scored_problems(), optimality),
    ]
    examples = {
        "contract": run.budget.contract,
        "deterministic": run.budget.deterministic,
        "input-forms": run.budget.input_forms,
        "optimality": run.budget.optimality,
    }
    fixed_dtype = (
        run.engine.caller_dtype if run.engine is not None and run.engine.only_caller_dtype else None
    )
    for name, strategy, check in sections:
        if name not in chosen:
            continue
        if name == "input-forms" and fixed_dtype is not None:
            run.report.checks[name] = (
                f"skipped: {run.engine.engine if run.engine else ''}'s caller always passes "
                f"contiguous {fixed_dtype} loads"
            )
            continue
        if run.gave_up:
            run.report.checks[name] = "skipped: the target hung or crashed too often"
            continue
        picked = engine_regime_examples() if name in ("contract", "optimality") else []
        state = hunt(name, strategy, run.guarded(check), examples[name], run.progress, picked)
        if name == "optimality" and state.finding is not None and state.finding.code == "max-gap":
            # the last call was the reported input (Hypothesis replays the smallest
            # failing example last): its gap, not the first failing one's, is the worst
            run.gaps.extend(last_gaps)
        run.finish_hunt(name, state)
        if name == "optimality" and state.finding is not None:
            run.proven.extend(run.failing_proven)
    summarise_gaps(run)


def summarise_gaps(run: GateRun) -> None:
    proven = [g for g in run.gaps if g.proven]
    if not proven:
        return
    worst = max(proven, key=lambda g: g.relative)
    run.report.optimality = {
        "layers_compared": len(proven),
        "at_optimum": sum(g.relative <= 1e-12 for g in proven),
        "mean_gap": statistics.fmean(g.relative for g in proven),
        "max_gap": worst.relative,
        "max_gap_peak": worst.peak,
        "max_gap_optimum": str(worst.optimum),
        "gaps": [
            {"peak": g.peak, "optimum": str(g.optimum), "relative": g.relative} for g in proven
        ],
    }


def summarise_proven_gaps(run: GateRun) -> None:
    """The proven gaps of every layer scored, overall and for generated problems and
    traces apart; the worst one named with its input."""
    if not run.proven:
        return
    traced = [g for g in run.proven if g.where is not None and "trace" in g.where]
    generated = [g for g in run.proven if g.where is None or "trace" not in g.where]
    run.report.proven_gaps = {
        **summarise_proven(run.proven),
        "generated": summarise_proven(generated),
        "traces": summarise_proven(traced),
    }


def rebalance_outside(run: GateRun, case: RebalanceCase) -> str | None:
    """Why an engine's caller never makes this rebalance (the new or the old loads)."""
    before = case.previous_problem
    return run.outside(case.problem) or (None if before is None else run.outside(before))


def rebalance_section(run: GateRun) -> None:
    """The target with an old placement (``properties.rebalance``)."""
    argument = run.previous
    assert argument is not None
    mode = run.budgeted
    tally = RebalanceTally() if mode is None else BudgetedTally()

    def check(case: RebalanceCase, state: Hunt) -> None:
        if run.gave_up:
            return
        if rebalance_outside(run, case) is not None:
            state.skipped += not state.failed
            return
        soft = SoftFindings(state, case)
        if mode is not None:
            assert isinstance(tally, BudgetedTally)
            check_budgeted_case(
                run.call,
                case,
                argument,
                mode,
                soft=soft,
                tally=None if state.failed else tally,
                dtype=run.dtype_for,
            )
            return
        check_rebalance_case(
            run.call,
            case,
            argument,
            soft=soft,
            tally=None if state.failed else tally,
            dtype=run.dtype_for,
        )

    state = hunt("rebalance", rebalance_gate_cases(), check, run.budget.rebalance, run.progress)
    run.finish_hunt("rebalance", state)
    if isinstance(tally, BudgetedTally) and tally.layers_above_reference:
        status = run.report.checks["rebalance"]
        above = (
            f"transfers above the relabeling optimum in {tally.layers_above_reference} of "
            f"{tally.layers} layer(s)"
        )
        run.report.checks["rebalance"] = (
            status.removesuffix(": pass") + f": FAIL ({above})"
            if status.endswith(": pass")
            else f"{status}; {above}"
        )
    if any(f.code == "transfers-above-fewest" for f, _ in state.soft):
        status = run.report.checks["rebalance"]
        above = (
            f"transfers above the relabeling optimum in {tally.layers_above_fewest} of "
            f"{tally.layers} layer(s)"
        )
        run.report.checks["rebalance"] = (
            status.removesuffix(": pass") + f": FAIL ({above})"
            if status.endswith(": pass")
            else f"{status}; {above}"
        )
    how = describe_previous(argument)
    if run.engine is not None and argument == run.engine.previous_argument:
        how = f"as {run.engine.engine}'s caller passes it (see the call)"
    run.report.rebalance = {"previous": how, **tally.to_json()}


def schedule_section(run: GateRun, target: str, exchanges: bool) -> None:
    """A transfer schedule target on pairs of valid placements (``properties.rebalance``)."""
    if run.gave_up:
        run.report.checks["schedule"] = "skipped: the target hung or crashed too often"
        return
    tally = ScheduleTally()
    with IsolatedTarget(
        target, run.timeout_s, memory_mb=run.memory_mb, failures=run.failures
    ) as scheduler:

        def check(case: Any, state: Hunt) -> None:
            if not run.gave_up:
                check_schedule_case(
                    scheduler.call,
                    case,
                    exchanges=exchanges,
                    tally=None if state.failed else tally,
                )

        state = hunt("schedule", schedule_cases(), check, run.budget.schedule, run.progress)
    run.finish_hunt("schedule", state)
    rule = "exchanges allowed" if exchanges else "one directed peer per GPU and batch"
    run.report.schedule = {"target": target, "rule": rule, **tally.to_json()}


def bad_input_outside(run: GateRun, case: BadInput) -> str | None:
    """Why an engine's caller never makes this bad call (None: it may)."""
    if run.engine is None:
        return None
    experts = int(case.weight.values.shape[1])
    return run.engine.outside_domain(experts, case.cluster) or run.engine.outside_load_domain(
        case.weight.values
    )


def bad_input_section(run: GateRun) -> None:
    cases = bad_inputs()
    failed = skipped = 0
    for case in cases:
        if run.gave_up:
            run.report.bad_inputs[case.name] = "skipped: the target hung or crashed too often"
            continue
        why = bad_input_outside(run, case)
        alternative = case.on_one_node() if why is not None else None
        if alternative is not None:
            why_there = bad_input_outside(run, alternative)
            case, why = (alternative, None) if why_there is None else (case, why_there)
        if why is not None:
            skipped += 1
            run.report.bad_inputs[case.name] = f"skipped: {why}"
            continue
        case = replace(case, weight=replace(case.weight, dtype=run.dtype_for(case.weight.values)))
        try:
            run.report.bad_inputs[case.name] = check_bad_input(run.call, case)
        except Finding as finding:
            failed += 1
            run.report.bad_inputs[case.name] = "VIOLATION"
            run.report.record(finding, describe_input(case.weight.values.tolist(), case.cluster))
    outside = f", {skipped} outside the target's domain" if skipped else ""
    run.report.checks["bad-input"] = f"{len(cases)} cases{outside}: " + (
        "FAIL" if failed else "pass"
    )


def trace_cluster(run: GateRun, loads: np.ndarray) -> tuple[int, int, int, int] | None:
    """The cluster the traces are scored at: (288, 8, 4, 32), or for an engine algorithm
    whose caller never uses that cluster, the same GPUs as one node; None when neither
    is in the engine's domain (the reasons go into the notes)."""
    replicas, groups, _, gpus = TRACE_CLUSTER
    for cluster in (TRACE_CLUSTER, (replicas, groups, 1, gpus)):
        why = run.outside(BalancingProblem(loads, *cluster))
        if why is None:
            return cluster
        run.report.notes.append(f"traces not scored at {cluster}: {why}")
    return None


def trace_jobs(
    run: GateRun, chosen: list[Any], main: tuple[int, int, int, int]
) -> list[tuple[Any, tuple[int, int, int, int]]]:
    """Every chosen trace at ``main``, and the first ``traces_elsewhere`` of them at each
    of the budget's ``clusters_elsewhere`` in the target's domain: 1 node of 8 GPUs in a
    quick run, 2 nodes of 8 and 1 node in a thorough one, with the usual 32 redundant
    slots (the main cluster is 4 nodes of 8)."""
    jobs = [(workload, main) for workload in chosen]
    count = run.budget.traces_elsewhere
    for cluster in run.budget.clusters_elsewhere:
        if cluster == main:
            continue
        why = run.outside(BalancingProblem(chosen[0].loads, *cluster))
        if why is not None:
            run.report.notes.append(f"traces not scored at {cluster}: {why}")
            continue
        jobs += [(workload, cluster) for workload in chosen[:count]]
    return jobs


def traces_section(run: GateRun, data: str | None) -> None:
    workloads, note = default_workloads(data)
    run.report.notes.append(note)
    chosen = workloads if run.budget.traces is None else workloads[: run.budget.traces]
    main = trace_cluster(run, chosen[0].loads)
    if main is None:
        run.report.checks["traces"] = "skipped: outside the target's domain"
        return
    run.report.header["trace_cluster"] = list(main)
    jobs = trace_jobs(run, chosen, main)
    failed = 0
    for index, (workload, cluster) in enumerate(jobs):
        run.progress.show("traces", index, len(jobs))
        if run.gave_up:
            break
        problem = BalancingProblem(workload.loads, *cluster)
        where = {"trace": workload.name, **dict(zip(CLUSTER_KEYS, cluster, strict=True))}
        outputs, times = call_on_trace(run, problem, where)
        if outputs is None:
            failed += 1
            continue
        gaps = proven_gaps(
            problem,
            outputs.phy2log,
            trace_upper_bounds(problem),
            trace_lower_bounds(problem),
            where,
        )
        run.proven.extend(gaps)
        limit = run.max_gap_percent
        worst = None if limit is None else proven_gap_above(gaps, limit)
        if worst is not None:
            failed += 1
            finding = Finding("optimality", describe_gap(worst, limit), "max-gap")
            run.report.record(finding, worst.where)
        scored = score_trace(workload.name, workload.generated, problem, outputs, times, gaps)
        (run.report.traces if cluster == main else run.report.traces_elsewhere).append(scored)
    run.progress.show("traces", len(jobs), len(jobs))
    run.progress.end()
    scored_count = len(run.report.traces) + len(run.report.traces_elsewhere)
    clusters = len({cluster for _, cluster in jobs})
    run.report.checks["traces"] = (
        f"{len(jobs)} (trace, cluster) pairs at {clusters} clusters, {scored_count} scored: "
        + ("FAIL" if failed else "pass")
    )


def call_on_trace(
    run: GateRun, problem: BalancingProblem, where: dict[str, Any]
) -> tuple[Any, list[float]]:
    """The target's valid outputs on a trace (every repeat the same placement) and the
    time of each call; None for the outputs after a finding."""
    times: list[float] = []
    first = None
    for _ in range(run.budget.trace_repeats):
        soft: list[Finding] = []
        try:
            outputs, result = check_contract(run.call, problem, soft, run.dtype_for(problem.loads))
        except Finding as broken:
            run.report.record(broken, where)
            return None, times
        for type_only in soft:
            run.report.record(type_only, where)
        if first is not None and not same_outputs(first, outputs):
            message = "a trace called again gave another placement"
            run.report.record(Finding("deterministic", message, "trace-repeats"), where)
            return None, times
        if first is None:
            first = outputs
        times.append(result.seconds)
    return first, times


BOUNDS_KEPT = 32
_trace_bounds: dict[tuple[str, tuple[int, ...], tuple[int, int, int, int]], list[Fraction]] = {}


def trace_lower_bounds(problem: BalancingProblem) -> list[Fraction]:
    """``layer_lower_bound`` of every layer, remembered by the loads' digest: they depend
    on the trace and the cluster only, and a process that scores many targets (an
    evaluator worker) would otherwise recompute them for each."""
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    key = (hashlib.sha256(problem.loads.tobytes()).hexdigest(), problem.loads.shape, cluster)
    if key not in _trace_bounds:
        if len(_trace_bounds) >= BOUNDS_KEPT:
            _trace_bounds.pop(next(iter(_trace_bounds)), None)
        _trace_bounds[key] = [layer_lower_bound(problem, x) for x in range(problem.num_layers)]
    return _trace_bounds[key]


def score_trace(
    name: str,
    generated: bool,
    problem: BalancingProblem,
    outputs: Any,
    times: list[float],
    proven: list[ProvenGap] | None = None,
) -> TraceResult:
    """One trace's scores; ``proven``: its layers' proven gaps (``properties.quality``)."""
    phy2log, logcnt = np.asarray(outputs.phy2log), np.asarray(outputs.logcnt)
    loads = gpu_loads(problem.loads, phy2log, logcnt, problem.num_gpus)
    peaks = peak_gpu_load(problem.loads, phy2log, logcnt, problem.num_gpus)
    bounds = trace_lower_bounds(problem)
    ratios = [
        float(peaks[layer]) / float(bound)
        for layer in range(problem.num_layers)
        if (bound := bounds[layer]) > 0
    ]
    return TraceResult(
        trace=name,
        generated=generated,
        balancedness=balancedness(loads),
        mean_peak_over_lower_bound=statistics.fmean(ratios) if ratios else 1.0,
        max_peak_over_lower_bound=max(ratios) if ratios else 1.0,
        gpus_with_duplicate_replicas=int(
            gpus_with_duplicate_replicas(phy2log, problem.num_gpus).sum()
        ),
        seconds_per_call=statistics.median(times),
        cluster=(problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus),
        **proven_fields(proven or []),
    )


def proven_fields(gaps: list[ProvenGap]) -> dict[str, Any]:
    """A ``TraceResult``'s proven gap fields."""
    if not gaps:
        return {}
    worst = max(gaps, key=lambda g: (g.gap, -g.layer))
    return {
        "mean_proven_gap": statistics.fmean(float(g.gap) for g in gaps),
        "max_proven_gap": float(worst.gap),
        "max_proven_gap_layer": worst.layer,
        "max_proven_gap_source": worst.source,
    }


def refinement_section(
    run: GateRun, name: str, target: str, strategy: st.SearchStrategy[Any], prop: Any
) -> None:
    if run.gave_up:
        run.report.checks[name] = "skipped: the target hung or crashed too often"
        return
    with IsolatedTarget(
        target, run.timeout_s, memory_mb=run.memory_mb, failures=run.failures
    ) as refiner:

        def check(case: Any, state: Hunt) -> None:
            if not run.gave_up:
                prop(refiner.call, case)

        state = hunt(name, strategy, check, run.budget.contract, run.progress)
    run.finish_hunt(name, state)


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("eplb-spec", "torch", "numpy", "hypothesis", "ortools"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def target_file(target: str, caller: IsolatedTarget, engine: EngineAdapter | None) -> str:
    """The file the target's code lives in: from the path given, the engine adapter, or
    (for a module target) as the worker reported it."""
    if engine is not None:
        return str(engine.source)
    location = target.rpartition(":")[0]
    if location.endswith(".py") or "/" in location:
        return str(Path(location).resolve())
    return caller.resolved_file


def how_previous(
    previous: str | int | None, engine: EngineAdapter | None
) -> PreviousArgument | None:
    """How the target takes an old placement: ``--previous``, else the engine adapter's
    own convention, else None (the rebalance section does not run)."""
    if previous is not None:
        return parse_previous(previous)
    if engine is not None and engine.previous_argument is not None:
        return engine.previous_argument
    return None


def schedule_rule(schedule: str, exchanges: bool | None) -> bool:
    """Whether the schedule may pair a GPU with one peer both ways in a batch: as given,
    else the engine adapter's rule, else yes (the specification's default)."""
    engine = find_engine(schedule)
    if engine is not None and engine.kind != "schedule":
        raise ValueError(
            f"--schedule {schedule}: names a balancer, not a transfer schedule (vLLM's "
            "scheduler is vllm:migration_scheduler)"
        )
    if exchanges is not None:
        return exchanges
    return engine.exchanges if engine is not None else True


def describe_call(
    target: str, engine: EngineAdapter | None, timeout_s: float, memory_mb: int
) -> str:
    isolation = (
        f"in its own process, {timeout_s:g} s per call, {memory_mb} MB of data "
        "(RLIMIT_DATA), no capabilities"
    )
    if engine is not None:
        return f"{engine.description} ({isolation})"
    location = target.rpartition(":")[0]
    if location.endswith(".py") or "/" in location:  # as `python path/to/file.py` runs
        isolation += f"; {str(Path(location).parent) or '.'} first on sys.path"
    return (
        f"{target}(weight, num_replicas, num_groups, num_nodes, num_gpus), weight a "
        f"torch.Tensor [layers, experts] (float64; int64, float32 and non-contiguous in "
        f"input-forms) ({isolation})"
    )


def choose_sections(
    checks: Collection[str] | None, skip: Collection[str] | None
) -> tuple[str, ...]:
    for option, names in (("checks", checks), ("skip", skip)):
        unknown = sorted(set(names or ()) - set(SECTIONS))
        if unknown:
            raise ValueError(f"--{option}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    wanted = SECTIONS if checks is None else tuple(s for s in SECTIONS if s in checks)
    return tuple(s for s in wanted if s not in set(skip or ()))


# The sections that need something besides the target, and the option that gives it.
NEEDS = {
    "rebalance": "--previous (how the target takes an old placement)",
    "schedule": "--schedule TARGET",
    "refinement-a": "--refine-a TARGET",
    "refinement-b": "--refine-b TARGET",
}


def sections_that_run(
    chosen: Collection[str],
    checks: Collection[str] | None,
    available: dict[str, bool],
    given: dict[str, bool],
) -> tuple[str, ...]:
    """The chosen sections that can run: a section of ``NEEDS`` runs when what it
    needs is ``available``. Asking for one by ``--checks`` without it, giving an option
    whose section is left out, or leaving nothing to run is a ValueError, never a run
    that passes without checking what was asked."""
    for section, option in NEEDS.items():
        if checks is not None and section in checks and not available[section]:
            raise ValueError(f"--checks {section} needs {option}")
        if given[section] and section not in chosen:
            flag = option.split(" ")[0]
            raise ValueError(
                f"{flag} is given but the {section} section is left out by --checks/--skip"
            )
    runs = tuple(s for s in chosen if s not in NEEDS or available[s])
    if not runs:
        raise ValueError("nothing to check: --checks/--skip leave no section that can run")
    return runs


def run_gate(
    target: str = DEFAULT_TARGET,
    *,
    quick: bool = False,
    timeout_s: float = 60.0,
    max_gap_percent: float | None = None,
    data: str | None = None,
    progress: bool = False,
    refine_a: str | None = None,
    refine_b: str | None = None,
    checks: Collection[str] | None = None,
    skip: Collection[str] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    import_timeout_s: float | None = None,
    budget: Budget | None = None,
    after_checks: Callable[[IsolatedTarget, GateReport], None] | None = None,
    previous: str | int | None = None,
    schedule: str | None = None,
    schedule_exchanges: bool | None = None,
    started: float | None = None,
    eps: float | None = None,
    max_transfers: int | None = None,
    timeouts_allowed: int | None = None,
) -> GateReport:
    """Check ``target`` and return the report.

    Raises ``TargetError`` when the target cannot be imported, ValueError for bad
    arguments, and ``InternalError`` for a fault of the gate itself (never blamed on
    the target). ``refine_a`` / ``refine_b`` also check refinement functions against
    their contracts: ``refine(loads, counts) -> counts`` and
    ``refine(weights, gpu, rank, num_gpus) -> (gpu, rank)``. ``checks`` / ``skip``
    choose sections by name (``SECTIONS``). ``import_timeout_s`` bounds importing the
    target (default: the per-call timeout, at least 60 s). ``budget`` replaces the one
    ``quick`` chooses. ``after_checks(caller, report)`` runs once the checks are done,
    while the target's worker is still up (the evaluator times the target there).
    ``previous``: how the target takes an old placement, a keyword name or 6 (the sixth
    positional argument); engine adapters that take one need none. ``schedule``: a
    transfer schedule target ``f(previous, phy2log, num_experts, num_gpus, num_nodes)``;
    ``schedule_exchanges`` False checks the stricter one-directed-peer rule (the
    default for ``vllm:migration_scheduler``). ``started``: the ``time.perf_counter()``
    the report's time counts from (the command line's start; default: this call's).
    ``eps`` or ``max_transfers`` make the rebalance section check a budgeted rebalance
    (``properties.rebalance.check_budgeted_case``) instead of one that keeps its
    stateless balance. ``timeouts_allowed``: after that many hangs the target is no
    longer called (the evaluator's 1: a hang costs one timeout).
    """
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout_s!r}")
    if max_gap_percent is not None and not (
        isinstance(max_gap_percent, (int, float)) and 0 <= max_gap_percent < math.inf
    ):
        raise ValueError(f"max-gap must be a finite percentage >= 0, got {max_gap_percent!r}")
    chosen = choose_sections(checks, skip)
    start = time.perf_counter() if started is None else started
    budget = budget or (QUICK if quick else THOROUGH)
    report = GateReport(target)
    engine = find_engine(target)
    if engine is not None and engine.kind != "balancer":
        raise ValueError(
            f"--impl {target}: names a transfer schedule, not a balancer; pass it as --schedule"
        )
    argument = how_previous(previous, engine)
    exchanges = None if schedule is None else schedule_rule(schedule, schedule_exchanges)
    if schedule_exchanges is not None and schedule is None:
        raise ValueError("--no-exchanges applies to a schedule: give --schedule TARGET")
    given = {
        "rebalance": previous is not None,
        "schedule": schedule is not None,
        "refinement-a": refine_a is not None,
        "refinement-b": refine_b is not None,
    }  # an engine adapter may know how to pass an old placement without --previous
    available = {**given, "rebalance": argument is not None}
    budgeted = BudgetedMode.parse(eps, max_transfers)
    if budgeted is not None and argument is None:
        raise ValueError("--eps and --max-transfers check a rebalance: give --previous")
    chosen = sections_that_run(chosen, checks, available, given)
    if budgeted is not None and "rebalance" not in chosen:
        raise ValueError(
            "--eps/--max-transfers are given but the rebalance section is left out by "
            "--checks/--skip"
        )
    failures = FailureCount()
    with IsolatedTarget(
        target,
        timeout_s,
        memory_mb=memory_mb,
        failures=failures,
        import_timeout_s=import_timeout_s,
        timeouts_allowed=timeouts_allowed,
    ) as caller:
        run = GateRun(
            report,
            budget,
            caller,
            engine,
            failures,
            Progress(progress),
            max_gap_percent,
            timeout_s,
            memory_mb,
            previous=argument,
            budgeted=budgeted,
        )
        try:
            gate_body(run, chosen, data, refine_a, refine_b, schedule, exchanges)
            if after_checks is not None:
                after_checks(caller, report)
        except (InternalError, TargetError, ValueError):
            raise
        except Exception as error:
            raise InternalError(
                f"{type(error).__name__}: {error}\n" + "".join(traceback.format_exception(error))
            ) from error
        finally:
            written, excerpt = caller.output.summary()
            report.header["target_output"] = {"bytes": written, "excerpt": excerpt}
            if written:
                report.notes.append(
                    f"the target wrote {written} bytes to stdout/stderr (kept in the JSON "
                    "report, not shown here)"
                )
    for label in caller.late_changes:  # compared again once its worker was ended
        message = f"{label} was changed after the target had answered it"
        report.record(Finding("input-unmodified", message), None)
    report.seconds = time.perf_counter() - start
    return report


def gate_body(
    run: GateRun,
    chosen: Collection[str],
    data: str | None,
    refine_a: str | None,
    refine_b: str | None,
    schedule: str | None = None,
    exchanges: bool | None = None,
) -> None:
    report, caller = run.report, run.caller
    path = target_file(report.target, caller, run.engine)
    if run.engine is not None:
        engine = run.engine
        report.header["engine"] = {
            "name": engine.name,
            "engine": engine.engine,
            "algorithm": engine.algorithm,
            "version": engine.version,
            "origin": engine.origin,
            "source": str(engine.source),
            "sources_sha256": engine.source_sha256(),
        }
    report.header.update(
        {
            "versions": package_versions(),
            "target_file": path,
            "target_sha256": file_digest(path) if path else "",
            "budget": f"{run.budget.name} {asdict(run.budget)}; Hypothesis derandomized",
            "call": describe_call(report.target, run.engine, run.timeout_s, run.memory_mb),
            "sandbox": caller.sandbox_note,
            "sections": list(chosen),
        }
    )
    if run.previous is not None:
        report.header["previous"] = (
            f"an old placement (int64 [layers, replicas]) {describe_previous(run.previous)}"
        )
    if schedule is not None:
        adapter = find_engine(schedule)
        report.header["schedule"] = (
            adapter.description
            if adapter is not None
            else (
                f"{schedule}(previous, phy2log, num_experts, num_gpus, num_nodes) -> "
                "(transfers [T, 5], num_batches [L])"
            )
        )
    others = [("schedule", schedule), ("refinement-a", refine_a), ("refinement-b", refine_b)]
    balancer_checked = bool(set(chosen) - {name for name, _ in others})
    report.header["checked"] = [report.target] * balancer_checked + [
        f"{name} {target}" for name, target in others if target is not None and name in chosen
    ]  # what the headline names
    first = BalancingProblem([[1.0, 2.0]], 2, 1, 1, 1)
    try:
        probe = call_ok(run.call, first, run.dtype_for(first.loads)) if balancer_checked else None
    except Finding as finding:
        report.record(finding, describe(first))
    else:
        if probe is not None:
            report.header["returns"] = probe.returned
            report.notes.append(f"the target returns {probe.returned}")
            value = probe.value
            if not (isinstance(value, (tuple, list)) and len(value) == 3):
                report.notes.append("log2phy and logcnt are derived from the returned phy2log")
    run_sections(run, chosen)
    if "bad-input" in chosen:
        bad_input_section(run)
    if "traces" in chosen:
        if run.gave_up:
            report.checks["traces"] = "skipped: the target hung or crashed too often"
        else:
            traces_section(run, data)
    summarise_proven_gaps(run)
    if "rebalance" in chosen and run.previous is not None:
        if run.gave_up:
            report.checks["rebalance"] = "skipped: the target hung or crashed too often"
        else:
            rebalance_section(run)
    if "schedule" in chosen and schedule is not None:
        schedule_section(run, schedule, True if exchanges is None else exchanges)
    refinements = [
        ("refinement-a", refine_a, count_cases(), check_refinement_a),
        ("refinement-b", refine_b, swap_cases(), check_refinement_b),
    ]
    for name, refinement, strategy, prop in refinements:
        if refinement is not None and name in chosen:
            refinement_section(run, name, refinement, strategy, prop)
    if run.gave_up:
        report.notes.append(
            f"stopped calling the target after {run.failures.count} hangs or crashes"
        )
        if not report.findings:  # never a pass for a target that could not be checked
            report.record(
                Finding("crash", caller.dead or "the target hung or crashed too often"), None
            )
    if caller.restarts:
        report.notes.append(f"the worker process was restarted {caller.restarts} time(s)")


def gate_report_text(report: GateReport) -> str:
    """The report as printed by ``eplb-spec gate``."""
    lines = [report.summary()]
    if report.bad_inputs:
        lines.append("  bad input handling:")
        for name, outcome in report.bad_inputs.items():
            lines.append(f"    {name:<40} {printable(outcome)}")
    if report.optimality:
        o = report.optimality
        lines.append(
            f"  tiny problems vs the proven optimum: {o['layers_compared']} layers, "
            f"{o['at_optimum']} at the optimum, mean gap {percent(o['mean_gap'])}, "
            f"max gap {percent(o['max_gap'])} "
            f"(peak {number(o['max_gap_peak'])} vs {o['max_gap_optimum']})"
        )
    if report.proven_gaps:
        lines += proven_gap_lines(report.proven_gaps)
    if report.traces:
        lines.append(
            f"  real traces at {tuple(report.header.get('trace_cluster', TRACE_CLUSTER))}"
            + (" and elsewhere" if report.traces_elsewhere else "")
            + ":"
        )
        lines.append(
            f"    {'trace':<26}{'cluster':<18}{'balancedness':>13}{'peak/LB mean':>14}{'max':>8}"
            f"{'proven mean':>12}{'max':>8}{'dup GPUs':>10}{'s/call':>9}"
        )
        for t in [*report.traces, *report.traces_elsewhere]:
            lines.append(
                f"    {t.trace:<26}{tuple(t.cluster)!s:<18}{t.balancedness:>13.4f}"
                f"{t.mean_peak_over_lower_bound:>14.4f}{t.max_peak_over_lower_bound:>8.4f}"
                f"{percent(t.mean_proven_gap):>12}{percent(t.max_proven_gap):>8}"
                f"{t.gpus_with_duplicate_replicas:>10}{t.seconds_per_call:>9.3f}"
            )
        lines.append(
            "    peak/LB: peak GPU load over a certified lower bound on the optimum (1 is optimal);"
            " proven: the peak's gap to the least peak of a valid placement at hand (the "
            "reference's or the baseline's), which the optimum cannot exceed;"
            " s/call: wall time of one isolated call, seen from the gate."
        )
    if report.rebalance and "mode" in report.rebalance:
        r = report.rebalance
        lines.append(
            f"  rebalance, budgeted ({r['mode']}; {r['previous']}): {r['cases']} cases, "
            f"{r['layers']} layers: {r['transfers']} transfers, peak at most "
            f"{r['worst_peak_over_stateless']:.4f} x its stateless answer's; relabeling "
            f"optimum {r['fewest_relabeled']} (above it in {r['layers_above_reference']} "
            f"layer(s)); impl.incremental {r['incremental_transfers']}; load-flow bound "
            f"{r['bound']['lower']} on {r['bound']['layers']} layer(s)"
        )
    elif report.rebalance:
        r = report.rebalance
        oracle = r["oracle"]
        lines.append(
            f"  rebalance ({r['previous']}): {r['cases']} cases, {r['layers']} layers: "
            f"{r['transfers']} transfers; its stateless answer {r['stateless_transfers']}, "
            f"relabeled for the fewest {r['fewest_relabeled']}; above that in "
            f"{r['layers_above_fewest']} layer(s)"
        )
        if oracle["layers"]:
            lines.append(
                f"    tiny layers vs the oracle's fewest at the target's own peak: "
                f"{oracle['proven']} of {oracle['layers']} proven, {oracle['at_fewest']} at the "
                f"fewest; {oracle['target_transfers']} transfers where {oracle['fewest']} suffice"
            )
    if report.schedule:
        s = report.schedule
        lines.append(
            f"  schedule ({s['rule']}): {s['cases']} cases, {s['transfers']} transfers in "
            f"{s['batches']} batches (at least {s['most_links']} with its sources: a GPU's "
            "links); "
            f"{s['inter_node']} cross nodes where {s['fewest_inter_node']} must"
        )
    lines.append(f"  {report.seconds:.1f} s")
    return "\n".join(lines)


def proven_gap_lines(proven: dict[str, Any]) -> list[str]:
    """The proven gaps' summary and the worst one, named."""
    parts = [
        f"{proven[part]['layers']} {label}"
        for part, label in (("generated", "generated"), ("traces", "of traces"))
        if proven.get(part)
    ]
    worst = proven["worst"]
    where = worst["input"] or {}
    shown = printable(json.dumps(where), 600)
    return [
        f"  proven gaps (peak over the least peak of a valid placement at hand, which the "
        f"optimum cannot exceed): {proven['layers']} layers ({', '.join(parts)}), "
        f"{proven['at_upper_bound']} at that bound, mean {percent(proven['mean'])}, worst "
        f"{exact_percent(Fraction(worst['proven_gap_exact']))}",
        f"    worst: layer {worst['layer']}, peak {exact_text(Fraction(worst['peak']))} vs "
        f"{exact_text(Fraction(worst['upper_bound']))} ({worst['upper_bound_source']}), "
        f"{percent(worst['gap_to_lower_bound'])} above the certified lower bound; input {shown}",
    ]


def write_json(path: str, document: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so that a reader never sees half a report."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, target)


signals_end_the_run = interruptible
"""SIGINT, SIGTERM and SIGHUP end the run: no verdict, workers and their trees ended
(``properties.isolation.interruptible``)."""


EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def run_same_as(
    target: str,
    same_as: str,
    *,
    quick: bool = False,
    timeout_s: float = 60.0,
    data: str | None = None,
    same_balance: bool = False,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> FidelityRun:
    """Fidelity mode: the target's placements against a reference's, step by step
    (``properties.fidelity``), with the target isolated as in the gate."""
    from properties.fidelity import fidelity_problems, reference_named, run_fidelity

    reference_named(same_as)  # ValueError before any work
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout_s!r}")
    engine = find_engine(target)
    failures = FailureCount()
    with IsolatedTarget(target, timeout_s, memory_mb=memory_mb, failures=failures) as caller:
        run = GateRun(
            GateReport(target),
            QUICK if quick else THOROUGH,
            caller,
            engine,
            failures,
            Progress(False),
            None,
            timeout_s,
            memory_mb,
        )
        strategy = fidelity_problems().filter(lambda p: run.outside(p) is None)
        picked = [p for p in engine_regime_examples() if run.outside(p) is None]
        workloads, note = default_workloads(data)
        try:
            cluster = trace_cluster(run, workloads[0].loads)
            # the traces under the other policy too: 3 nodes do not split 8 groups
            other = (TRACE_CLUSTER[0], TRACE_CLUSTER[1], 3, 24)
            clusters = [c for c in (cluster, other) if c is not None]
            clusters = [
                c for c in clusters if run.outside(BalancingProblem(workloads[0].loads, *c)) is None
            ]
            fidelity = run_fidelity(
                run.call,
                same_as,
                strategy,
                examples=60 if quick else 200,
                workloads=workloads,
                max_traces=2 if quick else None,
                same_balance=same_balance,
                clusters=clusters,
                picked=picked,
                shrink_seconds=30 if quick else 120,
            )
            fidelity.notes[:0] = [note, *run.report.notes]
            return fidelity
        except (TargetError, ValueError):
            raise
        except Exception as error:
            raise InternalError(
                f"{type(error).__name__}: {error}\n" + "".join(traceback.format_exception(error))
            ) from error


def command(
    target: str,
    json_path: str | None,
    report_format: int,
    run: Callable[[], tuple[str, str, dict[str, Any]]],
) -> int:
    """What ``eplb-spec gate`` does around a run: the JSON report says ``incomplete`` from
    the start (so a run that is killed, by the target say, never leaves a passing verdict
    behind), a usage fault is one line and exit 2, a fault of the gate exit 3 asking for
    a bug report, an interruption exit 130. ``run`` returns the verdict, the text to print
    and the JSON report."""

    def leave(verdict: str, extra: dict[str, Any] | None = None) -> None:
        if json_path:
            document = {"format": report_format, "target": target, "verdict": verdict}
            write_json(json_path, {**document, **(extra or {})})

    with interruptible(lambda: leave("interrupted"), "eplb-spec gate"):
        try:
            try:
                leave("incomplete")
            except OSError as error:
                print(f"eplb-spec gate: cannot write --json {json_path}: {error}", file=sys.stderr)
                return EXIT_USAGE
            verdict, text, document = run()
            end_leftovers()  # nothing a target left behind may rewrite the report below
            if INTERRUPTED:  # an interruption swallowed by code the run called
                raise KeyboardInterrupt(INTERRUPTED[0])
            print(text)
            if json_path:
                write_json(json_path, document)
            return EXIT_PASS if verdict == "pass" else EXIT_FAIL
        except TargetError as error:
            print(f"eplb-spec gate: cannot use target: {printable(str(error))}", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as error:
            print(f"eplb-spec gate: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except InternalError as error:
            print(f"eplb-spec gate: INTERNAL ERROR ({BUG_REPORT}):\n{error}", file=sys.stderr)
            end_leftovers()
            leave("error", {"error": str(error)})
            return EXIT_INTERNAL
        except KeyboardInterrupt as interrupt:
            end_every_worker()
            leave("interrupted", {"signal": str(interrupt)})
            print(f"eplb-spec gate: interrupted ({interrupt}); no verdict", file=sys.stderr)
            return EXIT_INTERRUPTED


def same_as_main(
    target: str,
    same_as: str,
    quick: bool,
    timeout_s: float,
    data: str | None,
    json_path: str | None,
    same_balance: bool,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> int:
    """``eplb-spec gate --same-as NAME``: exit status as for the gate."""

    def run() -> tuple[str, str, dict[str, Any]]:
        fidelity = run_same_as(
            target,
            same_as,
            quick=quick,
            timeout_s=timeout_s,
            data=data,
            same_balance=same_balance,
            memory_mb=memory_mb,
        )
        tolerant = " (--same-balance)" if same_balance else ""
        lines = [f"eplb-spec gate: {printable(target)}: same as {same_as}?{tolerant}"]
        lines += [printable(line, 2000) for line in fidelity.summary().splitlines()]
        return fidelity.verdict, "\n".join(lines), {"target": target, **fidelity.to_json()}

    return command(target, json_path, 2, run)


def gate_main(
    target: str,
    quick: bool,
    timeout_s: float,
    max_gap: float | None,
    data: str | None,
    json_path: str | None,
    refine_a: str | None = None,
    refine_b: str | None = None,
    checks: Collection[str] | None = None,
    skip: Collection[str] | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    previous: str | None = None,
    schedule: str | None = None,
    schedule_exchanges: bool | None = None,
    started: float | None = None,
    eps: float | None = None,
    max_transfers: int | None = None,
) -> int:
    """The ``eplb-spec gate`` command. Exit status: 0 pass, 1 findings, 2 the target
    cannot be imported or an argument is wrong, 3 an internal error of the gate,
    130 interrupted."""

    def run() -> tuple[str, str, dict[str, Any]]:
        report = run_gate(
            target,
            quick=quick,
            timeout_s=timeout_s,
            max_gap_percent=max_gap,
            data=data,
            progress=True,
            refine_a=refine_a,
            refine_b=refine_b,
            checks=checks,
            skip=skip,
            memory_mb=memory_mb,
            previous=previous,
            schedule=schedule,
            schedule_exchanges=schedule_exchanges,
            started=started,
            eps=eps,
            max_transfers=max_transfers,
        )
        return report.verdict, gate_report_text(report), report.to_json()

    return command(target, json_path, 2, run)


__all__ = [
    "DEFAULT_TARGET",
    "QUICK",
    "SECTIONS",
    "THOROUGH",
    "Budget",
    "GateReport",
    "InternalError",
    "run_gate",
]
