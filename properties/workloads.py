"""Workloads: the real DeepSeek-V3/R1 expert-load traces, or a generated stand-in.

The traces are not part of this repository. They are looked up, in order, at the path
the user gives, at ``$EPLB_SPEC_DATA``, and at ``../shared/data/deepseek-v3-sglang``
beside the current directory or beside this checkout. Without them, callers get a
generated workload of the same shape and are told so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from oracle.exact import Unrepresentable, read_json
from spec.problem import loads_as_float64

FloatArray = npt.NDArray[np.float64]

TRACE_SUBDIR = Path("shared") / "data" / "deepseek-v3-sglang"
DATA_ENV = "EPLB_SPEC_DATA"

# The cluster the traces are studied on: (num_replicas, num_groups, num_nodes, num_gpus).
TRACE_CLUSTER = (288, 8, 4, 32)
# A trace file is read whole; the real ones are about 150 kB.
MAX_TRACE_BYTES = 64 * 2**20
# DeepSeek-V3: 61 layers, the first 3 dense; 58 MoE layers of 256 routed experts.
TRACE_SHAPE = (58, 256)


@dataclass(frozen=True)
class Workload:
    name: str
    loads: FloatArray
    generated: bool


def find_trace_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of trace files, or None when none is found.

    An explicit path (argument or ``$EPLB_SPEC_DATA``) that holds no ``*.json`` file is
    an error, not a silent fallback.
    """
    given = explicit if explicit is not None else os.environ.get(DATA_ENV)
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


TraceKey = tuple[str, int, int]  # resolved path, size, modification time (ns)
loaded_traces: dict[TraceKey, FloatArray] = {}


def load_trace(path: Path) -> FloatArray:
    """A trace's ``[layers, experts]`` loads, without the leading all-zero (dense) layers.

    The file is JSON (at most ``MAX_TRACE_BYTES``) with a ``"logical_count"`` key holding
    one list of per-expert token counts for each layer. Every count must be a finite,
    non-negative number (no strings, booleans, NaN or values beyond float64), the rows
    equally long, and each layer's sum within the float64 range. A file is read once per
    process while it is unchanged (a read-only array is kept and returned).
    """
    try:
        status = path.stat()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
    if key not in loaded_traces:
        loads = read_trace(path)
        loads.setflags(write=False)
        loaded_traces[key] = loads
    return loaded_traces[key]


def read_trace(path: Path) -> FloatArray:
    document = read_json(path, MAX_TRACE_BYTES)
    rows = document.get("logical_count") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"{path}: not a trace file with a 'logical_count' matrix")
    for layer, row in enumerate(rows):
        for expert, value in enumerate(row):
            if isinstance(value, Unrepresentable):
                raise ValueError(f"{path}: logical_count[{layer}][{expert}] = {value.problem()}")
    loads = loads_as_float64(rows, f"{path}: logical_count")
    dense = 0
    while dense < loads.shape[0] - 1 and not loads[dense].any():
        dense += 1
    return loads[dense:]


def generated_loads(
    seed: int = 0, num_layers: int = TRACE_SHAPE[0], num_experts: int = TRACE_SHAPE[1]
) -> FloatArray:
    """A skewed integer workload shaped like the traces (log-normal token counts)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(1e4, 1e5, size=(num_layers, 1))
    result: FloatArray = np.round(scale * rng.lognormal(0.0, 1.0, size=(num_layers, num_experts)))
    return result


def default_workloads(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[Workload], str]:
    """The real traces if found, else one generated workload; and a line saying which."""
    found = find_trace_dir(data_dir)
    if found is None:
        workload = Workload("generated-lognormal-seed0", generated_loads(), generated=True)
        note = (
            "real traces not found (looked for ../shared/data/deepseek-v3-sglang; pass "
            f"--data DIR or set {DATA_ENV}): using a GENERATED workload of the same shape "
            f"{TRACE_SHAPE}"
        )
        return [workload], note
    files = sorted(found.glob("*.json"))
    workloads = [Workload(f.stem, load_trace(f), generated=False) for f in files]
    return workloads, f"{len(workloads)} real traces from {found}"
