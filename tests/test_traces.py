"""The 12 real traces shipped with the package: the same as the JSON files they came from,
checked on load, used by default, and enough for the first README command on a machine
with no ``../shared``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from properties import traces, workloads

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPOSITORY.parent / "shared" / "data" / "deepseek-v3-sglang"
TRACE_NAMES = [
    "decode_in1000out1000",
    "decode_in1800out100",
    "decode_in2000out100",
    "decode_in500out1500",
    "prefill_in1000out1000",
    "prefill_in1024",
    "prefill_in1800out100",
    "prefill_in2000out100",
    "prefill_in2048",
    "prefill_in4096",
    "prefill_in500out1500",
    "prefill_in512",
]


def test_the_shipped_traces_are_the_twelve_deepseek_traces() -> None:
    shipped = traces.shipped_trace_counts()
    assert list(shipped) == TRACE_NAMES
    for counts in shipped.values():
        assert counts.shape == (61, 256)
        assert counts.dtype == np.int64
        assert not counts[:3].any()  # the dense layers
        assert (counts[3:] > 0).all()
        assert not counts.flags.writeable
    assert traces.SHIPPED_TRACES.stat().st_size < 600_000


@pytest.mark.skipif(
    not SHARED_TRACES.is_dir(),
    reason=f"{SHARED_TRACES} is not on this machine (it exists beside the project's checkouts)",
)
def test_the_shipped_copy_equals_the_json_traces() -> None:
    shipped = traces.shipped_trace_counts()
    files = sorted(SHARED_TRACES.glob("*.json"))
    assert [f.stem for f in files] == list(shipped)
    for file in files:
        raw = np.asarray(json.loads(file.read_text())["logical_count"], dtype=np.float64)
        assert np.array_equal(shipped[file.stem], raw), file.name
        assert np.array_equal(
            workloads.load_trace(file), np.asarray(shipped[file.stem][3:], dtype=np.float64)
        )


def test_the_default_workloads_are_the_shipped_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(workloads.DATA_ENV, raising=False)
    found, note = workloads.default_workloads()
    assert [w.name for w in found] == TRACE_NAMES
    assert not any(w.generated for w in found)
    assert note.startswith("12 real traces shipped with eplb-spec")
    shipped = traces.shipped_trace_counts()
    for workload in found:
        assert workload.loads.shape == workloads.TRACE_SHAPE
        assert np.array_equal(workload.loads, shipped[workload.name][3:])


def test_the_environment_and_the_argument_still_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [[0.0] * 256, [float(i + 1) for i in range(256)]]
    (tmp_path / "mine.json").write_text(json.dumps({"logical_count": rows}))
    monkeypatch.setenv(workloads.DATA_ENV, str(tmp_path))
    found, note = workloads.default_workloads()
    assert [w.name for w in found] == ["mine"]
    assert note == f"1 real traces from {tmp_path}"
    monkeypatch.setenv(workloads.DATA_ENV, "generated")
    found, note = workloads.default_workloads()
    assert [w.generated for w in found] == [True]
    assert "GENERATED" in note
    found, _ = workloads.default_workloads(str(tmp_path))  # the argument before the variable
    assert [w.name for w in found] == ["mine"]


def write_json_traces(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    written = {}
    for name in ("b_trace", "a_trace"):
        counts = rng.integers(0, 10**7, size=(4, 256))
        counts[0] = 0
        (folder / f"{name}.json").write_text(
            json.dumps({"logical_count": counts.astype(float).tolist()})
        )
        written[name] = counts
    return written


def test_regenerating_writes_the_same_bytes_and_a_checksum_the_loader_accepts(
    tmp_path: Path,
) -> None:
    source = tmp_path / "json"
    source.mkdir()
    written = write_json_traces(source)
    first, digest = traces.write_shipped(source, tmp_path / "one")
    second, again = traces.write_shipped(source, tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    assert digest == again == traces.expected_checksum(checksums=tmp_path / "one" / "SHA256SUMS")
    loaded = traces.shipped_trace_counts(first, tmp_path / "one" / "SHA256SUMS")
    assert list(loaded) == ["a_trace", "b_trace"]
    for name, counts in written.items():
        assert np.array_equal(loaded[name], counts)


def test_the_command_regenerates_the_shipped_archive(tmp_path: Path) -> None:
    source = tmp_path / "json"
    source.mkdir()
    write_json_traces(source)
    assert traces.main([str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "SHA256SUMS").read_text().endswith("  deepseek-v3-sglang.npz\n")
    assert traces.main([str(tmp_path / "out")]) == 2  # no JSON there


def test_a_fractional_count_cannot_be_shipped(tmp_path: Path) -> None:
    rows = [[1.5] * 256]
    (tmp_path / "t.json").write_text(json.dumps({"logical_count": rows}))
    with pytest.raises(ValueError, match="must be integers"):
        traces.counts_from_json_folder(tmp_path)


def test_a_damaged_archive_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / traces.SHIPPED_NAME
    content = bytearray(traces.SHIPPED_TRACES.read_bytes())
    content[len(content) // 2] ^= 0xFF
    damaged.write_bytes(bytes(content))
    shutil.copy(traces.CHECKSUMS, tmp_path / "SHA256SUMS")
    with pytest.raises(ValueError, match="are damaged: SHA-256"):
        traces.shipped_trace_counts(damaged, tmp_path / "SHA256SUMS")
    with pytest.raises(ValueError, match="cannot be read"):
        traces.shipped_trace_counts(tmp_path / "missing.npz", tmp_path / "SHA256SUMS")


def test_the_archive_is_plain_numpy() -> None:
    with zipfile.ZipFile(traces.SHIPPED_TRACES) as archive:
        assert sorted(archive.namelist()) == [f"{n}.npy" for n in TRACE_NAMES]
    with np.load(traces.SHIPPED_TRACES, allow_pickle=False) as archive:
        assert archive["prefill_in512"].shape == (61, 256)


def test_the_first_readme_command_prints_the_real_table_without_shared(tmp_path: Path) -> None:
    """The project copied where no ``../shared`` exists, ``EPLB_SPEC_DATA`` unset."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for package in ("spec", "impl", "oracle", "properties", "studies", "eplb_spec"):
        shutil.copytree(
            REPOSITORY / package, clone / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    assert not (tmp_path / "shared").exists()
    environment = {k: v for k, v in os.environ.items() if k != workloads.DATA_ENV}
    environment["PYTHONPATH"] = str(clone)
    result = subprocess.run(
        [sys.executable, "-m", "eplb_spec"],
        cwd=clone,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "12 real traces shipped with eplb-spec "
        f"({clone / 'properties' / 'data' / traces.SHIPPED_NAME})"
    )
    rows = {line.split()[0]: line.split() for line in lines[4:16]}
    assert list(rows) == TRACE_NAMES
    assert all(row[1] == "58" for row in rows.values())
    assert "GENERATED" not in result.stdout


def test_the_wheel_ships_the_archive_its_checksum_and_its_provenance() -> None:
    """``pip wheel .`` packs what ``package-data`` names (checked by building one by hand)."""
    import tomllib

    config = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "properties" in config["packages"]
    shipped = config["package-data"]["properties"]
    for name in (traces.SHIPPED_NAME, "SHA256SUMS", "README.md"):
        assert f"data/{name}" in shipped
        assert (traces.DATA_DIR / name).is_file()
