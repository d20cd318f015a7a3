"""The gate passes the reference and the baseline and catches each broken implementation
with the right check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from properties.cli import main
from properties.gate import GateReport, run_gate

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


def test_gate_passes_the_reference_refinements() -> None:
    report = run_gate(
        "impl:rebalance_experts",
        quick=True,
        refine_a="impl:refine_counts",
        refine_b="impl:refine_swap_lists",
    )
    assert report.verdict == "pass", report.summary()
    assert "refinement A" in report.checks
    assert "refinement B" in report.checks


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
    assert {"check", "message", "input"} <= set(document["violations"][0])
    assert main(["gate", "--quick", "--impl", "no_such_module_anywhere:f"]) == 2
    assert "cannot use target" in capsys.readouterr().err
    assert main(["gate", "--quick", "--impl", f"{BROKEN}:no_such_function"]) == 2
    assert main(["gate", "--timeout", "0"]) == 2
