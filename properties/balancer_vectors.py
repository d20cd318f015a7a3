"""Balancer vectors: inputs of ``rebalance_experts`` with the reference's exact outputs.

A port of the reference (C++, CUDA, another language) checks itself against these with
nothing but a JSON reader; ``vectors/balancer/README.md`` describes the format. Tiers:

- ``handpicked``: named cases, each pinning a tie-break or an edge case that
  ``docs/specification.md`` names, with a one-line reason and the features it exercises
  (checked by the tests, so a case cannot silently stop exercising them);
- ``small``: seeded generated cases of mixed shapes and load styles;
- ``traces``: a few layers of the real DeepSeek-V3 traces, chosen at generation time
  (the manifest names the file and layer of each).

Every vector holds the outputs of the ``refined`` reference with each combination of its
refinements, and of the ``baseline``; an output equal to an earlier one is stored as
``{"same_as": name}``. Regenerate with ``eplb-spec balancer-vectors --out
vectors/balancer``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from impl.balancer import BalanceResult, balance
from impl.explain import explain
from properties.fidelity import REFERENCES, Reference, ties_met
from properties.traces import asks_for_generated, shipped_trace_counts
from properties.workloads import TRACE_CLUSTER, find_trace_dir, load_trace, without_dense_layers
from spec.objectives import gpus_with_duplicate_replicas
from spec.problem import BalancingProblem, Policy

FORMAT = "eplb-spec balancer vectors"
FORMAT_VERSION = 2  # 2: the refined variant is named "refined" (it was "seed")
TIERS = ("handpicked", "small", "traces")
SMALL_COUNT = 80
SMALL_SEED = 0
COMMAND = "eplb-spec balancer-vectors --out vectors/balancer"
REFERENCE_FILES = ("impl/steps.py", "impl/balancer.py", "spec/refinements.py")
ROOT = Path(__file__).resolve().parents[1]

FloatArray = npt.NDArray[np.float64]
Cluster = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------
# Hand-picked cases.


@dataclass(frozen=True)
class HandPicked:
    """A named case: why it is here, and the features it must exercise (``exercised``)."""

    name: str
    reason: str
    weight: list[list[float]]
    cluster: Cluster
    exercises: tuple[str, ...]


EXERCISES = {
    "hierarchical": "the hierarchical policy runs (Gr % N == 0)",
    "global": "the global policy runs (Gr % N != 0): one group, one node",
    "one-group-per-node": "Gr == N: group g goes to node g without packing",
    "equal-group-loads": "two groups of equal load are packed onto nodes (lower index first)",
    "equal-node-loads": "a group goes to one of two non-empty nodes of equal load (lower index)",
    "zeros": "a layer holds zero loads among non-zero ones",
    "all-zero-row": "a (layer, node) row has no load: the spare slots go to the first experts",
    "one-slot-per-expert": "R == E: every expert gets one replica",
    "cap-1": "R == P: one slot per GPU, replica j goes to GPU j",
    "experts-equal-gpus": "E == P: as many experts as GPUs",
    "single-expert": "E == 1: every slot holds the one expert",
    "top-up": "water-filling tops up after the bisection",
    "equal-top-up-loads": "a top-up round chooses among experts of equal w/c (lower index)",
    "equal-replica-loads": "the diverse greedy visits replicas of two experts of equal load",
    "equal-gpu-loads": "the diverse greedy chooses between two GPUs of equal load by count",
    "equal-gpu-keys": "the diverse greedy chooses between two non-empty GPUs of equal "
    "(held, load, count) by index",
    "refinement-b": "refinement B swaps two replicas",
    "refinement-b-duplicate": "refinement B's swap puts two replicas of one expert on a GPU",
    "baseline-equal-replica-loads": "the baseline's replication chooses among equal w/c",
    "baseline-equal-packing-loads": "the baseline's packing visits replicas of two experts "
    "of equal load (the tie unstable sorts break either way)",
    "float-loads": "loads that are not integers (exact through their hex form)",
    "above-float32": "loads or group sums above 2**24, where float32 is no longer exact",
    "float32-group-tie": "two group loads differ by less than float32 resolves",
    "two-expert-rows": "a (layer, node) row of two experts, the only rows where refinement A "
    "can act",
}


HANDPICKED: list[HandPicked] = [
    HandPicked(
        "readme-example",
        "the README's example: two layers, hierarchical, two groups per node",
        [
            [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
            [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
        ],
        (16, 4, 2, 8),
        ("hierarchical",),
    ),
    HandPicked(
        "equal-group-loads",
        "three groups of load 4: visited lower index first; the third meets two nodes of "
        "load 4 and takes node 0",
        [[3, 1, 2, 2, 4, 0, 1, 1]],
        (10, 4, 2, 2),
        ("hierarchical", "equal-group-loads", "equal-node-loads"),
    ),
    HandPicked(
        "one-group-per-node",
        "Gr == N: group g goes to node g whatever the loads (the heavier group is on node 1)",
        [[5, 1, 7, 2, 9, 3]],
        (8, 2, 2, 2),
        ("hierarchical", "one-group-per-node"),
    ),
    HandPicked(
        "global-fallback",
        "Gr % N != 0 (3 groups, 2 nodes): the global policy packs all experts as one node",
        [[5, 1, 7, 2, 9, 3]],
        (8, 3, 2, 4),
        ("global",),
    ),
    HandPicked(
        "global-groups-not-dividing-experts",
        "the global policy ignores groups: 5 experts in 3 groups is valid there",
        [[4, 0, 9, 1, 3]],
        (10, 3, 2, 5),
        ("global", "zeros"),
    ),
    HandPicked(
        "zeros",
        "zero loads among non-zero ones: idle experts keep one replica, their replicas weigh 0",
        [[0, 5, 0, 3, 0, 0, 7, 1]],
        (12, 2, 2, 4),
        ("hierarchical", "zeros"),
    ),
    HandPicked(
        "all-zero-layer",
        "a layer with no load at all: each row spreads its spare slots over the first "
        "experts; the second layer is ordinary",
        [[0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]],
        (10, 2, 2, 2),
        ("hierarchical", "all-zero-row"),
    ),
    HandPicked(
        "one-slot-per-expert",
        "R == E: water-filling gives every expert one replica, no replication at all",
        [[7, 3, 9, 1, 4, 4, 2, 8]],
        (8, 4, 2, 4),
        ("hierarchical", "one-slot-per-expert"),
    ),
    HandPicked(
        "one-slot-per-gpu",
        "R == P (cap == 1): replica j of the layout goes to GPU j, no greedy, no swap",
        [[10, 1, 6, 3]],
        (8, 2, 2, 8),
        ("hierarchical", "cap-1"),
    ),
    HandPicked(
        "experts-equal-gpus",
        "E == P: one expert per GPU on average, two slots each",
        [[9, 1, 4, 4]],
        (8, 1, 1, 4),
        ("hierarchical", "experts-equal-gpus"),
    ),
    HandPicked(
        "single-expert",
        "E == 1: every slot holds the one expert",
        [[5]],
        (4, 1, 1, 2),
        ("hierarchical", "single-expert"),
    ),
    HandPicked(
        "top-up-tie",
        "the bisection stops at [1, 1, 1, 1]; the top-up serves two of three experts of "
        "equal w/c = 4: experts 0 and 1",
        [[4, 4, 4, 1]],
        (6, 1, 1, 2),
        ("top-up", "equal-top-up-loads"),
    ),
    HandPicked(
        "equal-gpu-loads-and-counts",
        "replicas of equal load (3, 3) and zero-load replicas: the diverse greedy decides "
        "between GPUs of equal load by count, then by index",
        [[2, 6, 0, 0, 0, 0]],
        (8, 1, 1, 2),
        ("equal-replica-loads", "equal-gpu-loads", "equal-gpu-keys"),
    ),
    HandPicked(
        "refinement-b-swap",
        "refinement B swaps a replica of the heaviest GPU with one of the lightest (no "
        "duplicate created)",
        [[6, 17, 2, 8]],
        (6, 1, 1, 2),
        ("refinement-b",),
    ),
    HandPicked(
        "refinement-b-duplicate",
        "refinement B's swap puts both replicas of expert 0 on one GPU, which the greedy "
        "had avoided",
        [[2, 2, 0]],
        (4, 1, 1, 2),
        ("refinement-b", "refinement-b-duplicate", "top-up", "equal-top-up-loads"),
    ),
    HandPicked(
        "two-expert-rows",
        "rows of two experts, the only rows where refinement A can move a replica; after "
        "water-filling it never does (docs/ANSWERS.md, question 1), so refined-without-a "
        "equals refined",
        [[7, 2, 5, 5], [1, 30, 2, 2]],
        (8, 2, 2, 4),
        ("hierarchical", "two-expert-rows"),
    ),
    HandPicked(
        "tiny-loads",
        "loads below 2**-40 that the bisection cannot resolve: the top-up serves both "
        "experts ([2, 2], not the optimal [1, 3]) and refinement A's 1e-9 margin keeps it",
        [[0.0, 6.4e-150]],
        (4, 1, 1, 2),
        ("float-loads", "top-up", "zeros"),
    ),
    HandPicked(
        "float-loads",
        "loads that are not integers, read exactly from weight_hex",
        [[0.1, 0.2, 0.30000000000000004, 1e-300, 1.5e10, 2.5]],
        (9, 1, 1, 3),
        ("float-loads",),
    ),
    HandPicked(
        "float32-group-tie",
        "group loads 2**25 + 1 and 2**25 are one float32: a port that sums in float32 "
        "(DeepSeek's weight.float()) packs the groups onto nodes differently",
        [[2**25 + 1, 2**25, 3, 2]],
        (6, 4, 2, 2),
        ("hierarchical", "float32-group-tie", "above-float32"),
    ),
    HandPicked(
        "above-float32",
        "loads up to 2**40, not exact in float32: the reference reads them in float64",
        [[2**24 + 1, 2**30 + 3, 17, 2**40]],
        (8, 2, 2, 4),
        ("hierarchical", "above-float32"),
    ),
    HandPicked(
        "baseline-replication-tie",
        "the baseline's greedy meets equal w/c twice (6 and 6, then 3, 3 and 3) and "
        "serves the lower index",
        [[6, 6, 3]],
        (6, 1, 1, 2),
        ("baseline-equal-replica-loads",),
    ),
    HandPicked(
        "baseline-equal-packing-loads",
        "two experts of equal load: the baseline's packing visits the lower index first "
        "(where an unstable sort, as vLLM's and DeepSeek's, may not)",
        [[5, 5, 3, 1]],
        (4, 1, 1, 2),
        ("baseline-equal-packing-loads", "equal-replica-loads", "one-slot-per-expert"),
    ),
]


def exercised(problem: BalancingProblem) -> set[str]:
    """The features of ``EXERCISES`` that the reference meets on ``problem``."""
    tags = {problem.policy.value}
    if problem.policy is Policy.HIERARCHICAL and problem.num_groups == problem.num_nodes > 1:
        tags.add("one-group-per-node")
    if problem.num_replicas == problem.num_experts:
        tags.add("one-slot-per-expert")
    if problem.num_replicas == problem.num_gpus:
        tags.add("cap-1")
    if problem.num_experts == problem.num_gpus:
        tags.add("experts-equal-gpus")
    if problem.num_experts == 1:
        tags.add("single-expert")
    loads = problem.loads
    if ((loads == 0).any(axis=1) & (loads > 0).any(axis=1)).any():
        tags.add("zeros")
    if (loads != np.round(loads)).any():
        tags.add("float-loads")
    traces = explain(problem)
    if (loads > 2**24).any() or any(max(t.group_loads) > 2**24 for t in traces):
        tags.add("above-float32")
    for trace in traces:
        ordered = sorted(trace.group_loads)
        if any(a != b and np.float32(a) == np.float32(b) for a, b in itertools.pairwise(ordered)):
            tags.add("float32-group-tie")
        for node in trace.nodes:
            slots = len(node.layout)
            if slots > len(node.loads) and not any(node.loads):
                tags.add("all-zero-row")
            if len(node.loads) == 2:
                tags.add("two-expert-rows")
            if node.bisected is not None and node.bisected != node.filled:
                tags.add("top-up")
            if node.counts_refined:
                tags.add("refinement-a")  # never met after water-filling (docs/ANSWERS.md)
            if node.replicas_swapped:
                tags.add("refinement-b")
                before = np.zeros(slots, dtype=np.int64)
                after = np.zeros(slots, dtype=np.int64)
                cap = slots // problem.gpus_per_node
                for j, label in enumerate(node.layout):
                    before[node.packed.pack[j] * cap + node.packed.rank[j]] = label
                    after[node.packing.pack[j] * cap + node.packing.rank[j]] = label
                gpus = problem.gpus_per_node
                if (
                    gpus_with_duplicate_replicas(after[None, :], gpus).sum()
                    > gpus_with_duplicate_replicas(before[None, :], gpus).sum()
                ):
                    tags.add("refinement-b-duplicate")
    names = {
        "split:equal-item-weights": "equal-group-loads",
        "split:equal-pack-keys": "equal-node-loads",
        "counts:equal-top-up-loads": "equal-top-up-loads",
        "packing:equal-item-weights": "equal-replica-loads",
        "packing:equal-pack-loads": "equal-gpu-loads",
        "packing:equal-pack-keys": "equal-gpu-keys",
    }
    baseline_names = {
        "counts:equal-replica-loads": "baseline-equal-replica-loads",
        "packing:equal-item-weights": "baseline-equal-packing-loads",
        "packing:equal-replica-loads": "baseline-equal-replica-loads",
    }
    for layer in range(problem.num_layers):
        tags |= {names[t] for t in ties_met(problem, layer, "refined") if t in names}
        tags |= {
            baseline_names[t] for t in ties_met(problem, layer, "baseline") if t in baseline_names
        }
    return tags


# ---------------------------------------------------------------------------------------
# Encoding.


def exact_number(value: float) -> int | float:
    """A load as JSON: an integer when it is one (below 2**53), else the float itself
    (Python writes the shortest decimal that reads back to the same float64)."""
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def encode_weight(loads: FloatArray) -> dict[str, Any]:
    rows = [[exact_number(float(x)) for x in row] for row in loads]
    encoded: dict[str, Any] = {"weight": rows}
    if any(isinstance(x, float) for row in rows for x in row):
        encoded["weight_hex"] = [[float(x).hex() for x in row] for row in loads]
    return encoded


def decode_weight(vector: dict[str, Any]) -> FloatArray:
    """The float64 loads of a vector (from ``weight_hex`` when present; it must agree
    with ``weight``)."""
    numbers = np.asarray(vector["weight"], dtype=np.float64)
    if "weight_hex" not in vector:
        return numbers
    exact = np.asarray(
        [[float.fromhex(x) for x in row] for row in vector["weight_hex"]], dtype=np.float64
    )
    if not np.array_equal(exact, numbers):
        raise ValueError(f"vector {vector.get('name')!r}: weight and weight_hex disagree")
    return exact


def problem_of(vector: dict[str, Any]) -> BalancingProblem:
    return BalancingProblem(
        decode_weight(vector),
        vector["num_replicas"],
        vector["num_groups"],
        vector["num_nodes"],
        vector["num_gpus"],
    )


def encode_result(result: BalanceResult) -> dict[str, Any]:
    log2phy = [
        [[int(s) for s in table[e, : int(counts[e])]] for e in range(counts.shape[0])]
        for table, counts in zip(result.log2phy, result.logcnt, strict=True)
    ]
    return {
        "phy2log": result.phy2log.tolist(),
        "log2phy": log2phy,
        "logcnt": result.logcnt.tolist(),
        "counts_refined": result.counts_refined.tolist(),
        "replicas_swapped": result.replicas_swapped.tolist(),
    }


def run_reference(problem: BalancingProblem, reference: Reference, fast: bool) -> BalanceResult:
    return balance(
        problem,
        variant=reference.variant,
        refine_a=reference.refine_a,
        refine_b=reference.refine_b,
        fast=fast,
    )


def expected_outputs(problem: BalancingProblem, fast: bool = False) -> dict[str, Any]:
    """Every reference's output; one equal to an earlier one as ``{"same_as": name}``."""
    outputs: dict[str, Any] = {}
    for name, reference in REFERENCES.items():
        encoded = encode_result(run_reference(problem, reference, fast))
        same = next((k for k, v in outputs.items() if v == encoded), None)
        outputs[name] = encoded if same is None else {"same_as": same}
    return outputs


def make_vector(
    name: str, problem: BalancingProblem, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        **(extra or {}),
        **encode_weight(problem.loads),
        "num_replicas": problem.num_replicas,
        "num_groups": problem.num_groups,
        "num_nodes": problem.num_nodes,
        "num_gpus": problem.num_gpus,
        "policy": problem.policy.value,
        "log2phy_width": problem.log2phy_width,
        "expected": expected_outputs(problem),
    }


def resolved(expected: dict[str, Any], name: str) -> dict[str, Any]:
    """The output of reference ``name``, following ``same_as``."""
    output: dict[str, Any] = expected[name]
    while "same_as" in output:
        output = expected[output["same_as"]]
    return output


def check_vector(vector: dict[str, Any], *, fast: bool = False) -> list[str]:
    """Recompute a vector's outputs from the reference (``fast``: the compiled one);
    one line per output that no longer matches."""
    problem = problem_of(vector)
    mismatches = []
    for name, reference in REFERENCES.items():
        if name not in vector["expected"]:
            mismatches.append(f"{vector['name']}: no output for {name}")
            continue
        want = resolved(vector["expected"], name)
        got = encode_result(run_reference(problem, reference, fast))
        for key, value in got.items():
            if want.get(key) != value:
                mismatches.append(f"{vector['name']}: {name} {key} differs from the reference")
    return mismatches


# ---------------------------------------------------------------------------------------
# Tiers.


def manifest(tier: str, count: int, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tier": tier,
        "count": count,
        "generator": {"module": "properties.balancer_vectors", "command": COMMAND},
        "reference": {
            "distribution": f"eplb-spec {importlib.metadata.version('eplb-spec')}",
            "sha256": {
                path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest()
                for path in REFERENCE_FILES
            },
        },
        "outputs": {
            name: {"variant": r.variant, "refine_a": r.refine_a, "refine_b": r.refine_b}
            for name, r in REFERENCES.items()
        },
        "source": source,
    }


def handpicked_tier() -> dict[str, Any]:
    vectors = [
        make_vector(
            case.name,
            BalancingProblem(case.weight, *case.cluster),
            {"reason": case.reason, "exercises": list(case.exercises)},
        )
        for case in HANDPICKED
    ]
    source = {
        "kind": "hand-picked",
        "exercises": {tag: EXERCISES[tag] for tag in sorted(EXERCISES)},
    }
    return {"manifest": manifest("handpicked", len(vectors), source), "vectors": vectors}


def random_loads(rng: random.Random, count: int) -> list[float]:
    style = rng.choice(("small-integers", "integers", "ties", "zeros", "dominant", "floats"))
    if style == "small-integers":
        return [float(rng.randint(0, 6)) for _ in range(count)]
    if style == "integers":
        return [float(rng.randint(0, 2**20)) for _ in range(count)]
    if style == "ties":
        levels = (float(rng.randint(0, 50)), float(rng.randint(0, 50)))
        return [rng.choice(levels) for _ in range(count)]
    if style == "zeros":
        return [float(rng.randint(1, 100)) if rng.random() < 0.5 else 0.0 for _ in range(count)]
    if style == "dominant":
        values = [float(rng.randint(0, 10)) for _ in range(count)]
        values[rng.randrange(count)] = float(rng.randint(1000, 10**6))
        return values
    return [rng.uniform(0, 1000) for _ in range(count)]


def random_problem(rng: random.Random) -> BalancingProblem:
    if rng.random() < 0.6:
        nodes = rng.randint(1, 3)
        groups = nodes * rng.randint(1, 3)
        experts = groups * rng.randint(1, 4)
        gpus = nodes * rng.randint(1, 3)
    else:
        nodes = rng.randint(2, 4)
        groups = nodes * rng.randint(0, 2) + rng.randint(1, nodes - 1)
        experts = rng.randint(1, 16)
        gpus = rng.randint(1, 8)
    per_gpu = max(rng.randint(1, 4), -(-experts // gpus))
    layers = rng.randint(1, 2)
    loads = [random_loads(rng, experts) for _ in range(layers)]
    return BalancingProblem(loads, gpus * per_gpu, groups, nodes, gpus)


def small_tier(count: int = SMALL_COUNT, seed: int = SMALL_SEED) -> dict[str, Any]:
    rng = random.Random(f"balancer-small-{seed}")
    vectors = [make_vector(f"small-{i:03d}", random_problem(rng)) for i in range(count)]
    source = {
        "kind": "generated",
        "seed": seed,
        "rng": f"Python random.Random('balancer-small-{seed}')",
        "shapes": "up to 16 experts, 12 GPUs, 2 layers; both policies",
        "load_styles": "small integers, integers below 2**20, ties, zeros, one dominant "
        "expert, uniform floats in [0, 1000)",
    }
    return {"manifest": manifest("small", len(vectors), source), "vectors": vectors}


@dataclass(frozen=True)
class TracePick:
    why: str
    file: str
    layer: int  # MoE layer index (after the leading dense layers)
    file_row: int  # row of "logical_count" in the file


def trace_files(trace_dir: Path | None) -> list[tuple[str, FloatArray, int]]:
    """Each trace as (file name, loads without the dense layers, how many dense layers
    led): the JSON files of ``trace_dir``, or (None) the traces shipped with the package,
    named after the files they were made from."""
    if trace_dir is None:
        found = []
        for name, counts in shipped_trace_counts().items():
            loads = without_dense_layers(counts.astype(np.float64))
            found.append((f"{name}.json", loads, counts.shape[0] - loads.shape[0]))
        return found
    files = []
    for path in sorted(trace_dir.glob("*.json")):
        loads = load_trace(path)
        dense = len(json.loads(path.read_text())["logical_count"]) - loads.shape[0]
        files.append((path.name, loads, dense))
    return files


def pick_trace_layers(trace_dir: Path | None) -> list[TracePick]:
    """A handful of layers, chosen by what the reference does on them (first match in
    file order, then layer order): refinement A acting, refinement B acting, refinement
    B creating a duplicate, neither acting, the baseline's packing meeting equal replica
    loads, a decode layer, and the layer with the largest group load."""
    wanted: dict[str, TracePick | None] = dict.fromkeys(
        (
            "refinement A moves a replica",
            "refinement B swaps two replicas",
            "refinement B's swap creates a duplicate",
            "neither refinement acts",
            "the baseline's packing meets equal replica loads",
            "a decode layer",
        )
    )
    largest: tuple[float, TracePick] | None = None
    for file, loads, dense in trace_files(trace_dir):
        problem = BalancingProblem(loads, *TRACE_CLUSTER)
        seed = balance(problem, fast=True)
        without_b = balance(problem, refine_b=False, fast=True)
        gpus = problem.num_gpus
        duplicates = gpus_with_duplicate_replicas(seed.phy2log, gpus) > (
            gpus_with_duplicate_replicas(without_b.phy2log, gpus)
        )
        for layer in range(problem.num_layers):

            def pick(
                why: str, layer: int = layer, file: str = file, dense: int = dense
            ) -> TracePick:
                return TracePick(why, file, layer, layer + dense)

            checks = {
                "refinement A moves a replica": bool(seed.counts_refined[layer].any()),
                "refinement B swaps two replicas": bool(seed.replicas_swapped[layer].any()),
                "refinement B's swap creates a duplicate": bool(duplicates[layer]),
                "neither refinement acts": not seed.counts_refined[layer].any()
                and not seed.replicas_swapped[layer].any(),
                "a decode layer": file.startswith("decode") and layer == problem.num_layers // 2,
            }
            for why, hit in checks.items():
                if hit and wanted[why] is None:
                    wanted[why] = pick(why)
            why = "the baseline's packing meets equal replica loads"
            if wanted[why] is None and file.startswith("prefill"):
                single = BalancingProblem(loads[layer : layer + 1], *TRACE_CLUSTER)
                if "packing:equal-item-weights" in ties_met(single, 0, "baseline"):
                    wanted[why] = pick(why)
            top = float(loads[layer].reshape(problem.num_groups, -1).sum(axis=1).max())
            if largest is None or top > largest[0]:
                largest = (top, pick("the largest group load of all traces"))
    picks = [p for p in wanted.values() if p is not None]
    if largest is not None:
        picks.append(largest[1])
    unique: dict[tuple[str, int], TracePick] = {}
    for p in picks:
        unique.setdefault((p.file, p.layer), p)
    return list(unique.values())


def traces_tier(trace_dir: Path | None = None) -> dict[str, Any]:
    """The traces tier from the JSON files of ``trace_dir``, or from the shipped traces."""
    picks = pick_trace_layers(trace_dir)
    by_file = {file: loads for file, loads, _ in trace_files(trace_dir)}
    vectors = []
    for p in picks:
        loads = by_file[p.file][p.layer : p.layer + 1]
        problem = BalancingProblem(loads, *TRACE_CLUSTER)
        name = f"{Path(p.file).stem}-layer{p.layer}"
        vectors.append(
            make_vector(
                name,
                problem,
                {
                    "reason": p.why,
                    "source": {"file": p.file, "moe_layer": p.layer, "file_row": p.file_row},
                },
            )
        )
    source = {
        "kind": "real traces",
        "dataset": "deepseek-v3-sglang (DeepSeek-V3/R1 expert-load traces recorded with SGLang)",
        "cluster": dict(
            zip(("num_replicas", "num_groups", "num_nodes", "num_gpus"), TRACE_CLUSTER, strict=True)
        ),
        "layers": [
            {"file": p.file, "moe_layer": p.layer, "file_row": p.file_row, "why": p.why}
            for p in picks
        ],
        "note": "moe_layer counts the MoE layers after the leading all-zero dense ones; "
        "file_row is the row of the file's logical_count matrix",
    }
    return {"manifest": manifest("traces", len(vectors), source), "vectors": vectors}


def dump_tier(document: dict[str, Any]) -> str:
    """The manifest indented, each vector on one line (small files, readable diffs)."""
    head = json.dumps(document["manifest"], indent=1)
    body = ",\n".join(json.dumps(v, separators=(",", ":")) for v in document["vectors"])
    return f'{{\n"manifest": {head},\n"vectors": [\n{body}\n]\n}}\n'


def write_tiers(out: Path, tiers: Sequence[str] = TIERS, data: str | None = None) -> list[Path]:
    """Write the tier files under ``out``; the traces tier reads the JSON traces in
    ``data`` (or ``$EPLB_SPEC_DATA``, or ``../shared/data/...``), else the shipped ones."""
    for tier in tiers:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tier in tiers:
        if tier == "handpicked":
            document = handpicked_tier()
        elif tier == "small":
            document = small_tier()
        else:
            if asks_for_generated(data):
                raise ValueError("the traces tier is made of the real traces, not generated ones")
            document = traces_tier(find_trace_dir(data))
        path = out / f"{tier}.json"
        path.write_text(dump_tier(document))
        written.append(path)
    return written
