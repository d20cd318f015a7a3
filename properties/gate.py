"""The correctness gate: check any ``rebalance_experts`` against the spec and the oracle.

``run_gate`` drives the properties of ``properties.suite`` through Hypothesis
(derandomized, so a run repeats) on a target called in a separate process, then scores
it on the real traces. Usable from the command line (``eplb-spec gate``) and from any
project's pytest::

    from properties.gate import run_gate

    def test_my_balancer_passes_the_eplb_gate():
        report = run_gate("my_engine.eplb:rebalance_experts", quick=True)
        assert report.verdict == "pass", report.summary()
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis import target as steer_towards

from oracle.pipeline import layer_lower_bound
from properties.isolation import CallResult, IsolatedTarget, TargetError
from properties.strategies import count_cases, integer_problems, problems, swap_cases, tiny_problems
from properties.suite import (
    Caller,
    Finding,
    Gap,
    bad_inputs,
    check_bad_input,
    check_contract,
    check_deterministic,
    check_input_forms,
    check_optimality,
    check_refinement_a,
    check_refinement_b,
    tensor_arg,
)
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.objectives import balancedness, gpu_loads, gpus_with_duplicate_replicas, peak_gpu_load
from spec.problem import BalancingProblem

DEFAULT_TARGET = "impl:rebalance_experts"
GIVE_UP_AFTER = 3  # hangs or crashes before the remaining checks are skipped


@dataclass(frozen=True)
class Budget:
    contract: int
    deterministic: int
    input_forms: int
    optimality: int
    traces: int | None  # None: all
    trace_repeats: int


QUICK = Budget(
    contract=100, deterministic=20, input_forms=20, optimality=25, traces=2, trace_repeats=1
)
THOROUGH = Budget(
    contract=800, deterministic=100, input_forms=100, optimality=150, traces=None, trace_repeats=3
)


@dataclass(frozen=True)
class GateViolation:
    check: str
    message: str
    input: dict[str, Any] | None


@dataclass(frozen=True)
class TraceResult:
    trace: str
    generated: bool
    balancedness: float
    mean_peak_over_lower_bound: float
    max_peak_over_lower_bound: float
    gpus_with_duplicate_replicas: int
    seconds_per_call: float


@dataclass
class GateReport:
    target: str
    verdict: str = "pass"
    violations: list[GateViolation] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bad_inputs: dict[str, str] = field(default_factory=dict)
    optimality: dict[str, Any] = field(default_factory=dict)
    traces: list[TraceResult] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, violation: GateViolation) -> None:
        self.violations.append(violation)
        self.verdict = "fail"

    def summary(self) -> str:
        lines = [f"eplb-spec gate: {self.target}: {self.verdict.upper()}"]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  {name:<22} {status}" for name, status in self.checks.items()]
        for v in self.violations:
            lines.append(f"  VIOLATION [{v.check}] {v.message}")
            if v.input is not None:
                lines.append(f"    smallest failing input: {json.dumps(v.input)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "target": self.target,
            "verdict": self.verdict,
            "violations": [asdict(v) for v in self.violations],
            "checks": self.checks,
            "notes": self.notes,
            "bad_inputs": self.bad_inputs,
            "optimality": self.optimality,
            "traces": [asdict(t) for t in self.traces],
            "seconds": self.seconds,
        }


CLUSTER_KEYS = ("num_replicas", "num_groups", "num_nodes", "num_gpus")


def describe_input(weight: Any, cluster: tuple[int, int, int, int]) -> dict[str, Any]:
    """A failing input as JSON: the weight (or what names it) and the cluster."""
    return {"weight": weight, **dict(zip(CLUSTER_KEYS, cluster, strict=True))}


def describe(problem: BalancingProblem) -> dict[str, Any]:
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    return describe_input(problem.loads.tolist(), cluster)


class Progress:
    """A one-line progress bar on a terminal; plain section lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()

    def show(self, section: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.live:
            filled = int(20 * done / max(total, 1))
            bar = "#" * filled + "-" * (20 - filled)
            sys.stderr.write(f"\r  {section:<22} [{bar}] {done}/{total}   ")
            sys.stderr.flush()
        elif done == 0:
            sys.stderr.write(f"  {section} ...\n")

    def end(self) -> None:
        if self.live:
            sys.stderr.write("\n")


def describe_case(case: Any) -> dict[str, Any]:
    if isinstance(case, BalancingProblem):
        return describe(case)
    return asdict(case)


def hunt(
    name: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], None],
    examples: int,
    progress: Progress,
) -> GateViolation | None:
    """Run ``check`` on ``examples`` generated problems; on a finding, the smallest
    failing problem Hypothesis shrinks to (a hang or crash is reported as first met,
    without shrinking, to save the time each further call would cost)."""
    seen: list[Any] = []
    stuck: list[tuple[Finding, Any]] = []
    state = {"done": 0}

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
    def run(problem: Any) -> None:
        if stuck:
            raise stuck[0][0]
        seen.append(problem)
        state["done"] += 1
        progress.show(name, min(state["done"], examples), examples)
        try:
            check(problem)
        except Finding as finding:
            if finding.check in ("timeout", "crash"):
                stuck.append((finding, problem))
            raise

    progress.show(name, 0, examples)
    try:
        run()
    except Finding as finding:
        progress.end()
        if stuck:
            return GateViolation(stuck[0][0].check, stuck[0][0].message, describe_case(stuck[0][1]))
        # Hypothesis replays the smallest failing example last.
        return GateViolation(
            finding.check, finding.message, describe_case(seen[-1]) if seen else None
        )
    except Exception as error:  # Hypothesis' own errors (a flaky target, say)
        progress.end()
        return GateViolation(
            "deterministic",
            "the target behaved inconsistently on repeated calls "
            f"({type(error).__name__}: {error})",
            describe_case(seen[-1]) if seen else None,
        )
    progress.end()
    return None


def traces_section(
    caller: IsolatedTarget, report: GateReport, data: str | None, budget: Budget, progress: Progress
) -> None:
    workloads, note = default_workloads(data)
    report.notes.append(note)
    chosen = workloads if budget.traces is None else workloads[: budget.traces]
    for index, workload in enumerate(chosen):
        progress.show("real traces", index, len(chosen))
        problem = BalancingProblem(workload.loads, *TRACE_CLUSTER)
        times = []
        outputs = None
        for _ in range(budget.trace_repeats):
            try:
                outputs, result = check_contract(caller.call, problem)
            except Finding as finding:
                where = {
                    "trace": workload.name,
                    **dict(zip(CLUSTER_KEYS, TRACE_CLUSTER, strict=True)),
                }
                report.fail(
                    GateViolation(finding.check, f"trace {workload.name}: {finding.message}", where)
                )
                break
            times.append(result.seconds)
        if outputs is None:
            continue
        phy2log, logcnt = np.asarray(outputs.phy2log), np.asarray(outputs.logcnt)
        loads = gpu_loads(problem.loads, phy2log, logcnt, problem.num_gpus)
        peaks = peak_gpu_load(problem.loads, phy2log, logcnt, problem.num_gpus)
        ratios = [
            float(peaks[layer]) / float(bound)
            for layer in range(problem.num_layers)
            if (bound := layer_lower_bound(problem, layer)) > 0
        ]
        report.traces.append(
            TraceResult(
                trace=workload.name,
                generated=workload.generated,
                balancedness=balancedness(loads),
                mean_peak_over_lower_bound=statistics.fmean(ratios) if ratios else 1.0,
                max_peak_over_lower_bound=max(ratios) if ratios else 1.0,
                gpus_with_duplicate_replicas=int(
                    gpus_with_duplicate_replicas(phy2log, problem.num_gpus).sum()
                ),
                seconds_per_call=statistics.median(times),
            )
        )
    progress.show("real traces", len(chosen), len(chosen))
    progress.end()


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
) -> GateReport:
    """Check ``target`` and return the report (raises ``TargetError`` when it cannot be
    imported). ``refine_a`` / ``refine_b`` also check refinement functions against
    their contracts: ``refine(loads, counts) -> counts`` and
    ``refine(weights, gpu, rank, num_gpus) -> (gpu, rank)``."""
    start = time.perf_counter()
    budget = QUICK if quick else THOROUGH
    report = GateReport(target)
    bar = Progress(progress)
    with IsolatedTarget(target, timeout_s) as caller:
        probe = caller.call(tensor_arg(BalancingProblem([[1.0, 2.0]], 2, 1, 1, 1)), 2, 1, 1, 1)
        if isinstance(probe, CallResult):
            report.notes.append(f"the target returns {probe.returned}")
            value = probe.value
            if not (isinstance(value, (tuple, list)) and len(value) == 3):
                report.notes.append("log2phy and logcnt are derived from the returned phy2log")

        gaps: list[Gap] = []

        def contract(problem: BalancingProblem) -> None:
            check_contract(caller.call, problem)

        def optimality(problem: BalancingProblem) -> None:
            found = check_optimality(caller.call, problem, max_gap_percent)
            gaps.extend(found)
            steer_towards(max((g.relative for g in found), default=0.0), label="gap to the optimum")

        sections: list[
            tuple[str, st.SearchStrategy[BalancingProblem], Callable[[BalancingProblem], None], int]
        ] = [
            ("contract", problems(), contract, budget.contract),
            (
                "deterministic",
                problems(),
                lambda p: check_deterministic(caller.call, p),
                budget.deterministic,
            ),
            (
                "input forms",
                integer_problems(),
                lambda p: check_input_forms(caller.call, p),
                budget.input_forms,
            ),
            ("optimality", tiny_problems(), optimality, budget.optimality),
        ]
        for name, strategy, check, examples in sections:
            if caller.failures >= GIVE_UP_AFTER:
                report.checks[name] = "skipped: the target hung or crashed too often"
                continue
            violation = hunt(name, strategy, check, examples, bar)
            report.checks[name] = f"{examples} examples: " + ("FAIL" if violation else "pass")
            if violation is not None:
                report.fail(violation)

        bad_failures = 0
        for case in bad_inputs() if caller.failures < GIVE_UP_AFTER else []:
            try:
                report.bad_inputs[case.name] = check_bad_input(caller.call, case)
            except Finding as finding:
                bad_failures += 1
                report.bad_inputs[case.name] = "VIOLATION"
                report.fail(
                    GateViolation(
                        finding.check,
                        finding.message,
                        describe_input(case.weight.values.tolist(), case.cluster),
                    )
                )
        report.checks["bad input"] = (
            "skipped: the target hung or crashed too often"
            if caller.failures >= GIVE_UP_AFTER and not report.bad_inputs
            else f"{len(bad_inputs())} cases: " + ("FAIL" if bad_failures else "pass")
        )

        proven = [g for g in gaps if g.proven]
        if proven:
            worst = max(proven, key=lambda g: g.relative)
            report.optimality = {
                "layers_compared": len(proven),
                "at_optimum": sum(g.relative <= 1e-12 for g in proven),
                "mean_gap": statistics.fmean(g.relative for g in proven),
                "max_gap": worst.relative,
                "max_gap_peak": worst.peak,
                "max_gap_optimum": str(worst.optimum),
            }
        if caller.failures < GIVE_UP_AFTER:
            traces_section(caller, report, data, budget, bar)
        else:
            report.notes.append(f"stopped after {caller.failures} hangs or crashes of the target")
        if caller.restarts:
            report.notes.append(f"the worker process was restarted {caller.restarts} time(s)")
    refinements: list[
        tuple[str, str | None, st.SearchStrategy[Any], Callable[[Caller, Any], None]]
    ] = [
        ("refinement A", refine_a, count_cases(), check_refinement_a),
        ("refinement B", refine_b, swap_cases(), check_refinement_b),
    ]
    for name, refinement, strategy, property_check in refinements:
        if refinement is None:
            continue
        with IsolatedTarget(refinement, timeout_s) as refiner:
            examples = budget.contract
            violation = hunt(name, strategy, partial(property_check, refiner.call), examples, bar)
        report.checks[name] = f"{examples} examples: " + ("FAIL" if violation else "pass")
        if violation is not None:
            report.fail(violation)
    report.seconds = time.perf_counter() - start
    return report


def print_report(report: GateReport) -> None:
    print(report.summary())
    if report.bad_inputs:
        print("  bad input handling:")
        for name, outcome in report.bad_inputs.items():
            print(f"    {name:<40} {outcome}")
    if report.optimality:
        o = report.optimality
        print(
            f"  tiny problems vs the proven optimum: {o['layers_compared']} layers, "
            f"{o['at_optimum']} at the optimum, mean gap {o['mean_gap']:.2%}, "
            f"max gap {o['max_gap']:.2%} (peak {o['max_gap_peak']:g} vs {o['max_gap_optimum']})"
        )
    if report.traces:
        print(f"  real traces at {TRACE_CLUSTER}:")
        print(
            f"    {'trace':<26}{'balancedness':>13}{'peak/LB mean':>14}{'max':>8}"
            f"{'dup GPUs':>10}{'s/call':>9}"
        )
        for t in report.traces:
            print(
                f"    {t.trace:<26}{t.balancedness:>13.4f}{t.mean_peak_over_lower_bound:>14.4f}"
                f"{t.max_peak_over_lower_bound:>8.4f}{t.gpus_with_duplicate_replicas:>10}{t.seconds_per_call:>9.3f}"
            )
        print(
            "    peak/LB: peak GPU load over a certified lower bound on the optimum (1 is optimal)."
        )
    print(f"  {report.seconds:.1f} s")


def gate_main(
    target: str,
    quick: bool,
    timeout_s: float,
    max_gap: float | None,
    data: str | None,
    json_path: str | None,
    refine_a: str | None = None,
    refine_b: str | None = None,
) -> int:
    try:
        report = run_gate(
            target,
            quick=quick,
            timeout_s=timeout_s,
            max_gap_percent=max_gap,
            data=data,
            progress=True,
            refine_a=refine_a,
            refine_b=refine_b,
        )
    except TargetError as error:
        print(f"eplb-spec gate: cannot use target: {error}", file=sys.stderr)
        return 2
    print_report(report)
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.verdict == "pass" else 1


__all__ = ["DEFAULT_TARGET", "GateReport", "run_gate"]
