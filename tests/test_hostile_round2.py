"""The second round of hostile targets (``tests/targets/hostile_round2.py``, issue 19):
each class is failed without a traceback, within its time limit, and the report the
gate wrote stays as it was after the gate exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from properties import isolation
from properties.gate import GateReport, run_gate

ROUND2 = str(Path(__file__).parent / "targets" / "hostile_round2.py")
CONTRACT_ONLY = ["contract"]


def checks_failed(report: GateReport) -> set[str]:
    return {f.check for f in report.findings}


def gate_command(target: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eplb_spec",
        "gate",
        "--quick",
        "--checks",
        "contract",
        "--impl",
        f"{ROUND2}:{target}",
        "--json",
        str(out),
        *extra,
    ]


def run_cli(target: str, out: Path, *extra: str, timeout: float = 300) -> tuple[int, str, float]:
    env = {**os.environ, "EPLB_HOSTILE_REPORT": str(out)}
    start = time.monotonic()
    finished = subprocess.run(
        gate_command(target, out, *extra), capture_output=True, text=True, timeout=timeout, env=env
    )
    return finished.returncode, finished.stdout + finished.stderr, time.monotonic() - start


def test_a_changed_input_is_seen_whatever_the_target_does_to_paths(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, printed, _ = run_cli("mutates_then_restores_the_path", out)
    assert code == 1, printed
    assert "Traceback" not in printed
    assert {f["check"] for f in json.loads(out.read_text())["findings"]} == {"input-unmodified"}


def test_an_input_changed_after_the_answer_is_seen() -> None:
    report = run_gate(f"{ROUND2}:mutates_after_answering", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"input-unmodified"}, report.summary()
    assert any("after the target had answered" in f.message for f in report.findings)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/mem is Linux's")
def test_the_gate_memory_cannot_be_written_by_its_target(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    os.environ["EPLB_HOSTILE_EVIDENCE"] = str(evidence)
    try:
        report = run_gate(f"{ROUND2}:writes_the_gate_memory", quick=True, checks=CONTRACT_ONLY)
    finally:
        del os.environ["EPLB_HOSTILE_EVIDENCE"]
    assert report.verdict == "fail"
    assert evidence.read_text().startswith("refused"), evidence.read_text()


@pytest.mark.parametrize("target", ["lies_about_its_outputs", "impostor_outputs"])
def test_output_types_are_decided_by_what_the_values_are(target: str) -> None:
    report = run_gate(f"{ROUND2}:{target}", quick=True, checks=CONTRACT_ONLY)
    assert report.verdict == "fail", report.summary()
    assert checks_failed(report) == {"contract"}, report.summary()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper and /proc: Linux")
def test_nothing_left_behind_rewrites_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code, printed, _ = run_cli("leaves_a_report_rewriter", out)
    assert code == 1, printed
    time.sleep(4)  # the left-behind process would have rewritten it by now
    assert json.loads(out.read_text())["verdict"] == "fail"


@pytest.mark.parametrize(
    ("target", "check"),
    [
        ("fills_the_request_pipe", "timeout"),
        ("answers_another_request", "undecodable-result"),
        ("huge_header", "undecodable-result"),
        ("wide_phy2log", "contract"),
    ],
)
def test_the_wire_is_bounded_in_time_and_size(tmp_path: Path, target: str, check: str) -> None:
    out = tmp_path / "report.json"
    code, printed, seconds = run_cli(target, out, "--timeout", "5")
    assert code == 1, printed
    assert "Traceback" not in printed
    document = json.loads(out.read_text())
    assert check in {f["check"] for f in document["findings"]}, document["findings"]
    assert seconds < 120


def test_a_target_that_starts_threads_passes_under_the_memory_limit() -> None:
    report = run_gate(f"{ROUND2}:thread_per_call", quick=True, checks=CONTRACT_ONLY)
    assert report.verdict == "pass", report.summary()
    assert "RLIMIT_DATA" in report.header["call"]


@pytest.mark.parametrize("sandbox", [True, False])
def test_the_sandbox_hides_processes_and_the_network(tmp_path: Path, sandbox: bool) -> None:
    available, why = isolation.sandbox_available()
    if sandbox and not available:
        pytest.skip(f"the sandbox is {why}")
    evidence = tmp_path / "evidence"
    os.environ["EPLB_HOSTILE_EVIDENCE"] = str(evidence)
    try:
        with isolation.IsolatedTarget(
            f"{ROUND2}:probes_the_sandbox", 60, sandbox=sandbox
        ) as target:
            outcome = target.call(isolation.TensorArg(np.ones((1, 4))), 4, 1, 1, 1)
    finally:
        del os.environ["EPLB_HOSTILE_EVIDENCE"]
    assert isinstance(outcome, isolation.CallResult), outcome
    seen = json.loads(evidence.read_text())
    if sandbox:
        assert seen["processes"] <= 3, seen  # its own tree only
        assert seen["network"] == "ENETUNREACH", seen
    else:
        assert seen["processes"] > 3, seen
        assert seen["network"] != "ENETUNREACH", seen


def test_a_target_file_imports_a_module_beside_it(tmp_path: Path) -> None:
    (tmp_path / "eplb_helpers_beside.py").write_text("from impl import rebalance_experts\n")
    (tmp_path / "balancer.py").write_text(
        "from eplb_helpers_beside import rebalance_experts as rebalance_experts\n"
    )
    report = run_gate(
        f"{tmp_path / 'balancer.py'}:rebalance_experts", quick=True, checks=CONTRACT_ONLY
    )
    assert report.verdict == "pass", report.summary()
    assert f"{tmp_path} first on sys.path" in report.header["call"]
