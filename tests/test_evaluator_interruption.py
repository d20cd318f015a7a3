"""The evaluator under interruption and hangs (issue 18, section 4): SIGTERM and SIGINT
end every worker and every program process within seconds, on a local pool and on
Dask; a hanging program costs one timeout; bad --out, --scheduler and --ray values are
one line and exit 2."""

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

from eplb_spec.cli import main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

HANGING = """
import os, subprocess, sys, time, uuid
from pathlib import Path

def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # one file per call: in the sandbox's PID namespace every worker may be pid 1
    Path(os.environ["EPLB_TEST_STARTED"], uuid.uuid4().hex).write_text("")
    time.sleep(600)
"""


def processes_marked(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker.encode() in environ and state != "Z":
                found.append(int(entry.name))
    return found


def programs(folder: Path, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = folder / f"hangs_{index}.py"
        path.write_text(HANGING + f"\nVARIANT = {index}\n")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize(
    ("backend", "sig"),
    [
        (["--workers", "2"], signal.SIGTERM),
        (["--workers", "2"], signal.SIGINT),
        (["--scheduler", "local:2"], signal.SIGTERM),
    ],
)
def test_an_interrupted_batch_leaves_no_process(
    tmp_path: Path, backend: list[str], sig: int
) -> None:
    if backend[0] == "--scheduler":
        pytest.importorskip("distributed")
    started = tmp_path / "started"
    started.mkdir()
    marker = str(uuid.uuid4())
    command = [sys.executable, "-m", "eplb_spec", "evaluate", *programs(tmp_path, 2)]
    command += [*backend, "--out", str(tmp_path / "out.jsonl"), "--timeout", "300"]
    env = {**os.environ, "EPLB_TEST_STARTED": str(started), "EPLB_TEST_MARKER": marker}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 240
    while len(list(started.iterdir())) < 2:  # both programs are running
        assert process.poll() is None, process.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "the programs never started"
        time.sleep(0.2)
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        printed = process.communicate(timeout=30)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the evaluator was still running 30 s after the signal")
    took = time.monotonic() - sent
    assert process.returncode == 130, printed[-3000:]
    assert "Traceback" not in printed
    assert took < 15, took
    deadline = time.monotonic() + 5
    while processes_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_marked(marker) == [], "worker or program processes outlived the batch"


def test_a_hanging_program_costs_one_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "started").mkdir()
    os.environ["EPLB_TEST_STARTED"] = str(tmp_path / "started")
    try:
        (program,) = programs(tmp_path, 1)
        code = main(["evaluate", program, "--timeout", "15", "--no-speed"])
    finally:
        del os.environ["EPLB_TEST_STARTED"]
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["verdict"] == "fail"
    assert len(list((tmp_path / "started").iterdir())) == 1  # called once, never again
    assert result["evaluation_seconds"] < 2 * 15


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--out", "{folder}"], "is a folder"),
        (["--out", "/proc/eplb-results.jsonl"], "under /proc"),
        (["--out", "{file}/results.jsonl"], "cannot be written"),
        (["--scheduler", "tcp://127.0.0.1:9"], "no Dask scheduler answers"),
    ],
)
def test_bad_destinations_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], words: str
) -> None:
    if options[0] == "--scheduler":
        pytest.importorskip("distributed")
    (tmp_path / "a-file").write_text("")
    filled = [o.format(folder=tmp_path, file=tmp_path / "a-file") for o in options]
    program = str(Path(__file__).parent / "targets" / "broken.py")
    assert main(["evaluate", program, program, *filled]) == 2
    error = capsys.readouterr().err
    assert words in error, error
    assert "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
