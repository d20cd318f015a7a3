"""Instance files for ``eplb-spec solve`` (format 1).

```
{"format": 1, "problem": "replication", "weights": [...], "num_slots": S}
{"format": 1, "problem": "packing", "weights": [...], "num_packs": G, "labels": [...]}
{"format": 1, "problem": "joint", "weights": [...], "num_slots": S, "num_packs": G,
 "distinct": false}
{"format": 1, "problem": "layer", "weights": [...], "num_replicas": R, "num_groups": Gr,
 "num_nodes": N, "num_gpus": P}
```

``layer`` is one layer of a whole ``rebalance_experts`` problem (tiny sizes: every group
split the contract allows is tried, each node solved exactly); its objective is the
least peak GPU load. Its weights stay exact (integers above 2**53 included).

``format`` defaults to 1; ``labels`` and ``distinct`` are optional; ``time_limit_s``
(default 10, a positive finite number: it bounds the whole solve) and ``seed`` (default
0, an int32) set the solver. Weights are non-negative numbers within the float64 range
whose sum is too. Unknown keys are an error, so that a typo does not silently change the
question; so are booleans or strings where numbers belong, NaN, infinities, numbers
beyond the float64 range (``1e400``, a 400-digit integer), nesting deeper than an
instance's, and files over ``MAX_INSTANCE_BYTES``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from oracle.cpsat import (
    DEFAULT_SEED,
    DEFAULT_TIME_LIMIT_S,
    SolverSettings,
    require_seconds,
    require_seed,
)
from oracle.exact import (
    FLOAT64_MAX,
    Unrepresentable,
    as_fractions,
    describe_number,
    read_json,
)
from oracle.joint import solve_joint
from oracle.packing import solve_packing
from oracle.pipeline import LayerAnswer, optimal_layer
from oracle.replication import solve_replication
from oracle.result import SolveResult, Status
from spec.placement import placement_from_phy2log
from spec.problem import BalancingProblem

FORMAT_VERSION = 1
COMMON_KEYS = {"format", "problem", "weights", "time_limit_s", "seed"}
PROBLEM_KEYS = {
    "replication": ({"num_slots"}, set()),
    "packing": ({"num_packs"}, {"labels"}),
    "joint": ({"num_slots", "num_packs"}, {"distinct"}),
    "layer": ({"num_replicas", "num_groups", "num_nodes", "num_gpus"}, set()),
}
# An instance is an object of numbers and lists of numbers: two levels. Files are read
# whole, so their size is bounded before anything is parsed.
MAX_INSTANCE_BYTES = 1_000_000
MAX_DEPTH = 2


def check_numbers(document: Any) -> None:
    """Walk the document (without recursion): every number finite and within the
    float64 range, nesting at most ``MAX_DEPTH`` levels."""
    stack: list[tuple[str, Any, int]] = [("", document, 0)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ValueError(
                    f"{where or 'the instance'}: nested deeper than an instance "
                    f"(an object of numbers and lists of numbers)"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                path = f"{where}[{key}]" if isinstance(value, list) else str(key)
                stack.append((path, item, depth + 1))
        elif isinstance(value, Unrepresentable):
            raise ValueError(f"{where} = {value.problem()}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > FLOAT64_MAX:
            raise ValueError(f"{where} = {describe_number(value)} is beyond the float64 range")


def read_instance(path: str | Path) -> dict[str, Any]:
    """Read and check an instance file (at most ``MAX_INSTANCE_BYTES``)."""
    document = read_json(path, MAX_INSTANCE_BYTES)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: an instance is a JSON object")
    check_numbers(document)
    return document


def solve_instance(document: dict[str, Any]) -> SolveResult:
    """Validate an instance document and solve it."""
    return solve_instance_answer(document)[0]


def solve_instance_answer(document: dict[str, Any]) -> tuple[SolveResult, LayerAnswer | None]:
    """Validate an instance document and solve it; a ``layer`` instance also gives its
    ``LayerAnswer`` (the placement behind the objective)."""
    check_numbers(document)
    version = document.get("format", FORMAT_VERSION)
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ValueError(
            f"format {version!r} is not supported (this reads format {FORMAT_VERSION})"
        )
    problem = document.get("problem")
    if problem not in PROBLEM_KEYS:
        raise ValueError(f"problem must be one of {sorted(PROBLEM_KEYS)}, got {problem!r}")
    required, optional = PROBLEM_KEYS[problem]
    missing = sorted((required | {"weights"}) - document.keys())
    if missing:
        raise ValueError(f"{problem} instance is missing {missing}")
    unknown = sorted(document.keys() - COMMON_KEYS - required - optional)
    if unknown:
        raise ValueError(f"unknown keys {unknown} for a {problem} instance")
    weights = document["weights"]
    if not isinstance(weights, list):
        raise TypeError(f"weights must be a list of numbers, got {type(weights).__name__}")
    exact = as_fractions(weights)
    settings = SolverSettings(
        time_limit_s=require_seconds(
            document.get("time_limit_s", DEFAULT_TIME_LIMIT_S), "time_limit_s"
        ),
        seed=require_seed(document.get("seed", DEFAULT_SEED)),
    )
    if problem == "replication":
        return solve_replication(exact, document["num_slots"]), None
    if problem == "layer":
        layer_problem = BalancingProblem([weights], *layer_cluster(document))
        answer = optimal_layer(layer_problem, 0, settings, weights=exact)
        return answer.result, answer
    if problem == "packing":
        labels = document.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise TypeError(f"labels must be a list of integers, got {type(labels).__name__}")
        return solve_packing(exact, document["num_packs"], labels, settings), None
    distinct = document.get("distinct", False)
    if not isinstance(distinct, bool):
        raise TypeError(f"distinct must be true or false, got {distinct!r}")
    joint = solve_joint(exact, document["num_slots"], document["num_packs"], distinct, settings)
    return joint, None


LAYER_CLUSTER_KEYS = ("num_replicas", "num_groups", "num_nodes", "num_gpus")


def layer_cluster(document: dict[str, Any]) -> list[Any]:
    return [document[k] for k in LAYER_CLUSTER_KEYS]


def solution_document(
    document: dict[str, Any], result: SolveResult, answer: LayerAnswer | None
) -> dict[str, Any]:
    """What ``eplb-spec solve --out`` writes: the result, and for a ``layer`` instance
    the placement behind its objective in DeepSeek's layout (one layer: ``phy2log``
    ``[1, R]``, ``log2phy`` ``[1, E, R - E + 1]``, ``logcnt`` ``[1, E]``; null when no
    placement was found). ``proven_optimal`` is true only for ``OPTIMAL``."""
    written: dict[str, Any] = {
        "format": 1,
        "problem": document.get("problem"),
        "proven_optimal": result.status is Status.OPTIMAL,
        "result": result.to_json(),
    }
    if document.get("problem") != "layer":
        return written
    cluster = dict(zip(LAYER_CLUSTER_KEYS, layer_cluster(document), strict=True))
    written["cluster"] = cluster
    written["split"] = None if answer is None else [list(block) for block in answer.split]
    if answer is None or answer.phy2log is None:
        written.update(phy2log=None, log2phy=None, logcnt=None)
        return written
    phy2log = np.asarray([answer.phy2log], dtype=np.int64)
    log2phy, logcnt = placement_from_phy2log(phy2log, len(document["weights"]))
    written.update(phy2log=phy2log.tolist(), log2phy=log2phy.tolist(), logcnt=logcnt.tolist())
    return written


def write_solution(
    path: str | Path, document: dict[str, Any], result: SolveResult, answer: LayerAnswer | None
) -> None:
    """Write ``solution_document`` as JSON, or, for a path ending in ``.npz``, as NumPy
    arrays (``phy2log``, ``log2phy``, ``logcnt`` when there is a placement, and
    ``status``, ``objective_exact``, ``bound_exact`` as strings)."""
    written = solution_document(document, result, answer)
    target = Path(path)
    if target.suffix != ".npz":
        target.write_text(json.dumps(written, indent=2) + "\n")
        return
    arrays: dict[str, Any] = {
        "status": np.asarray(result.status.value),
        "objective_exact": np.asarray(str(result.objective)),
        "bound_exact": np.asarray(str(result.bound)),
    }
    for key in ("phy2log", "log2phy", "logcnt"):
        if written.get(key) is not None:
            arrays[key] = np.asarray(written[key], dtype=np.int64)
    with target.open("wb") as handle:
        np.savez(handle, **arrays)
