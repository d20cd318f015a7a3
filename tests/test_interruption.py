"""SIGINT and SIGTERM at any moment of a gate, fidelity or migration run end it within a
few seconds: exit 130, one line and no traceback, an "interrupted" report, and no
process of the run left (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def processes_marked(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def interrupt(
    arguments: list[str], after_s: float, sig: int, started: Path | None = None
) -> tuple[int, str, float]:
    """Run ``eplb-spec ARGUMENTS``, send ``sig`` ``after_s`` after the start (after the
    file ``started`` appears, when given); the exit status, what it printed and how long
    it took to end after the signal. Asserts that no process of the run is left."""
    marker = f"EPLB_INTERRUPT_TEST={uuid.uuid4()}"
    name, _, value = marker.partition("=")
    process = subprocess.Popen(
        [sys.executable, "-m", "eplb_spec", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, name: value},
    )
    deadline = time.monotonic() + 120
    while started is not None and not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after_s)
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        printed, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        printed, _ = process.communicate()
        pytest.fail(f"still running 30 s after {signal.Signals(sig).name}: {printed[-2000:]!r}")
    took = time.monotonic() - sent
    time.sleep(0.5)
    assert processes_marked(marker) == [], "processes of the run outlived it"
    return process.returncode, printed.decode(errors="replace"), took


@pytest.mark.parametrize(
    ("after_s", "sig"),
    [
        (0.3, signal.SIGINT),  # start-up
        (2.5, signal.SIGINT),
        (5.0, signal.SIGTERM),
        (7.0, signal.SIGINT),  # optimality (CP-SAT) or later, as the machine allows
        (9.0, signal.SIGINT),  # traces
        (11.0, signal.SIGTERM),
    ],
)
def test_a_gate_run_ends_at_once_whenever_it_is_interrupted(
    tmp_path: Path, after_s: float, sig: int
) -> None:
    out = tmp_path / "report.json"
    code, printed, took = interrupt(["gate", "--quick", "--json", str(out)], after_s, sig)
    if code == 0:  # the run was over before the signal (a fast machine)
        assert json.loads(out.read_text())["verdict"] == "pass"
        return
    assert code == 130, printed
    assert "Traceback" not in printed
    assert "interrupted" in printed
    assert took < 10
    if out.exists():
        assert json.loads(out.read_text())["verdict"] == "interrupted"


def test_a_fidelity_run_ends_at_once_when_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    arguments = ["gate", "--same-as", "baseline", "--quick", "--json", str(out)]
    code, printed, took = interrupt(arguments, 3.0, signal.SIGINT, started=out)
    assert code == 130, printed
    assert "Traceback" not in printed
    assert took < 10
    assert json.loads(out.read_text())["verdict"] == "interrupted"


def test_the_migration_study_ends_without_a_traceback() -> None:
    code, printed, took = interrupt(["migration", "--quick"], 3.0, signal.SIGINT)
    assert code == 130, printed
    assert "Traceback" not in printed
    assert took < 10
