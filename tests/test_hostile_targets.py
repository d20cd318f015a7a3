"""Targets that attack the gate: nothing they do may change a verdict or take the
checker down (``tests/targets/hostile.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from eplb_spec.cli import main
from properties import isolation
from properties.gate import GateReport, run_gate
from properties.isolation import TargetError

HOSTILE = str(Path(__file__).parent / "targets" / "hostile.py")
SLOW_IMPORT = str(Path(__file__).parent / "targets" / "slow_import.py")
CONTRACT_ONLY = ["contract"]


def checks_failed(report: GateReport) -> set[str]:
    return {f.check for f in report.findings}


@pytest.fixture
def evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "evidence"
    monkeypatch.setenv("EPLB_HOSTILE_EVIDENCE", str(path))
    return path


def test_a_pickled_payload_is_never_unpickled(evidence: Path) -> None:
    report = run_gate(f"{HOSTILE}:pickled_payload", quick=True, checks=CONTRACT_ONLY)
    assert report.verdict == "fail"
    assert "hostile.Payload" in report.findings[0].message, report.summary()
    assert not evidence.exists()


def test_classes_of_the_target_never_reach_the_checking_process() -> None:
    report = run_gate(f"{HOSTILE}:classes_of_its_own", quick=True, checks=CONTRACT_ONLY)
    assert report.verdict == "pass", report.summary()  # plain values of a valid answer
    assert not [name for name in sys.modules if name.startswith(("eplb_target", "hostile"))]


def test_input_modification_is_seen_even_when_the_target_patches_torch_and_builtins() -> None:
    report = run_gate(f"{HOSTILE}:patches_then_mutates", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"input-unmodified"}, report.summary()


@pytest.mark.parametrize("target", ["nested_too_deep", "garbage_on_the_wire"])
def test_an_answer_that_cannot_be_decoded_is_a_finding(target: str) -> None:
    report = run_gate(f"{HOSTILE}:{target}", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"undecodable-result"}, report.summary()
    assert report.findings[0].input is not None


def test_an_object_that_only_claims_to_be_a_tensor_is_never_read() -> None:
    report = run_gate(f"{HOSTILE}:explodes_when_read", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"contract"}, report.summary()
    assert "phy2log must be a torch.Tensor or numpy.ndarray" in report.findings[0].message


def test_output_floods_and_spoofed_verdicts_stay_out_of_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    command = ["gate", "--quick", "--checks", "contract", "--json", str(out)]
    code = main([*command, "--impl", f"{HOSTILE}:floods_output"])
    assert code == 0
    printed = capsys.readouterr()
    assert "\x1b" not in printed.out + printed.err
    assert printed.out.count("PASS") == 1  # the gate's own verdict line only
    document = json.loads(out.read_text())
    written = document["header"]["target_output"]
    assert written["bytes"] > 2_000_000
    assert len(written["excerpt"]) < 20_000


def test_an_exception_message_cannot_spoof_the_printed_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = ["gate", "--quick", "--checks", "contract"]
    assert main([*command, "--impl", f"{HOSTILE}:raises_a_spoof"]) == 1
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert all(not line.startswith("eplb-spec gate: impl") for line in printed.splitlines())


def test_processes_the_target_starts_are_ended(
    evidence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"{uuid.uuid4()}"
    monkeypatch.setenv("EPLB_HOSTILE_MARKER", marker)
    report = run_gate(f"{HOSTILE}:spawns_a_daemon", quick=True, checks=CONTRACT_ONLY)
    assert report.verdict == "pass", report.summary()
    assert evidence.exists()  # the daemon was started
    time.sleep(0.2)
    assert living_processes_with(marker) == []


def living_processes_with(marker: str) -> list[int]:
    """Processes (not zombies) whose environment holds ``marker`` (the pid a process
    sees of itself is its namespace's, so it is not what is looked for)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or marker.encode() not in (entry / "environ").read_bytes():
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def test_a_target_that_leaks_memory_hits_its_limit_and_the_gate_goes_on() -> None:
    report = run_gate(
        f"{HOSTILE}:leaks_memory", quick=True, checks=["contract", "bad-input"], memory_mb=1536
    )
    assert report.verdict == "fail"
    assert report.findings[0].check in ("raises-on-valid-input", "crash"), report.summary()
    assert "bad-input" in report.checks


def test_sys_exit_in_a_call_is_a_finding_not_the_end_of_the_gate() -> None:
    report = run_gate(f"{HOSTILE}:exits", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"raises-on-valid-input"}
    assert report.findings[0].code == "SystemExit"


def test_a_worker_that_cannot_be_imported_again_still_gives_a_report(
    evidence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPLB_HOSTILE_IMPORT_ONCE", "1")
    report = run_gate(f"{HOSTILE}:crashes_then_cannot_be_imported_again", quick=True)
    assert checks_failed(report) == {"crash"}
    assert any("skipped" in status for status in report.checks.values())


def test_importing_the_target_honours_the_time_limit() -> None:
    start = time.monotonic()
    with pytest.raises(TargetError, match="did not import the target within 2 s"):
        run_gate(f"{SLOW_IMPORT}:rebalance_experts", quick=True, import_timeout_s=2)
    assert time.monotonic() - start < 60


def test_a_failure_that_does_not_repeat_is_reported_as_first_seen() -> None:
    report = run_gate(f"{HOSTILE}:fails_only_once", quick=True, checks=CONTRACT_ONLY)
    assert checks_failed(report) == {"contract"}, report.summary()
    assert "did not repeat" in report.findings[0].note


def test_a_gate_killed_by_its_target_leaves_no_passing_verdict(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text(json.dumps({"verdict": "pass"}))  # a stale report from an earlier run
    command = [sys.executable, "-m", "eplb_spec", "gate", "--quick", "--checks", "contract"]
    command += ["--impl", f"{HOSTILE}:kills_the_gate", "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, timeout=300, env=os.environ.copy())
    assert finished.returncode != 0
    # "incomplete" when the gate was killed; in the sandbox it cannot be, and fails it
    assert json.loads(out.read_text())["verdict"] in ("incomplete", "fail")


def test_int32_outputs_are_one_finding_and_every_check_goes_on() -> None:
    report = run_gate(f"{HOSTILE}:returns_int32", quick=True)
    assert checks_failed(report) == {"dtype"}, report.summary()
    (finding,) = report.findings  # one cause: all three outputs in one entry
    assert finding.message.startswith("phy2log, log2phy, logcnt "), finding.message
    assert finding.count > 1
    assert report.optimality["layers_compared"] > 0
    assert report.traces


def test_argument_folders_of_dead_gates_are_removed(tmp_path: Path) -> None:
    base = Path(isolation.shared_memory_dir() or tempfile.gettempdir())
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = base / f"{isolation.SCRATCH_PREFIX}{finished.stdout.strip()}-left"
    alive = base / f"{isolation.SCRATCH_PREFIX}{os.getpid()}-mine"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "arg0.bin").write_bytes(b"\0" * 8)
    try:
        isolation.remove_stale_scratch()
        assert not dead.exists()
        assert alive.exists()
    finally:
        for folder in (dead, alive):
            if folder.exists():
                (folder / "arg0.bin").unlink()
                folder.rmdir()


def test_a_worker_dies_with_its_gate() -> None:
    """A gate process that dies while its target hangs takes the worker with it (the
    worker asks the kernel for that): no hanging target outlives a killed gate."""
    hangs = str(Path(__file__).parent / "targets" / "broken.py") + ":hangs"
    script = (
        "import os, threading, time\n"
        "import numpy as np\n"
        "from properties.isolation import IsolatedTarget, TensorArg\n"
        f"target = IsolatedTarget({hangs!r}, 600)\n"
        "print(target.process.pid, flush=True)\n"
        "weight = TensorArg(np.ones((1, 2)))\n"
        "threading.Thread(target=target.call, args=(weight, 2, 1, 1, 1), daemon=True).start()\n"
        "time.sleep(1)\n"
        "os._exit(0)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    worker = int(finished.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while (
        Path(f"/proc/{worker}").exists()
        and "Z" not in Path(f"/proc/{worker}/stat").read_text().split(")")[-1][:3]
    ):
        assert time.monotonic() < deadline, "the worker outlived its gate"
        time.sleep(0.05)
