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
split is tried, each node solved exactly); its objective is the least peak GPU load.

``format`` defaults to 1; ``labels`` and ``distinct`` are optional; ``time_limit_s``
(default 10) and ``seed`` (default 0) set the solver. Weights are non-negative numbers.
Unknown keys are an error, so that a typo does not silently change the question.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oracle.cpsat import DEFAULT_SEED, DEFAULT_TIME_LIMIT_S, SolverSettings
from oracle.joint import solve_joint
from oracle.packing import solve_packing
from oracle.pipeline import optimal_layer
from oracle.replication import solve_replication
from oracle.result import SolveResult
from spec.problem import BalancingProblem

FORMAT_VERSION = 1
COMMON_KEYS = {"format", "problem", "weights", "time_limit_s", "seed"}
PROBLEM_KEYS = {
    "replication": ({"num_slots"}, set()),
    "packing": ({"num_packs"}, {"labels"}),
    "joint": ({"num_slots", "num_packs"}, {"distinct"}),
    "layer": ({"num_replicas", "num_groups", "num_nodes", "num_gpus"}, set()),
}


def read_instance(path: str | Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: an instance is a JSON object")
    return document


def solve_instance(document: dict[str, Any]) -> SolveResult:
    """Validate an instance document and solve it."""
    version = document.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
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
        raise TypeError("weights must be a list of numbers")
    settings = SolverSettings(
        time_limit_s=float(document.get("time_limit_s", DEFAULT_TIME_LIMIT_S)),
        seed=int(document.get("seed", DEFAULT_SEED)),
    )
    if problem == "replication":
        return solve_replication(weights, document["num_slots"])
    if problem == "layer":
        cluster = [document[k] for k in ("num_replicas", "num_groups", "num_nodes", "num_gpus")]
        layer_problem = BalancingProblem([weights], *cluster)
        return optimal_layer(layer_problem, 0, settings).result
    if problem == "packing":
        labels = document.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise TypeError("labels must be a list of integers")
        return solve_packing(weights, document["num_packs"], labels, settings)
    distinct = document.get("distinct", False)
    if not isinstance(distinct, bool):
        raise TypeError(f"distinct must be true or false, got {distinct!r}")
    return solve_joint(weights, document["num_slots"], document["num_packs"], distinct, settings)
