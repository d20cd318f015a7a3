"""The fidelity mode: identical implementations are identical, and each perturbed port
of ``tests/targets/ports.py`` is caught at the step where it departs from the reference,
as a tie or as a real divergence."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from impl import balance, rebalance_experts
from impl.explain import explain, phy2log_row
from properties.fidelity import (
    REFERENCES,
    Balance,
    Divergence,
    FidelityReport,
    Kind,
    Step,
    compare,
    fidelity_of,
    reference_named,
    run_fidelity,
)
from properties.strategies import integer_problems, problems
from properties.suite import in_process
from properties.workloads import Workload, find_trace_dir, load_trace
from spec.problem import BalancingProblem, Policy

Port = Callable[..., Any]


def load_ports() -> Any:
    """``tests/targets/ports.py``, loaded by path as the gate loads its targets."""
    path = Path(__file__).parent / "targets" / "ports.py"
    spec = importlib.util.spec_from_file_location("eplb_test_ports", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ports = load_ports()


def fast_seed(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Any:
    return rebalance_experts(weight, r, g, n, p, fast=True)


def fast_baseline(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Any:
    return rebalance_experts(weight, r, g, n, p, fast=True, variant="baseline")


def report_of(port: Port, problem: BalancingProblem, same_as: str) -> FidelityReport:
    return fidelity_of(in_process(port), problem, same_as)


def only(report: FidelityReport) -> Divergence:
    assert len(report.divergences) == 1, report.lines()
    return report.divergences[0]


@given(problems(), st.sampled_from(sorted(REFERENCES)))
def test_explain_reproduces_the_reference(problem: BalancingProblem, name: str) -> None:
    reference = REFERENCES[name]
    options = {"refine_a": reference.refine_a, "refine_b": reference.refine_b}
    result = balance(problem, variant=reference.variant, **options)
    traces = explain(problem, variant=reference.variant, **options)
    rows = [phy2log_row(problem, trace) for trace in traces]
    assert np.array_equal(np.asarray(rows, dtype=np.int64), result.phy2log)
    for layer, trace in enumerate(traces):
        assert [n.counts_refined for n in trace.nodes] == result.counts_refined[layer].tolist()
        assert [n.replicas_swapped for n in trace.nodes] == result.replicas_swapped[layer].tolist()


@given(problems())
def test_the_fast_path_is_identical_to_both_references(problem: BalancingProblem) -> None:
    assert report_of(fast_seed, problem, "refined").identical
    assert report_of(fast_baseline, problem, "baseline").identical


# Each port, the reference it is a port of, the steps its divergences may be attributed
# to, and the kinds they may be. A port that only reorders equal keys must show ties only.
PORTS: list[tuple[str, str, set[Step], set[Kind]]] = [
    ("top_up_tie", "refined", {Step.COUNTS}, {Kind.TIE}),
    ("gpu_tie_last", "refined", {Step.PACKING, Step.LOG2PHY}, {Kind.TIE}),
    ("numbered_by_slot", "refined", {Step.LOG2PHY}, {Kind.TIE}),
    ("baseline_equal_loads_last", "baseline", {Step.PACKING, Step.SLOTS, Step.LOG2PHY}, {Kind.TIE}),
    ("without_refinement_b", "refined", {Step.REFINEMENT_B}, {Kind.RULE}),
    ("refinement_a_without_margin", "refined", {Step.REFINEMENT_A}, {Kind.RULE}),
    ("split_in_index_order", "refined", {Step.SPLIT}, {Kind.TIE, Kind.RULE}),
    # A packing one refinement-B swap away from the reference's greedy, with the swap B
    # could have made, reads as refinement B breaking a tie: the output cannot tell.
    (
        "packing_without_labels",
        "refined",
        {Step.PACKING, Step.REFINEMENT_B, Step.SLOTS, Step.LOG2PHY},
        set(Kind),
    ),
    ("slots_reversed", "refined", {Step.SLOTS, Step.LOG2PHY}, set(Kind)),
]


@pytest.mark.parametrize(("port", "same_as", "steps", "kinds"), PORTS)
@given(problem=integer_problems())
def test_each_port_diverges_only_at_its_step(
    port: str, same_as: str, steps: set[Step], kinds: set[Kind], problem: BalancingProblem
) -> None:
    report = report_of(getattr(ports, port), problem, same_as)
    assert not report.violations
    for divergence in report.divergences:
        assert divergence.step in steps, divergence.summary()
        assert divergence.kind in kinds, divergence.summary()


def test_the_reference_port_is_the_reference() -> None:
    problem = BalancingProblem([[90, 132, 40, 61, 104, 165, 39, 4]], 12, 4, 2, 4)
    assert report_of(ports.REFERENCE, problem, "refined").identical
    assert report_of(ports.BASELINE, problem, "baseline").identical


@given(problems())
def test_a_tie_only_port_of_the_baseline_is_equivalent_for_balance(
    problem: BalancingProblem,
) -> None:
    report = report_of(ports.baseline_equal_loads_last, problem, "baseline")
    assert all(d.kind is Kind.TIE and d.balance_equivalent for d in report.divergences)


# Hand-made cases, one per port: the exact step, kind and message.


def test_top_up_tie() -> None:
    problem = BalancingProblem([[4, 4, 4, 1]], 6, 1, 1, 2)
    divergence = only(report_of(ports.top_up_tie, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.COUNTS, Kind.TIE)
    assert divergence.detail == (
        "top-up: expert 0 and expert 2 have equal w/c 4; the reference serves expert 0, "
        "the target expert 2"
    )


def test_split_in_index_order() -> None:
    problem = BalancingProblem([[9, 9, 5, 5, 1, 1, 2, 2]], 8, 4, 2, 2)
    divergence = only(report_of(ports.split_in_index_order, problem, "refined"))
    assert (divergence.step, divergence.kind, divergence.node) == (Step.SPLIT, Kind.RULE, None)
    assert divergence.detail == (
        "group 1 (load 10) goes to node 1 (load 0) in the reference; the target puts it on "
        "node 0 (load 18)"
    )
    assert not divergence.balance_equivalent
    assert divergence.peak_target > divergence.peak_reference


def test_float32_group_sums_are_a_near_tie() -> None:
    problem = BalancingProblem([[2**25 + 1, 2**25, 3, 2]], 6, 4, 2, 2)
    divergence = only(report_of(ports.baseline_float32_groups, problem, "baseline"))
    assert (divergence.step, divergence.kind) == (Step.SPLIT, Kind.NEAR_TIE)
    assert "group 2 (load 3) goes to node 1 (load 33554432)" in divergence.detail


def test_packing_without_labels() -> None:
    problem = BalancingProblem([[8, 4, 5]], 4, 1, 1, 2)
    divergence = only(report_of(ports.packing_without_labels, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.PACKING, Kind.RULE)
    assert divergence.detail == (
        "a replica of expert 0 (load 4) goes to GPU 0 (held 0, load 5, count 1) in the "
        "reference; the target puts it on GPU 1 (held 1, load 4, count 1)"
    )


def test_a_packing_equal_up_to_relabeling_is_a_tie() -> None:
    """Without labels the packing of [5, 3, 15] (9 slots, 3 GPUs) is the reference's with
    GPUs 0 and 2 exchanged: the GPU chosen among equal (empty) ones is a tie."""
    problem = BalancingProblem([[5, 3, 15]], 9, 1, 1, 3)
    divergence = only(report_of(ports.packing_without_labels, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.PACKING, Kind.TIE)
    assert divergence.balance_equivalent


def test_refinement_b_skipped() -> None:
    problem = BalancingProblem([[6, 17, 2, 8]], 6, 1, 1, 2)
    divergence = only(report_of(ports.without_refinement_b, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.REFINEMENT_B, Kind.RULE)
    assert divergence.detail.startswith("the target equals the reference with refinement B off")
    assert report_of(ports.without_refinement_b, problem, "refined-without-b").identical


def test_refinement_a_without_its_margin() -> None:
    problem = BalancingProblem([[0.0, 6.4e-150]], 4, 1, 1, 2)
    divergence = only(report_of(ports.refinement_a_without_margin, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.REFINEMENT_A, Kind.RULE)
    assert divergence.detail.startswith("the target moves a replica from expert 0 to expert 1")
    assert divergence.detail.endswith("; the reference moves none")


def test_slots_in_another_order() -> None:
    problem = BalancingProblem([[90, 132, 40, 61, 104, 165, 39, 4]], 12, 4, 2, 4)
    divergence = only(report_of(ports.slots_reversed, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.SLOTS, Kind.RULE)
    assert divergence.balance_equivalent


def test_numbering_by_slot_is_a_tie_and_invisible_in_phy2log() -> None:
    problem = BalancingProblem([[9, 1, 4, 4]], 8, 1, 1, 4)
    divergence = only(report_of(ports.numbered_by_slot, problem, "refined"))
    assert (divergence.step, divergence.kind) == (Step.LOG2PHY, Kind.TIE)
    assert report_of(ports.phy2log_only(ports.numbered_by_slot), problem, "refined").identical


def test_gpu_tie_then_refinement_b_is_a_packing_tie() -> None:
    """The port breaks a GPU tie the other way and refinement B then acts on its packing
    as on the reference's: the first difference is the tie."""
    found = []
    for layer_loads in ([6, 17, 2, 8], [2, 2, 0], [3, 8, 8, 1, 5]):
        problem = BalancingProblem([layer_loads], 6, 1, 1, 2)
        found += report_of(ports.gpu_tie_last, problem, "refined").divergences
    assert found
    assert all(d.step is Step.PACKING and d.kind is Kind.TIE for d in found)


# The report and the runner.


def test_summary_lines() -> None:
    problem = BalancingProblem([[4, 4, 4, 1], [7, 1, 1, 1]], 6, 1, 1, 2)
    report = report_of(ports.top_up_tie, problem, "refined")
    assert report.summary() == (
        "differs from refined in 1 of 2 layer(s): 1 equivalent for balance; first difference "
        "at counts in 1 (1 tie)"
    )
    assert report.lines()[1] == (
        "  layer 0 node 0: first difference at counts (replica counts), tie: top-up: "
        "expert 0 and expert 2 have equal w/c 4; the reference serves expert 0, the target "
        "expert 2; equivalent for balance"
    )
    assert report.tally() == {(Step.COUNTS, Kind.TIE): 1}
    identical = report_of(fast_seed, problem, "refined")
    assert identical.summary() == "identical to refined on all 2 layer(s)"


def test_an_invalid_placement_is_reported_not_compared() -> None:
    problem = BalancingProblem([[4, 4, 4, 1]], 6, 1, 1, 2)
    report = compare(problem, np.zeros((1, 6), dtype=np.int64), "refined")
    assert not report.identical
    assert report.layers == []
    assert report.summary().startswith("invalid placement: [count-")


def test_reference_names() -> None:
    assert reference_named("baseline").variant == "baseline"
    assert not reference_named("refined-without-b").refine_b
    with pytest.raises(ValueError, match="same_as must be one of"):
        reference_named("deepseek")


def tiny_workloads() -> list[Workload]:
    trace_dir = find_trace_dir()
    if trace_dir is None:
        rng = np.random.default_rng(0)
        loads = np.round(rng.lognormal(8, 1, size=(4, 256)))
        return [Workload("generated", loads, generated=True)]
    path = sorted(trace_dir.glob("prefill*.json"))[0]
    return [Workload(path.stem, load_trace(path)[:8], generated=False)]


def test_run_fidelity_on_an_identical_target() -> None:
    run = run_fidelity(in_process(fast_seed), "refined", examples=30, workloads=tiny_workloads())
    assert run.verdict == "pass", run.summary()
    assert run.generated == []
    assert all(t.report is not None and t.report.identical for t in run.traces)


def problem_of(found: dict[str, Any]) -> BalancingProblem:
    return BalancingProblem(
        found["weight"],
        found["num_replicas"],
        found["num_groups"],
        found["num_nodes"],
        found["num_gpus"],
    )


def test_run_fidelity_shrinks_the_worst_divergence_at_the_right_step() -> None:
    run = run_fidelity(
        in_process(ports.without_refinement_b), "refined", problems(), examples=100, workloads=[]
    )
    assert run.verdict == "fail"
    first = run.generated[0]
    assert first.search == "worst divergence for balance (shrunk)"
    divergence = first.divergence
    assert divergence is not None
    assert (divergence.step, divergence.kind, divergence.balance) == (
        Step.REFINEMENT_B,
        Kind.RULE,
        Balance.WORSE,
    )
    # the worst ratio the search met, kept while shrinking
    worst = max(t.worst_ratio for t in run.tallies.values())
    assert divergence.peak_ratio >= worst
    problem = problem_of(first.input)
    assert problem.num_replicas <= 16
    assert problem.num_experts <= 12
    assert divergence in report_of(ports.without_refinement_b, problem, "refined").divergences
    assert "worse for balance" in run.reason()


# Ports worse than the reference on part of the input space only: the search must find
# that part, name the step and the input, and fail the port even with --same-balance.
PARTIAL_PORTS: list[tuple[str, Callable[[BalancingProblem, int], bool]]] = [
    ("worse_under_global_policy", lambda problem, layer: problem.policy is Policy.GLOBAL),
    ("worse_on_later_layers", lambda problem, layer: problem.num_layers > 1 and layer > 0),
    (
        "worse_on_four_gpu_multiples",
        lambda problem, layer: problem.num_gpus % 4 == 0 and problem.slots_per_gpu >= 2,
    ),
]


@pytest.mark.parametrize(("port", "where"), PARTIAL_PORTS)
def test_a_port_worse_on_part_of_the_inputs_fails_with_that_divergence_named(
    port: str, where: Callable[[BalancingProblem, int], bool]
) -> None:
    run = run_fidelity(
        in_process(getattr(ports, port)),
        "refined",
        problems(),
        examples=100,
        workloads=tiny_workloads(),
        same_balance=True,
    )
    assert run.verdict == "fail", run.summary()
    first = run.generated[0]
    divergence = first.divergence
    assert divergence is not None, run.summary()
    assert divergence.balance is Balance.WORSE
    assert divergence.step is Step.COUNTS  # where the port's counts part from water-filling
    problem = problem_of(first.input)
    assert where(problem, divergence.layer), run.summary()
    # the input it names reproduces it
    again = report_of(getattr(ports, port), problem, "refined")
    assert again.worst_first()[0].peak_ratio == divergence.peak_ratio
    text = run.summary()
    assert text.splitlines()[0].startswith("fidelity against refined: FAIL: ")
    assert f"worst divergence for balance (shrunk): layer {divergence.layer}" in text
    # on the other inputs the port is the reference: no layer outside ``where`` differs
    for tally in run.tallies.values():
        assert tally.worst_input is not None or tally.classes[Balance.WORSE] == 0


@pytest.mark.parametrize("examples", [60, 200])  # the gate's --quick and thorough budgets
def test_a_port_that_differs_only_in_ties_numbering_and_slot_order_passes_with_same_balance(
    examples: int,
) -> None:
    port = in_process(ports.baseline_ties_numbering_slots)
    strict = run_fidelity(port, "baseline", examples=examples, workloads=tiny_workloads())
    assert strict.verdict == "fail"
    assert strict.generated[0].search.startswith("divergence equivalent for balance")
    assert strict.reason().endswith(" equivalent for balance (--same-balance passes such a port)")
    assert "none in its peak" in strict.reason()
    classes = strict.classes()
    assert classes[Balance.EQUIVALENT] > 0
    assert classes[Balance.WORSE] == classes[Balance.BETTER] == classes[Balance.SAME_PEAK] == 0
    tolerant = run_fidelity(
        port, "baseline", examples=examples, workloads=tiny_workloads(), same_balance=True
    )
    assert tolerant.verdict == "pass", tolerant.summary()
    assert tolerant.summary().startswith("fidelity against baseline: PASS: ")
    assert tolerant.to_json()["verdict"] == "pass"
    assert set(tolerant.to_json()["policies"]) == {"hierarchical", "global"}


def test_a_slot_order_near_tie_is_equivalent_for_balance_not_real() -> None:
    """vLLM's order of two replicas inside one GPU on a load far below float32's range
    (found by the quick fidelity run of vLLM 0.33.0 wrapped as a float64 target)."""
    problem = BalancingProblem([[0, 7.465394002593504e-189]], 2, 1, 2, 1)
    divergence = only(report_of(ports.slots_reversed, problem, "refined"))
    assert divergence.step is Step.SLOTS
    assert divergence.balance is Balance.EQUIVALENT
    assert "real" not in divergence.summary()


def test_run_fidelity_reports_a_failing_target() -> None:
    def fails(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Any:
        raise RuntimeError("no GPU")

    run = run_fidelity(in_process(fails), "refined", examples=5, workloads=[])
    assert run.verdict == "fail"
    assert run.generated[0].failure is not None
    assert "no GPU" in run.generated[0].failure


def test_the_gate_passes_a_balance_equivalent_port_only_with_same_balance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eplb_spec.cli import main

    port = f"{Path(__file__).parent / 'targets' / 'ports.py'}:baseline_ties_numbering_slots"
    out = tmp_path / "fidelity.json"
    command = ["gate", "--quick", "--impl", port, "--same-as", "baseline", "--json", str(out)]
    assert main([*command, "--same-balance"]) == 0
    text = capsys.readouterr().out
    assert "fidelity against baseline: PASS: " in text
    assert "none in its peak" in text
    document = json.loads(out.read_text())
    assert (document["verdict"], document["same_balance"]) == ("pass", True)
    assert main(command) == 1
    assert "(--same-balance passes such a port)" in capsys.readouterr().out
