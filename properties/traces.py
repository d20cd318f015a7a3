"""The 12 DeepSeek-V3/R1 expert-load traces shipped with the package, and the cluster
they are studied on.

The traces (provenance and licence in ``properties/data/README.md``) are one compressed
NumPy archive, ``properties/data/deepseek-v3-sglang.npz``: one int64 ``[61, 256]`` array
per trace, named after its JSON file, holding the file's ``logical_count`` matrix as it is
(the 3 leading dense layers are all zero). The archive is read on first use, after its
SHA-256 is checked against ``properties/data/SHA256SUMS``.

Regenerate both from the JSON folder with
``python -m properties.traces path/to/deepseek-v3-sglang`` (it writes the same bytes for
the same files).

This module imports only the standard library at import time (the command line reads
``TRACE_CLUSTER`` from it before anything heavy is loaded); NumPy is imported on use.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# The cluster the traces are studied on: (num_replicas, num_groups, num_nodes, num_gpus).
TRACE_CLUSTER = (288, 8, 4, 32)
# DeepSeek-V3: 61 layers, the first 3 dense; 58 MoE layers of 256 routed experts.
TRACE_SHAPE = (58, 256)

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_NAME = "deepseek-v3-sglang.npz"
SHIPPED_TRACES = DATA_DIR / SHIPPED_NAME
CHECKSUMS = DATA_DIR / "SHA256SUMS"
# Every member of the archive carries this date, so that the same traces give the same bytes.
ARCHIVE_DATE = (2025, 5, 6, 0, 0, 0)

TRACE_SUBDIR = Path("shared") / "data" / "deepseek-v3-sglang"
DATA_ENV = "EPLB_SPEC_DATA"
# In place of a folder (``--data generated``, ``EPLB_SPEC_DATA=generated``): the
# generated stand-in, never used unless asked for.
GENERATED = "generated"

shipped_cache: dict[str, dict[str, npt.NDArray[np.int64]]] = {}


def find_trace_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of trace files, or None when none is found.

    An explicit path (argument or ``$EPLB_SPEC_DATA``) that holds no ``*.json`` file is
    an error, not a silent fallback.
    """
    given = explicit if explicit is not None else os.environ.get(DATA_ENV)
    if given == GENERATED:
        return None
    if given:
        path = Path(given)
        if not path.is_dir() or not any(path.glob("*.json")):
            raise ValueError(f"data directory {str(path)!r} holds no *.json trace files")
        return path
    checkout = Path(__file__).resolve().parents[1]
    for base in (Path.cwd(), checkout):
        candidate = base.parent / TRACE_SUBDIR
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def asks_for_generated(data_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``data_dir`` (or, without it, ``$EPLB_SPEC_DATA``) is ``generated``."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    return given is not None and str(given) == GENERATED


def expected_checksum(name: str = SHIPPED_NAME, checksums: Path = CHECKSUMS) -> str:
    """The SHA-256 that ``SHA256SUMS`` (``sha256sum`` format) records for ``name``."""
    try:
        lines = checksums.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"cannot read {checksums}: {error.strerror}") from None
    for line in lines:
        digest, _, listed = line.partition("  ")
        if listed.strip() == name:
            return digest.strip()
    raise ValueError(f"{checksums} lists no checksum for {name}")


def shipped_trace_counts(
    path: Path = SHIPPED_TRACES, checksums: Path = CHECKSUMS
) -> dict[str, npt.NDArray[np.int64]]:
    """The shipped traces by name (sorted), each the full ``[61, 256]`` int64
    ``logical_count`` matrix of its JSON file; read-only arrays, read once per process.

    ValueError when the archive is missing or its SHA-256 is not the recorded one.
    """
    if str(path) in shipped_cache:
        return dict(shipped_cache[str(path)])
    import numpy as np

    try:
        content = path.read_bytes()
    except OSError as error:
        raise ValueError(
            f"the shipped traces cannot be read ({path}: {error.strerror}); reinstall "
            "eplb-spec, or pass --data DIR"
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    expected = expected_checksum(path.name, checksums)
    if digest != expected:
        raise ValueError(
            f"the shipped traces {path} are damaged: SHA-256 {digest}, expected {expected} "
            f"(recorded in {checksums})"
        )
    traces: dict[str, npt.NDArray[np.int64]] = {}
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        for name in sorted(archive.files):
            counts = np.asarray(archive[name], dtype=np.int64)
            counts.setflags(write=False)
            traces[name] = counts
    shipped_cache[str(path)] = traces
    return dict(traces)


def archive_bytes(traces: Mapping[str, npt.NDArray[np.int64]]) -> bytes:
    """The ``.npz`` archive of ``traces`` (deflated, members sorted and dated
    ``ARCHIVE_DATE``): the same traces always give the same bytes."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(traces):
            member = zipfile.ZipInfo(f"{name}.npy", date_time=ARCHIVE_DATE)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            array = io.BytesIO()
            np.lib.format.write_array(array, np.ascontiguousarray(traces[name], dtype=np.int64))
            archive.writestr(member, array.getvalue(), compresslevel=9)
    return buffer.getvalue()


def counts_from_json_folder(folder: Path) -> dict[str, npt.NDArray[np.int64]]:
    """Every ``*.json`` trace of ``folder`` as its full int64 ``logical_count`` matrix.

    ValueError when a file is not a trace or a count is not a non-negative integer
    (the shipped form stores integers)."""
    import numpy as np

    from properties.workloads import read_trace_rows

    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"{folder} holds no *.json trace files")
    traces: dict[str, npt.NDArray[np.int64]] = {}
    for file in files:
        rows = read_trace_rows(file)
        counts = rows.astype(np.int64)
        if not np.array_equal(counts, rows) or rows.max() >= 2**53:
            raise ValueError(f"{file}: the counts must be integers below 2**53 to be shipped")
        traces[file.stem] = counts
    return traces


def write_shipped(folder: Path, out: Path = DATA_DIR) -> tuple[Path, str]:
    """Write ``deepseek-v3-sglang.npz`` and its line in ``SHA256SUMS`` under ``out``
    from the JSON traces in ``folder``; the archive's path and SHA-256."""
    content = archive_bytes(counts_from_json_folder(folder))
    digest = hashlib.sha256(content).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    (out / SHIPPED_NAME).write_bytes(content)
    (out / "SHA256SUMS").write_text(f"{digest}  {SHIPPED_NAME}\n", encoding="utf-8")
    return out / SHIPPED_NAME, digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m properties.traces",
        description="Regenerate the shipped traces (properties/data/deepseek-v3-sglang.npz "
        "and SHA256SUMS) from the folder of JSON trace files.",
    )
    parser.add_argument("folder", help="folder of the *.json traces (deepseek-v3-sglang/)")
    parser.add_argument("--out", default=str(DATA_DIR), help=f"default {DATA_DIR}")
    args = parser.parse_args(argv)
    try:
        path, digest = write_shipped(Path(args.folder), Path(args.out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size} bytes), SHA-256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
