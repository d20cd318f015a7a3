"""The pytest plugin as an engine's CI uses it: a scratch project with its own balancers
and its own tests, ``pytest --eplb-target ...`` in a subprocess, the installed plugin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

CORRECT = '''
from impl import rebalance_experts as reference


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """This engine's balancer: the reference, as an engine would vendor it."""
    return reference(weight, num_replicas, num_groups, num_nodes, num_gpus)
'''

BROKEN = '''
from impl import rebalance_experts as reference


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """Off by one: expert 0's replica count is one too high."""
    phy2log, log2phy, logcnt = reference(weight, num_replicas, num_groups, num_nodes, num_gpus)
    logcnt = logcnt.clone()
    logcnt[:, 0] += 1
    return phy2log, log2phy, logcnt
'''

USER_TEST = """
def test_the_engine_own_test():
    assert 1 + 1 == 2
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    (root / "my_engine").mkdir()
    (root / "my_engine" / "__init__.py").write_text("")
    (root / "my_engine" / "eplb.py").write_text(CORRECT)
    (root / "broken_eplb.py").write_text(BROKEN)
    (root / "tests").mkdir()
    (root / "tests" / "test_engine.py").write_text(USER_TEST)
    return root


def pytest_run(project: Path, *arguments: str) -> tuple[int, dict[str, str], str]:
    """Exit status, the outcome of each item by node id, and the output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *arguments],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    outcomes = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(PASSED|FAILED|XFAIL|XPASS|ERROR) (\S+)", line)
        if match:
            outcomes[match.group(2)] = match.group(1)
    return result.returncode, outcomes, result.stdout + result.stderr


def test_without_a_target_the_plugin_adds_nothing(project: Path) -> None:
    code, outcomes, output = pytest_run(project, "tests")
    assert code == 0, output
    assert outcomes == {"tests/test_engine.py::test_the_engine_own_test": "PASSED"}
    assert "eplb-spec" in output  # the plugin is installed ("plugins: eplb-spec-...")


def test_a_correct_balancer_passes_every_section(project: Path) -> None:
    code, outcomes, output = pytest_run(
        project, "tests", "--eplb-target", "my_engine.eplb:rebalance_experts"
    )
    assert code == 0, output
    assert outcomes == {
        "tests/test_engine.py::test_the_engine_own_test": "PASSED",
        "eplb-spec::contract": "PASSED",
        "eplb-spec::deterministic": "PASSED",
        "eplb-spec::input-forms": "PASSED",
        "eplb-spec::optimality": "PASSED",
        "eplb-spec::bad-input": "PASSED",
        "eplb-spec::traces": "PASSED",
    }, output


def test_a_broken_balancer_fails_the_sections_it_breaks_with_the_smallest_input(
    project: Path,
) -> None:
    expected = project / "expected.json"
    expected.write_text(
        json.dumps(
            {
                "format": 1,
                "targets": {
                    "broken_eplb.py:rebalance_experts": [
                        {"check": "deterministic", "code": "deterministic", "note": "old bug"}
                    ]
                },
            }
        )
    )
    code, outcomes, output = pytest_run(
        project,
        "--eplb-target",
        "broken_eplb.py:rebalance_experts",
        "--eplb-sections",
        "contract,deterministic",
        "--eplb-expected",
        str(expected),
    )
    assert code == 1, output
    assert outcomes == {
        "tests/test_engine.py::test_the_engine_own_test": "PASSED",
        "eplb-spec::contract": "FAILED",
        "eplb-spec::deterministic": "PASSED",
    }, output
    assert "NEW FINDING [contract/count-sum]" in output
    assert 'smallest input: {"weight": [[' in output
    assert "[deterministic/deterministic] (fixed, or in a section this run left out)" in output


def test_known_findings_are_expected_failures_and_the_file_can_be_written(
    project: Path,
) -> None:
    expected = project / "written.json"
    arguments = (
        "--eplb-target",
        "broken_eplb.py:rebalance_experts",
        "--eplb-sections",
        "contract",
        "--eplb-expected",
        str(expected),
    )
    code, outcomes, output = pytest_run(project, *arguments, "--eplb-update-expected")
    assert code == 1, output  # the findings are shown while the file is written
    document = json.loads(expected.read_text())
    entries = document["targets"]["broken_eplb.py:rebalance_experts"]
    assert ("contract", "count-sum") in {(e["check"], e["code"]) for e in entries}
    code, outcomes, output = pytest_run(project, *arguments)
    assert code == 0, output
    assert outcomes == {
        "tests/test_engine.py::test_the_engine_own_test": "PASSED",
        "eplb-spec::contract": "XFAIL",
    }, output


def test_a_malformed_option_is_a_usage_error(project: Path) -> None:
    code, _, output = pytest_run(
        project, "--eplb-target", "broken_eplb.py:rebalance_experts", "--eplb-sections", "speed"
    )
    assert code == 4
    assert "--eplb-sections: unknown or no section(s) ['speed']" in output


def test_a_target_that_cannot_be_imported_fails_its_items(project: Path) -> None:
    code, outcomes, output = pytest_run(
        project, "--eplb-target", "no_such_file.py:rebalance", "--eplb-sections", "bad-input"
    )
    assert code == 1
    assert outcomes["eplb-spec::bad-input"] == "FAILED"
    assert "cannot use target no_such_file.py:rebalance" in output
