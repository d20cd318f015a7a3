"""Workloads: the real DeepSeek-V3/R1 expert-load traces, or a generated stand-in.

``default_workloads`` reads the folder of JSON traces the user gives (``--data DIR``) or
``$EPLB_SPEC_DATA`` names; without either, the 12 traces shipped with the package
(``properties.traces``). ``generated`` in place of a folder asks for the generated
log-normal stand-in of the same shape, and it is only ever used when asked for.

``find_trace_dir`` finds a folder of the JSON files themselves (for what needs their raw
rows): the given one, or ``../shared/data/deepseek-v3-sglang`` beside the current
directory or beside this checkout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from oracle.exact import Unrepresentable, read_json
from properties.traces import DATA_ENV as DATA_ENV
from properties.traces import GENERATED as GENERATED
from properties.traces import SHIPPED_TRACES, shipped_trace_counts
from properties.traces import TRACE_CLUSTER as TRACE_CLUSTER
from properties.traces import TRACE_SHAPE as TRACE_SHAPE
from properties.traces import TRACE_SUBDIR as TRACE_SUBDIR
from properties.traces import asks_for_generated as asks_for_generated
from properties.traces import find_trace_dir as find_trace_dir
from spec.problem import loads_as_float64

FloatArray = npt.NDArray[np.float64]


# A trace file is read whole; the real ones are about 150 kB.
MAX_TRACE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Workload:
    name: str
    loads: FloatArray
    generated: bool


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
    """The file's loads without the leading all-zero (dense) layers."""
    return without_dense_layers(read_trace_rows(path))


def without_dense_layers(loads: FloatArray) -> FloatArray:
    """``loads`` from its first layer that is not all zero (at least its last layer)."""
    dense = 0
    while dense < loads.shape[0] - 1 and not loads[dense].any():
        dense += 1
    return loads[dense:]


def read_trace_rows(path: Path) -> FloatArray:
    """The file's whole ``logical_count`` matrix in float64, checked (``load_trace``)."""
    document = read_json(path, MAX_TRACE_BYTES)
    rows = document.get("logical_count") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"{path}: not a trace file with a 'logical_count' matrix")
    for layer, row in enumerate(rows):
        for expert, value in enumerate(row):
            if isinstance(value, Unrepresentable):
                raise ValueError(f"{path}: logical_count[{layer}][{expert}] = {value.problem()}")
    return loads_as_float64(rows, f"{path}: logical_count")


def generated_loads(
    seed: int = 0, num_layers: int = TRACE_SHAPE[0], num_experts: int = TRACE_SHAPE[1]
) -> FloatArray:
    """A skewed integer workload shaped like the traces (log-normal token counts)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(1e4, 1e5, size=(num_layers, 1))
    result: FloatArray = np.round(scale * rng.lognormal(0.0, 1.0, size=(num_layers, num_experts)))
    return result


def shipped_workloads() -> list[Workload]:
    """The 12 traces shipped with the package, dense layers dropped, as float64 loads."""
    workloads = []
    for name, counts in shipped_trace_counts().items():
        loads = without_dense_layers(counts.astype(np.float64))
        loads.setflags(write=False)
        workloads.append(Workload(name, loads, generated=False))
    return workloads


def default_workloads(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[Workload], str]:
    """The traces in ``data_dir`` (or ``$EPLB_SPEC_DATA``), else the shipped ones; the
    generated stand-in when either is ``generated``; and a line saying which."""
    if asks_for_generated(data_dir):
        workload = Workload("generated-lognormal-seed0", generated_loads(), generated=True)
        note = (
            f"a GENERATED workload of the trace shape {TRACE_SHAPE}, as asked "
            f"(--data {GENERATED}); without it the real traces are used"
        )
        return [workload], note
    given = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not given:
        workloads = shipped_workloads()
        return workloads, f"{len(workloads)} real traces shipped with eplb-spec ({SHIPPED_TRACES})"
    found = find_trace_dir(given)
    assert found is not None  # a given folder is found or refused
    files = sorted(found.glob("*.json"))
    workloads = [Workload(f.stem, load_trace(f), generated=False) for f in files]
    return workloads, f"{len(workloads)} real traces from {found}"
