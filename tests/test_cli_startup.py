"""The command line answers ``--help`` and argument errors before loading anything heavy:
no solver, torch, NumPy, numba or Hypothesis until a command needs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "scipy", "numba", "ortools", "hypothesis", "matplotlib", "tqdm")
PROJECT = ("spec", "impl", "oracle", "studies")

PROBE = """
import contextlib, io, json, sys
from eplb_spec.cli import main
err = io.StringIO()
try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(json.loads(sys.argv[1]))
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "err": err.getvalue(), "modules": sorted(sys.modules)}))
"""


def loaded_by(arguments: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(arguments)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    document: dict[str, object] = json.loads(result.stdout)
    return document


def heavy_modules(modules: object) -> list[str]:
    assert isinstance(modules, list)
    return sorted({m.split(".")[0] for m in modules} & {*HEAVY, *PROJECT})


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        (["--help"], 0),
        (["gate", "--help"], 0),
        (["plot", "--help"], 0),
        (["no-such-command"], 2),
        (["gate", "--timeout", "-1"], 2),
        (["report", "--gpus", "zero"], 2),
        (["bench", "--rounds", "0"], 2),
        (["report", "--data", "/no/such/folder"], 2),
    ],
)
def test_help_and_argument_errors_load_nothing_heavy(arguments: list[str], code: int) -> None:
    answer = loaded_by(arguments)
    assert answer["code"] == code
    if code == 2:
        assert str(answer["err"]).count("\n") == 1, answer["err"]
    assert heavy_modules(answer["modules"]) == []


def test_the_probe_sees_what_a_command_loads() -> None:
    """The same probe on a command that balances: it does load torch and the project."""
    answer = loaded_by(["report", "--data", "generated", "--gpus", "8", "--replicas", "264"])
    assert answer["code"] == 0
    assert {"torch", "numpy", "spec", "impl"} <= set(heavy_modules(answer["modules"]))
