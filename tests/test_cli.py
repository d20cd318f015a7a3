"""The ``eplb-spec`` main job: report on the traces, or on a generated stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eplb_spec.cli import main
from properties import workloads


def write_trace(folder: Path, name: str, layers: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    loads = rng.integers(0, 1000, size=(layers, 256)).astype(float)
    rows = [[0.0] * 256, *loads.tolist()]  # a leading dense layer, dropped on load
    (folder / f"{name}.json").write_text(json.dumps({"logical_count": rows}))
    return loads


def test_report_on_a_given_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trace(tmp_path, "tiny_a")
    write_trace(tmp_path, "tiny_b", seed=2)
    out_json = tmp_path / "report.json"
    assert main(["--data", str(tmp_path), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "2 real traces from" in printed
    assert "tiny_a" in printed
    assert "tiny_b" in printed
    document = json.loads(out_json.read_text())
    assert [t["trace"] for t in document["traces"]] == ["tiny_a", "tiny_b"]
    for row in document["traces"]:
        assert row["layers"] == 3
        assert 0 < row["balancedness_refined"] <= 1
        assert 0 < row["balancedness_baseline"] <= 1
        assert 0 <= row["layers_changed_by_b"] <= 3


def test_report_on_a_generated_workload_only_when_asked_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(workloads.DATA_ENV, raising=False)
    assert main(["--data", "generated"]) == 0
    printed = capsys.readouterr().out
    assert "GENERATED workload" in printed
    assert "generated-lognormal-seed0" in printed


def test_a_folder_without_traces_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--data", str(tmp_path)]) == 2
    assert "holds no *.json trace files" in capsys.readouterr().err


def test_a_malformed_trace_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text('{"other": 1}')
    assert main(["--data", str(tmp_path)]) == 2
    assert "not a trace file" in capsys.readouterr().err


def test_trace_loader_drops_only_the_leading_dense_layers(tmp_path: Path) -> None:
    loads = write_trace(tmp_path, "t", layers=4)
    loaded = workloads.load_trace(tmp_path / "t.json")
    assert np.array_equal(loaded, loads)


def test_generated_workload_has_the_trace_shape_and_repeats() -> None:
    a, b = workloads.generated_loads(), workloads.generated_loads()
    assert a.shape == workloads.TRACE_SHAPE
    assert np.array_equal(a, b)
    assert (a >= 0).all()


def test_a_trace_is_read_once_until_its_file_changes(tmp_path: Path) -> None:
    write_trace(tmp_path, "t", layers=2)
    first = workloads.load_trace(tmp_path / "t.json")
    assert workloads.load_trace(tmp_path / "t.json") is first
    assert not first.flags.writeable
    changed = write_trace(tmp_path, "t", layers=3, seed=7)
    reread = workloads.load_trace(tmp_path / "t.json")
    assert np.array_equal(reread, changed)
