"""The downstream comparison: findings of gate reports against the expected file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from properties import downstream
from properties.downstream import (
    EXPECTED_FILE,
    KnownFinding,
    compare,
    findings_of,
    load_expected,
    target_key,
    write_expected,
)
from properties.engines import parse_target, pinned_targets


def report(*findings: tuple[str, str]) -> dict[str, Any]:
    """A gate report in the format with grouped findings."""
    return {
        "verdict": "fail" if findings else "pass",
        "findings": [
            {"check": c, "code": k, "message": "m", "count": 2, "input": {}} for c, k in findings
        ],
    }


def test_findings_of_the_grouped_format() -> None:
    found = findings_of(report(("contract", "count-sum"), ("dtype", "phy2log"), ("crash", "")))
    assert found == {("contract", "count-sum"), ("dtype", "phy2log"), ("crash", "crash")}


def test_findings_of_the_older_format_use_the_check_as_code() -> None:
    old = {"violations": [{"check": "contract", "message": "x", "input": None}] * 2}
    assert findings_of(old) == {("contract", "contract")}
    assert findings_of({"verdict": "pass", "violations": []}) == set()


def test_a_document_that_is_no_report_is_refused() -> None:
    with pytest.raises(ValueError, match="not a gate report"):
        findings_of({"verdict": "pass"})


def test_target_key_drops_the_release() -> None:
    assert target_key("sglang@0.5.23:deepseek_vec") == "sglang:deepseek_vec"
    assert target_key("vllm@0.33.0:default") == "vllm:default"
    assert target_key("vllm:default") == "vllm:default"


def test_compare_names_what_appeared_and_what_disappeared() -> None:
    known = [
        KnownFinding("dtype", "phy2log", None, ""),
        KnownFinding("contract", "shape", None, ""),
    ]
    result = compare("t", {("dtype", "phy2log"), ("optimality", "max-gap")}, known)
    assert result.appeared == {("optimality", "max-gap")}
    assert result.disappeared == {("contract", "shape")}
    assert not result.matches
    assert compare("t", {("dtype", "phy2log"), ("contract", "shape")}, known).matches


def test_a_quick_run_need_not_report_thorough_only_findings() -> None:
    known = [KnownFinding("dtype", "c", None, ""), KnownFinding("deep", "d", None, "", True)]
    assert compare("t", {("dtype", "c")}, known, thorough=False).matches
    assert compare("t", {("dtype", "c"), ("deep", "d")}, known, thorough=False).matches
    assert compare("t", {("dtype", "c")}, known, thorough=True).disappeared == {("deep", "d")}
    assert compare("t", {("deep", "d")}, known, thorough=False).disappeared == {("dtype", "c")}


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_load_expected_reads_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.json",
        {
            "format": 1,
            "targets": {
                "vllm:default": [],
                "sglang:x": [{"check": "dtype", "code": "c", "reproduction": "r.py", "note": "n"}],
            },
        },
    )
    expected = load_expected(path)
    assert expected["vllm:default"] == []
    assert expected["sglang:x"] == [KnownFinding("dtype", "c", "r.py", "n")]


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"format": 2, "targets": {}},
        {"format": 1},
        {"format": 1, "targets": {"t": {}}},
        {"format": 1, "targets": {"t": [{"check": "dtype"}]}},
    ],
)
def test_malformed_expected_files_are_refused(tmp_path: Path, document: object) -> None:
    with pytest.raises(ValueError, match=r"e\.json"):
        load_expected(write(tmp_path / "e.json", document))


def test_a_quick_update_keeps_thorough_only_findings(tmp_path: Path) -> None:
    previous = {"a": [KnownFinding("deep", "d", "r.py", "n", True)]}
    path = tmp_path / "e.json"
    write_expected(path, {"a": set()}, previous, thorough=False)
    assert load_expected(path)["a"] == previous["a"]
    write_expected(path, {"a": set()}, previous, thorough=True)
    assert load_expected(path)["a"] == []


def test_write_expected_keeps_notes_and_marks_new_findings(tmp_path: Path) -> None:
    previous = {
        "a": [KnownFinding("dtype", "c", "r.py", "kept"), KnownFinding("gone", "g", None, "")],
        "untouched": [KnownFinding("x", "y", None, "still here")],
    }
    path = tmp_path / "e.json"
    write_expected(path, {"a": {("dtype", "c"), ("crash", "crash")}}, previous)
    expected = load_expected(path)
    assert expected["a"] == [
        KnownFinding(
            "crash", "crash", None, "NEW: describe it, and add a reproduction or say why none"
        ),
        KnownFinding("dtype", "c", "r.py", "kept"),
    ]
    assert expected["untouched"] == previous["untouched"]


class FakeRun:
    """Stands in for the gate and the reproductions in ``downstream.main``."""

    def __init__(self, reports: dict[str, dict[str, Any]], repro_status: int = 1) -> None:
        self.reports = reports
        self.repro_status = repro_status
        self.gated: list[tuple[str, bool]] = []
        self.options: list[list[str]] = []
        self.reproduced: list[tuple[str, str]] = []
        self.verdicts: dict[str, str] = {}
        self.fidelity_runs: list[str] = []

    def gate(self, target: str, path: Path, thorough: bool, extra: Sequence[str]) -> int:
        self.gated.append((target, thorough))
        self.options.append(list(extra))
        if target not in self.reports:
            return 2
        path.write_text(json.dumps(self.reports[target]))
        return 1 if self.reports[target]["findings"] else 0

    def fidelity(self, target: str, path: Path, thorough: bool) -> str | None:
        self.fidelity_runs.append(target)
        return self.verdicts.get(target)

    def reproduce(self, script: Path, target: str) -> tuple[int, str]:
        self.reproduced.append((script.name, target))
        return self.repro_status, "wrong output\n"


def run_main(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeRun,
    *extra: str,
    verdicts: dict[str, str] | None = None,
) -> int:
    """``downstream.main`` on two targets; ``verdicts``: expected fidelity verdicts."""
    document: dict[str, Any] = {
        "format": 1,
        "targets": {
            "vllm:default": [],
            "sglang:deepseek_vec": [
                {"check": "dtype", "code": "phy2log", "reproduction": "repro_a.py"}
            ],
        },
    }
    if verdicts is not None:
        document["fidelity"] = {"verdicts": verdicts}
    expected = write(tmp_path / "expected.json", document)
    monkeypatch.setattr(downstream, "gate", fake.gate)
    monkeypatch.setattr(downstream, "run_reproduction", fake.reproduce)
    monkeypatch.setattr(downstream, "fidelity", fake.fidelity)
    arguments = ["--no-fetch", "--expected", str(expected), "--reports", str(tmp_path / "r")]
    arguments += ["--target", "vllm@1:default", "--target", "sglang@2:deepseek_vec", *extra]
    return downstream.main(arguments)


def test_downstream_passes_when_findings_are_as_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun(
        {"vllm@1:default": report(), "sglang@2:deepseek_vec": report(("dtype", "phy2log"))}
    )
    assert run_main(tmp_path, monkeypatch, fake) == 0
    assert fake.gated == [("vllm@1:default", False), ("sglang@2:deepseek_vec", False)]
    assert fake.reproduced == [("repro_a.py", "sglang@2:deepseek_vec")]
    assert fake.options == [list(downstream.DEFAULT_GATE_OPTIONS)] * 2


def test_gate_options_after_the_separator_add_to_the_pinned_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nox -s downstream -- -- --timeout 30`` (docs/ENGINES.md) keeps ``--max-gap 99``."""
    fake = FakeRun(
        {"vllm@1:default": report(), "sglang@2:deepseek_vec": report(("dtype", "phy2log"))}
    )
    assert run_main(tmp_path, monkeypatch, fake, "--", "--timeout", "5") == 0
    assert fake.options == [[*downstream.DEFAULT_GATE_OPTIONS, "--timeout", "5"]] * 2


def test_update_refuses_a_run_with_other_gate_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun({"vllm@1:default": report(), "sglang@2:deepseek_vec": report()})
    assert run_main(tmp_path, monkeypatch, fake, "--update", "--", "--timeout", "5") == 2
    assert fake.gated == []
    assert "run --update without gate options" in capsys.readouterr().err
    expected = load_expected(tmp_path / "expected.json")
    assert [k.key for k in expected["sglang:deepseek_vec"]] == [("dtype", "phy2log")]


def test_a_failing_run_with_other_gate_options_does_not_suggest_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun({"vllm@1:default": report(), "sglang@2:deepseek_vec": report()})
    assert run_main(tmp_path, monkeypatch, fake, "--", "--max-gap", "10") == 1
    out = capsys.readouterr().out
    assert "--update" not in out
    assert "differ from the pinned ones" in out


def test_downstream_fails_on_a_new_finding_and_thorough_is_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun(
        {
            "vllm@1:default": report(("crash", "crash")),
            "sglang@2:deepseek_vec": report(("dtype", "phy2log")),
        }
    )
    assert run_main(tmp_path, monkeypatch, fake, "--thorough") == 1
    assert all(thorough for _, thorough in fake.gated)
    assert "vllm:default: new finding [crash] crash" in capsys.readouterr().out


def test_downstream_fails_when_a_known_finding_disappears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun({"vllm@1:default": report(), "sglang@2:deepseek_vec": report()})
    assert run_main(tmp_path, monkeypatch, fake) == 1
    assert "known finding [dtype] phy2log no longer reported" in capsys.readouterr().out


def test_downstream_fails_when_a_reproduction_no_longer_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = {"vllm@1:default": report(), "sglang@2:deepseek_vec": report(("dtype", "phy2log"))}
    assert run_main(tmp_path, monkeypatch, FakeRun(reports, repro_status=0)) == 1


def test_downstream_fails_when_the_gate_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeRun({"sglang@2:deepseek_vec": report(("dtype", "phy2log"))})
    assert run_main(tmp_path, monkeypatch, fake) == 1
    assert "vllm@1:default: the gate exited with status 2" in capsys.readouterr().out


def test_update_rewrites_the_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(
        {"vllm@1:default": report(("crash", "crash")), "sglang@2:deepseek_vec": report()}
    )
    assert run_main(tmp_path, monkeypatch, fake, "--update") == 0
    expected = load_expected(tmp_path / "expected.json")
    assert [k.key for k in expected["vllm:default"]] == [("crash", "crash")]
    assert expected["sglang:deepseek_vec"] == []


def test_the_repository_expected_file_names_pinned_targets_and_real_scripts() -> None:
    expected = load_expected(EXPECTED_FILE)
    assert set(expected) == {target_key(t) for t in pinned_targets()}
    for target, known in expected.items():
        assert parse_target(target) is not None
        for finding in known:
            assert finding.note, f"{target} {finding.key}: say what the finding is"
            if finding.reproduction:
                assert (EXPECTED_FILE.parent / finding.reproduction).is_file()


def test_fidelity_verdicts_are_compared_with_the_expected_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = {"vllm:default": "pass", "sglang:deepseek_vec": "fail"}
    reports = {"vllm@1:default": report(), "sglang@2:deepseek_vec": report(("dtype", "phy2log"))}
    fake = FakeRun(reports)
    fake.verdicts = {"vllm@1:default": "pass", "sglang@2:deepseek_vec": "fail"}
    assert run_main(tmp_path, monkeypatch, fake, verdicts=expected) == 0
    assert fake.fidelity_runs == ["vllm@1:default", "sglang@2:deepseek_vec"]
    fake = FakeRun(reports)
    fake.verdicts = {"vllm@1:default": "fail", "sglang@2:deepseek_vec": "fail"}
    assert run_main(tmp_path, monkeypatch, fake, verdicts=expected) == 1
    assert "vllm:default: fidelity verdict fail, expected pass" in capsys.readouterr().out
    assert run_main(tmp_path, monkeypatch, fake, "--update", verdicts=expected) == 0
    assert downstream.load_fidelity(tmp_path / "expected.json")["vllm:default"] == "fail"
    assert [k.key for k in load_expected(tmp_path / "expected.json")["sglang:deepseek_vec"]] == [
        ("dtype", "phy2log")
    ]


def test_the_repository_pins_a_fidelity_verdict_for_every_pinned_target() -> None:
    verdicts = downstream.load_fidelity(EXPECTED_FILE)
    assert set(verdicts) == {target_key(t) for t in pinned_targets()}
