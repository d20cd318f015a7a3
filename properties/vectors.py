"""Test vectors: instances with their proven answers, for implementations in any language.

A tier file is JSON: ``{"manifest": {...}, "vectors": [...]}``. Each vector is an
instance in the ``eplb-spec solve`` format (format 1) plus ``"expected"``: the status,
and the objective and bound as exact fractions (``"15/2"``) and floats. The manifest
names the format version, the generator (this module, its seed) and the solver version.
Vectors are drawn from a seeded generator, so a tier is reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oracle.cpsat import SOLVER_NAME
from oracle.instances import solve_instance
from oracle.result import SolveResult

VECTOR_FORMAT = 1
TIERS = ("small", "medium", "large")


def weights(rng: random.Random, count: int, top: int) -> list[int]:
    style = rng.choice(("uniform", "ties", "zeros", "dominant"))
    if style == "ties":
        return [rng.choice((top // 3, top // 2)) for _ in range(count)]
    if style == "zeros":
        return [rng.randint(0, top) if rng.random() < 0.6 else 0 for _ in range(count)]
    values = [rng.randint(0, top // 20 + 1) for _ in range(count)]
    if style == "dominant":
        values[rng.randrange(count)] = top
        return values
    return [rng.randint(0, top) for _ in range(count)]


def instance_makers(tier: str) -> list[Callable[[random.Random], dict[str, Any]]]:
    size = {"small": 0, "medium": 1, "large": 2}[tier]
    top = (100, 2**16, 2**24)[size]

    def replication(rng: random.Random) -> dict[str, Any]:
        n = rng.randint(1, (5, 32, 256)[size])
        return {
            "problem": "replication",
            "weights": weights(rng, n, top),
            "num_slots": n + rng.randint(0, n),
        }

    def packing(rng: random.Random) -> dict[str, Any]:
        packs = rng.choice((1, 2, 3) if size == 0 else (2, 4))
        cap = rng.randint(1, (8 // packs, 4, 5)[size] if size == 0 else (4, 5)[size - 1])
        n = packs * cap
        document: dict[str, Any] = {
            "problem": "packing",
            "weights": weights(rng, n, top),
            "num_packs": packs,
        }
        if rng.random() < 0.3:
            document["labels"] = [rng.randrange(max(1, n // 2)) for _ in range(n)]
        return document

    def joint(rng: random.Random) -> dict[str, Any]:
        packs = rng.choice((1, 2, 3) if size == 0 else (2, 4))
        n = rng.randint(1, (4, 8, 10)[size])
        slots = packs * max(-(-n // packs), rng.randint(1, (6, 12, 12)[size] // packs))
        return {
            "problem": "joint",
            "weights": weights(rng, n, top),
            "num_slots": slots,
            "num_packs": packs,
            "distinct": rng.random() < 0.3,
        }

    def layer(rng: random.Random) -> dict[str, Any]:
        nodes = rng.choice((1, 2))
        groups = nodes * rng.choice((1, 2)) if rng.random() < 0.7 else nodes + 1
        hierarchical = groups % nodes == 0
        group_size = rng.randint(1, 2)
        experts = groups * group_size if hierarchical else rng.randint(2, 5)
        gpus = (nodes if hierarchical else 1) * rng.randint(1, 2)
        replicas = gpus * max(-(-experts // gpus), rng.randint(1, 3))
        return {
            "problem": "layer",
            "weights": weights(rng, experts, top),
            "num_replicas": replicas,
            "num_groups": groups,
            "num_nodes": nodes,
            "num_gpus": gpus,
        }

    makers: list[Callable[[random.Random], dict[str, Any]]] = [replication, packing, joint]
    return [*makers, layer] if size == 0 else makers


def expected(result: SolveResult) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "objective": None if result.objective is None else str(result.objective),
        "bound": str(result.bound),
        "objective_float": None if result.objective is None else float(result.objective),
    }


def generate_tier(tier: str, count: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(f"{tier}-{seed}")
    makers = instance_makers(tier)
    vectors = []
    for index in range(count):
        document = makers[index % len(makers)](rng)
        document = {"format": 1, **document, "time_limit_s": 60.0}
        vectors.append({**document, "expected": expected(solve_instance(document))})
    return {
        "manifest": {
            "format": VECTOR_FORMAT,
            "tier": tier,
            "count": len(vectors),
            "generator": f"properties.vectors seed={seed}",
            "solver": SOLVER_NAME,
            "instance_format": "eplb-spec solve format 1 (see oracle/instances.py)",
        },
        "vectors": vectors,
    }


def check_vector(vector: dict[str, Any]) -> str | None:
    """Solve a vector again; why it no longer holds, or None."""
    instance = {k: v for k, v in vector.items() if k != "expected"}
    got = expected(solve_instance(instance))
    want = vector["expected"]
    if got["status"] != want["status"]:
        return f"status {got['status']}, expected {want['status']}"
    if want["status"] == "OPTIMAL" and got["objective"] != want["objective"]:
        return f"objective {got['objective']}, expected {want['objective']}"
    return None


def write_tiers(out: Path, tiers: list[str], counts: dict[str, int]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tier in tiers:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        path = out / f"{tier}.json"
        path.write_text(json.dumps(generate_tier(tier, counts[tier]), indent=1) + "\n")
        written.append(path)
    return written
