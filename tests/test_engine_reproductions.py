"""Every reproduction in docs/engines confirms its finding on the pinned release (exit
status 1). Skipped when the release is not in the engine cache (CI downloads no engine:
``python -m properties.engines fetch`` or ``nox -s downstream`` fills the cache)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from typing import Any

import pytest

from properties.downstream import EXPECTED_FILE, load_expected, target_key
from properties.engines import find_engine, pinned_targets
from properties.isolation import TargetError

FOLDER = EXPECTED_FILE.parent
# Reproductions of behaviour outside the engine's caller's domain (no finding, so not in
# the expected file).
OUTSIDE_DOMAIN = [("vllm:default", "repro_vllm_infinite_load.py")]


def cases() -> list[tuple[str, str]]:
    listed = {
        (target, finding.reproduction)
        for target, known in load_expected().items()
        for finding in known
        if finding.reproduction
    }
    return sorted(listed | set(OUTSIDE_DOMAIN))


def test_every_reproduction_script_is_run_by_this_file() -> None:
    scripts = {path.name for path in FOLDER.glob("repro_*.py")}
    assert scripts == {script for _, script in cases()}


@pytest.mark.parametrize(("target", "script"), cases())
def test_reproduction_confirms_its_finding(target: str, script: str) -> None:
    pinned = {target_key(t): t for t in pinned_targets()}[target]
    try:
        find_engine(pinned)
    except TargetError as error:
        pytest.skip(f"{pinned} not available: {error}")
    result = subprocess.run(
        [sys.executable, str(FOLDER / script), pinned], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr


def load_worst_gaps() -> Any:
    path = FOLDER / "worst_gaps.py"
    spec = importlib.util.spec_from_file_location("eplb_worst_gaps", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORST_GAP_LINE = re.compile(r"^(\S+): worst gap ([0-9.]+%) on (\(.*\))$", re.MULTILINE)


def documented_worst_gaps() -> list[tuple[str, str, str]]:
    text = (FOLDER.parent / "ENGINES.md").read_text()
    return WORST_GAP_LINE.findall(text)


def test_the_documented_worst_gaps_cover_the_reference_and_every_pinned_target() -> None:
    names = {name for name, _, _ in documented_worst_gaps()}
    assert names == {"reference", "baseline", *pinned_targets()}


@pytest.mark.parametrize(("name", "gap", "where"), documented_worst_gaps())
def test_each_documented_worst_gap_is_what_its_input_gives(name: str, gap: str, where: str) -> None:
    """docs/ENGINES.md prints ``python docs/engines/worst_gaps.py``'s output; each line's
    input, run again, gives the gap printed beside it."""
    if name not in ("reference", "baseline"):
        try:
            find_engine(name)
        except TargetError as error:
            pytest.skip(f"{name} not available: {error}")
    # in a process of its own: an engine imported here would stay in the test session
    script = (
        "import ast, importlib.util, sys\n"
        "from spec.problem import BalancingProblem\n"
        "spec = importlib.util.spec_from_file_location('eplb_worst_gaps', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "function, outside = module.balancer(sys.argv[2])\n"
        "loads, *cluster = ast.literal_eval(sys.argv[3])\n"
        "problem = BalancingProblem(loads, *cluster)\n"
        "print('outside' if outside(problem) else f'{module.proven_gap(function, problem):.2%}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(FOLDER / "worst_gaps.py"), name, where],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == gap


def test_the_family_reaches_its_gap_on_the_reference() -> None:
    """The hand-picked family's proof, checked: 2W/(G+1) against W/G + 1 (W/2 + 1/2 on
    2 GPUs, where the one cold expert takes both cold slots)."""
    worst_gaps = load_worst_gaps()
    function, _ = worst_gaps.balancer("reference")
    for problem in worst_gaps.FAMILY:
        gpus, hot = problem.num_gpus, worst_gaps.HOT
        cold = 1 if gpus > 2 else 1 / 2
        expected = (2 * hot / (gpus + 1)) / (hot / gpus + cold) - 1
        assert worst_gaps.proven_gap(function, problem) == pytest.approx(expected, rel=1e-12)
