"""The gate passes the reference and the baseline and catches each broken implementation
with the right check."""

from __future__ import annotations

import argparse
import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import impl
from eplb_spec.cli import build_parser, main
from properties import gate
from properties.gate import SECTIONS, GateReport, run_gate
from properties.suite import check_optimality, in_process
from spec.problem import BalancingProblem

BROKEN = str(Path(__file__).parent / "targets" / "broken.py")


def checks_failed(report: GateReport) -> set[str]:
    return {v.check for v in report.violations}


@pytest.mark.parametrize(
    "target",
    ["impl:rebalance_experts", "impl:rebalance_experts_baseline", "impl:rebalance_experts_fast"],
)
def test_gate_passes_the_reference_the_baseline_and_the_fast_path(target: str) -> None:
    report = run_gate(target, quick=True)
    assert report.verdict == "pass", report.summary()
    assert report.traces, "the traces section ran"
    assert all(t.mean_peak_over_lower_bound >= 1 for t in report.traces)
    assert report.optimality["layers_compared"] > 0
    gaps = report.optimality["gaps"]  # one entry per proven layer, as drawn by studies.plots
    assert len(gaps) == report.optimality["layers_compared"]
    assert max(g["relative"] for g in gaps) == report.optimality["max_gap"]
    for g in gaps:
        optimum = float(Fraction(g["optimum"]))
        assert g["relative"] == (g["peak"] / optimum - 1 if optimum > 0 else 0.0)


def test_gate_passes_the_reference_refinements() -> None:
    report = run_gate(
        "impl:rebalance_experts",
        quick=True,
        refine_a="impl:refine_counts",
        refine_b="impl:refine_swap_lists",
    )
    assert report.verdict == "pass", report.summary()
    assert "refinement-a" in report.checks
    assert "refinement-b" in report.checks


@pytest.mark.parametrize(
    ("broken", "check", "detail"),
    [
        ("wrong_count", "contract", "count-sum"),
        ("out_of_range_id", "contract", "expert-out-of-range"),
        ("inconsistent_log2phy", "contract", "log2phy-slot"),
        ("group_split", "contract", "group-split"),
        ("mutates_input", "input-unmodified", "changed its weight"),
        ("nondeterministic", "deterministic", ""),
        ("crash_on_all_zero", "raises-on-valid-input", "ZeroDivisionError"),
        ("dies", "crash", "died"),
        ("accepts_bad_input", "bad-input", "num_replicas < num_experts"),
    ],
)
def test_gate_catches_each_broken_implementation(broken: str, check: str, detail: str) -> None:
    report = run_gate(f"{BROKEN}:{broken}", quick=True)
    assert report.verdict == "fail"
    assert check in checks_failed(report), report.summary()
    found = [v for v in report.violations if v.check == check]
    assert any(detail in v.message for v in found), report.summary()
    assert all(v.input is not None for v in found)


def test_gate_reports_a_hang_as_a_timeout_and_goes_on() -> None:
    report = run_gate(f"{BROKEN}:hangs", quick=True, timeout_s=1.0)
    assert report.verdict == "fail"
    assert checks_failed(report) == {"timeout"}
    assert any("skipped" in status for status in report.checks.values())


def test_gate_catches_a_refinement_that_raises_the_peak() -> None:
    report = run_gate(
        "impl:rebalance_experts", quick=True, refine_b=f"{BROKEN}:refinement_raises_peak"
    )
    assert checks_failed(report) == {"refinement-b"}
    assert "peak-raised" in report.violations[0].message


def test_gate_accepts_phy2log_only_as_numpy_and_says_so() -> None:
    report = run_gate(f"{BROKEN}:phy2log_only_numpy", quick=True)
    assert report.verdict == "pass", report.summary()
    assert any("derived" in note for note in report.notes)
    assert any("numpy.ndarray" in note for note in report.notes)


def test_gate_smallest_failing_input_is_small() -> None:
    report = run_gate(f"{BROKEN}:wrong_count", quick=True)
    failing = next(v for v in report.violations if v.check == "contract")
    assert failing.input is not None
    assert len(failing.input["weight"]) == 1  # shrunk to one layer
    assert len(failing.input["weight"][0]) <= 2


def test_gate_command_exit_codes_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert main(["gate", "--quick", "--impl", f"{BROKEN}:wrong_count", "--json", str(out)]) == 1
    document = json.loads(out.read_text())
    assert document["verdict"] == "fail"
    assert {"check", "message", "input"} <= set(document["findings"][0])
    assert main(["gate", "--quick", "--impl", "no_such_module_anywhere:f"]) == 2
    assert "cannot use target" in capsys.readouterr().err
    assert main(["gate", "--quick", "--impl", f"{BROKEN}:no_such_function"]) == 2
    assert main(["gate", "--timeout", "0"]) == 2


def test_gate_sees_a_tie_bug_at_token_scale_as_a_100_percent_gap() -> None:
    target = f"{BROKEN}:stacks_equal_hot_experts"
    report = run_gate(target, quick=True, checks=["contract", "optimality"])
    assert report.verdict == "pass", report.summary()  # valid placements, just bad ones
    assert report.optimality["max_gap"] > 0.99
    strict = run_gate(target, quick=True, checks=["optimality"], max_gap_percent=50)
    assert {(f.check, f.code) for f in strict.findings} == {("optimality", "max-gap")}
    assert "100.00% above the optimum" in strict.findings[0].message
    # the summary line counts the failing layer too, so it never contradicts the finding
    assert strict.optimality["max_gap"] > 0.99


def test_one_cause_is_one_finding_with_a_count_and_the_smallest_input() -> None:
    report = run_gate(f"{BROKEN}:wrong_count", quick=True)
    contract = [f for f in report.findings if f.check == "contract"]
    assert len(contract) == 1, report.summary()
    assert contract[0].code == "count-sum"
    assert contract[0].count >= 3  # the contract and optimality sections and the traces
    assert contract[0].input is not None
    assert "weight" in contract[0].input  # a generated problem is smaller than a trace


def test_sections_can_be_chosen_and_unknown_names_are_refused() -> None:
    report = run_gate("impl:rebalance_experts", quick=True, checks=["bad-input", "traces"])
    assert set(report.checks) == {"bad-input", "traces"}
    with pytest.raises(ValueError, match="nothing to check"):  # never a pass checking nothing
        run_gate("impl:rebalance_experts", quick=True, skip=[*SECTIONS[:-2]])
    with pytest.raises(ValueError, match="unknown section"):
        run_gate("impl:rebalance_experts", checks=["contracts"])
    assert main(["gate", "--checks", "contract,nonsense"]) == 2


def test_report_header_names_versions_the_target_file_and_its_hash(tmp_path: Path) -> None:
    report = run_gate(f"{BROKEN}:reference", quick=True, checks=["bad-input"])
    header = report.header
    assert {"python", "eplb-spec", "torch", "numpy", "hypothesis", "ortools"} <= set(
        header["versions"]
    )
    assert header["target_file"] == str(Path(BROKEN).resolve())
    assert header["target_sha256"] == hashlib.sha256(Path(BROKEN).read_bytes()).hexdigest()
    assert "quick" in header["budget"]
    assert "own process" in header["call"]
    module = run_gate("impl:rebalance_experts", quick=True, checks=["bad-input"])
    assert module.header["target_file"].endswith("impl/balancer.py")


def test_a_fault_of_the_gate_is_an_internal_error_never_a_finding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken_check(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the suite")

    monkeypatch.setattr(gate, "check_contract", broken_check)
    with pytest.raises(gate.InternalError, match="a bug in the suite"):
        run_gate("impl:rebalance_experts", quick=True, checks=["contract"])
    out = tmp_path / "r.json"
    command = ["gate", "--quick", "--checks", "contract", "--json", str(out)]
    assert main(command) == 3
    assert "please report it" in capsys.readouterr().err
    assert json.loads(out.read_text())["verdict"] == "error"


def test_command_line_values_are_checked_before_any_work(tmp_path: Path) -> None:
    assert main(["gate", "--timeout", "inf"]) == 2
    assert main(["gate", "--max-gap", "nan"]) == 2
    assert main(["gate", "--json", str(tmp_path / "no" / "such" / "dir" / "r.json")]) == 2


def test_the_command_line_help_names_every_section() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checks = next(a for a in commands.choices["gate"]._actions if a.dest == "checks")
    assert checks.help is not None
    listed = checks.help.split("(default: all):")[1]
    assert [s.strip() for s in listed.split(",")] == list(SECTIONS)


def test_the_optimality_line_shows_a_tiny_gap_and_the_exact_peak() -> None:
    report = GateReport(target="t")
    peak, optimum = 1048577.0, Fraction(3145729, 3)
    gap = peak / float(optimum) - 1
    report.optimality = {
        "layers_compared": 3,
        "at_optimum": 2,
        "mean_gap": gap / 3,
        "max_gap": gap,
        "max_gap_peak": peak,
        "max_gap_optimum": str(optimum),
    }
    line = next(x for x in gate.gate_report_text(report).splitlines() if "tiny problems" in x)
    assert "mean gap <0.01%, max gap <0.01% (peak 1048577 vs 3145729/3)" in line
    report.optimality.update(max_gap=0.25, mean_gap=0.0, max_gap_peak=2.5)
    line = next(x for x in gate.gate_report_text(report).splitlines() if "tiny problems" in x)
    assert "mean gap 0.00%, max gap 25.00% (peak 2.5 vs 3145729/3)" in line


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--checks", "rebalance"], "--checks rebalance needs --previous"),
        (["--checks", "contract,schedule"], "--checks schedule needs --schedule"),
        (["--checks", "refinement-a"], "--checks refinement-a needs --refine-a"),
        (
            ["--schedule", "properties.rebalance:reference_schedule", "--skip", "schedule"],
            "--schedule is given but the schedule section is left out",
        ),
        (
            ["--previous", "previous", "--checks", "contract"],
            "--previous is given but the rebalance section is left out",
        ),
        (["--no-exchanges"], "--no-exchanges applies to a schedule"),
        (["--tolerate-ties"], "--same-balance applies to the fidelity mode"),
        (["--same-as", "refined", "--max-gap", "5"], "--max-gap belong to the gate's checks"),
        (
            ["--same-as", "baseline", "--checks", "contract", "--previous", "6"],
            "--checks, --previous belong",
        ),
    ],
)
def test_an_option_that_would_check_nothing_is_refused_before_the_run(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never a PASS for a run that left out what was asked: a section asked for without
    what it needs, an option whose section is left out, an option of another mode."""
    assert main(["gate", "--quick", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert len(error.strip().splitlines()) == 1


def test_a_gate_left_with_no_section_that_can_run_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to check"):
        gate.sections_that_run(
            ["rebalance"],
            None,
            available=dict.fromkeys(gate.NEEDS, False),
            given=dict.fromkeys(gate.NEEDS, False),
        )
    runs = gate.sections_that_run(
        gate.SECTIONS,
        None,
        available={**dict.fromkeys(gate.NEEDS, False), "schedule": True},
        given={**dict.fromkeys(gate.NEEDS, False), "schedule": True},
    )
    assert "schedule" in runs
    assert "rebalance" not in runs
    assert "contract" in runs
    report = run_gate("impl:rebalance_experts", quick=True, checks=["contract"])
    assert report.header["sections"] == ["contract"]


@pytest.mark.parametrize("function", [impl.rebalance_experts, impl.rebalance_experts_baseline])
@pytest.mark.parametrize(
    ("loads", "gpus", "optimum", "gap"),
    [
        ([7.0, 0.0], 2, Fraction(7, 2), 1 / 3),
        ([1.0, 1.0, 134184960.0], 3, Fraction(44728321), 67092480 / 44728321 - 1),
        ([1.0, 1.0, 1.0, 1e6], 4, Fraction(250001), 400000 / 250001 - 1),
    ],
)
def test_greedy_replication_puts_two_hot_replicas_on_one_gpu(
    function: Any, loads: list[float], gpus: int, optimum: Fraction, gap: float
) -> None:
    """The README's reason for --max-gap 99 in its example: one hot expert and G - 1
    cold ones on 2G slots of G GPUs; water-filling (and the greedy) give the hot expert
    G + 1 replicas, two of which share a GPU: (G - 1)/(G + 1) above the optimum when
    the hot load dwarfs the others (33 %, 50 %, 60 %)."""
    problem = BalancingProblem([loads], 2 * gpus, 1, 1, gpus)
    (found,) = check_optimality(in_process(function), problem, None)
    assert found.proven
    assert found.optimum == optimum
    assert found.relative == pytest.approx(gap, rel=1e-12)
    assert round(found.relative, 3) == round((gpus - 1) / (gpus + 1), 3)


def test_a_target_without_a_colon_names_the_built_in_engines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["gate", "--quick", "--impl", "vlm"]) == 2
    error = capsys.readouterr().err
    assert "module:function" in error
    assert "vllm, sglang" in error
