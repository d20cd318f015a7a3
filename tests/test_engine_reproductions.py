"""Every reproduction in docs/engines confirms its finding on the pinned release (exit
status 1). Skipped when the release is not in the engine cache (CI downloads no engine:
``python -m properties.engines fetch`` or ``nox -s downstream`` fills the cache)."""

from __future__ import annotations

import subprocess
import sys

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
