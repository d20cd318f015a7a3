"""The committed balancer vectors: well formed, and still the reference's exact outputs.

Every output of every vector is recomputed here from the reference (and from the
compiled fast path), so a change of behaviour fails the build until the vectors are
regenerated on purpose (``eplb-spec balancer-vectors --out vectors/balancer``).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eplb_spec.cli import main
from properties.balancer_vectors import (
    FORMAT,
    FORMAT_VERSION,
    HANDPICKED,
    REFERENCE_FILES,
    TIERS,
    check_vector,
    decode_weight,
    exercised,
    handpicked_tier,
    problem_of,
    resolved,
    small_tier,
    traces_tier,
)
from properties.fidelity import REFERENCES
from properties.traces import shipped_trace_counts
from properties.workloads import without_dense_layers

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "balancer"


@cache
def tier_file(tier: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VECTORS / f"{tier}.json").read_text())
    return document


def all_vectors() -> list[tuple[str, dict[str, Any]]]:
    return [(tier, v) for tier in TIERS for v in tier_file(tier)["vectors"]]


@pytest.mark.parametrize("tier", TIERS)
def test_manifest_is_well_formed(tier: str) -> None:
    document = tier_file(tier)
    manifest = document["manifest"]
    assert manifest["format"] == FORMAT
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["tier"] == tier
    assert manifest["count"] == len(document["vectors"]) > 0
    assert manifest["generator"]["module"] == "properties.balancer_vectors"
    assert manifest["reference"]["distribution"].startswith("eplb-spec ")
    hashes = manifest["reference"]["sha256"]
    assert sorted(hashes) == sorted(REFERENCE_FILES)
    assert all(re.fullmatch("[0-9a-f]{64}", h) for h in hashes.values())
    assert manifest["outputs"] == {
        name: {"variant": r.variant, "refine_a": r.refine_a, "refine_b": r.refine_b}
        for name, r in REFERENCES.items()
    }
    assert manifest["source"]["kind"]


@pytest.mark.parametrize("tier", TIERS)
def test_vectors_are_well_formed(tier: str) -> None:
    names = [v["name"] for v in tier_file(tier)["vectors"]]
    assert len(set(names)) == len(names)
    for vector in tier_file(tier)["vectors"]:
        problem = problem_of(vector)
        layers, experts = problem.num_layers, problem.num_experts
        assert vector["policy"] == problem.policy.value
        assert vector["log2phy_width"] == problem.num_replicas - experts + 1
        assert list(vector["expected"]) == list(REFERENCES)
        seen: list[str] = []
        for name, output in vector["expected"].items():
            if "same_as" in output:
                assert output == {"same_as": output["same_as"]}
                assert output["same_as"] in seen, "same_as must name an earlier output"
            else:
                assert np.shape(output["phy2log"]) == (layers, problem.num_replicas)
                assert np.shape(output["logcnt"]) == (layers, experts)
                assert [[len(slots) for slots in row] for row in output["log2phy"]] == output[
                    "logcnt"
                ]
                for flags in ("counts_refined", "replicas_swapped"):
                    assert np.shape(output[flags]) == (layers, problem.packing_nodes)
            seen.append(name)


@pytest.mark.parametrize("tier", TIERS)
def test_every_vector_is_the_reference_output(tier: str) -> None:
    mismatches = [m for v in tier_file(tier)["vectors"] for m in check_vector(v)]
    assert mismatches == []


@pytest.mark.parametrize("tier", TIERS)
def test_every_vector_is_the_fast_path_output(tier: str) -> None:
    mismatches = [m for v in tier_file(tier)["vectors"] for m in check_vector(v, fast=True)]
    assert mismatches == []


def test_a_changed_vector_is_caught() -> None:
    vector = next(v for v in tier_file("handpicked")["vectors"] if v["name"] == "readme-example")
    broken = copy.deepcopy(vector)
    row = broken["expected"]["refined"]["phy2log"][0]
    first = next(s for s in range(1, len(row)) if row[s] != row[0])
    row[0], row[first] = row[first], row[0]
    assert check_vector(broken) == [
        "readme-example: refined phy2log differs from the reference",
        "readme-example: refined-without-a phy2log differs from the reference",
        "readme-example: refined-without-b phy2log differs from the reference",
        "readme-example: refined-without-refinements phy2log differs from the reference",
        "readme-example: baseline phy2log differs from the reference",
    ]
    heavier = copy.deepcopy(vector)
    heavier["weight"][0][0] *= 10
    assert check_vector(heavier)
    lying = copy.deepcopy(next(v for v in all_vectors() if "weight_hex" in v[1])[1])
    lying["weight_hex"][0][0] = (1.0 + decode_weight(lying)[0, 0]).hex()
    with pytest.raises(ValueError, match="weight and weight_hex disagree"):
        check_vector(lying)


def test_hand_picked_cases_exercise_what_their_reason_says() -> None:
    vectors = tier_file("handpicked")["vectors"]
    assert [v["name"] for v in vectors] == [case.name for case in HANDPICKED]
    for vector in vectors:
        missing = set(vector["exercises"]) - exercised(problem_of(vector))
        assert not missing, f"{vector['name']} no longer exercises {sorted(missing)}"
    tags = tier_file("handpicked")["manifest"]["source"]["exercises"]
    assert {tag for v in vectors for tag in v["exercises"]} == set(tags)


def test_the_float32_case_separates_float32_from_float64() -> None:
    vector = next(v for v in tier_file("handpicked")["vectors"] if v["name"] == "float32-group-tie")
    loads = decode_weight(vector)
    assert loads[0, 0] != loads[0, 1]
    assert np.float32(loads[0, 0]) == np.float32(loads[0, 1])


def test_refinement_a_never_acts_in_any_vector() -> None:
    """Backs the vectors README: refined-without-a is always the refined output."""
    for _, vector in all_vectors():
        assert vector["expected"]["refined-without-a"] == {"same_as": "refined"}
        assert not np.asarray(resolved(vector["expected"], "refined")["counts_refined"]).any()


def test_refinement_b_acts_in_some_vector_of_every_tier() -> None:
    for tier in TIERS:
        assert any(
            np.asarray(resolved(v["expected"], "refined")["replicas_swapped"]).any()
            for v in tier_file(tier)["vectors"]
        ), tier


def test_the_generated_tiers_are_what_the_generator_writes() -> None:
    assert handpicked_tier()["vectors"] == tier_file("handpicked")["vectors"]
    assert small_tier()["vectors"] == tier_file("small")["vectors"]


def test_trace_vectors_hold_the_layers_their_manifest_names() -> None:
    shipped = shipped_trace_counts()  # equal to the JSON files (tests/test_traces.py)
    document = tier_file("traces")
    layers = document["manifest"]["source"]["layers"]
    assert len(layers) == len(document["vectors"])
    for where, vector in zip(layers, document["vectors"], strict=True):
        assert vector["source"] == {k: where[k] for k in ("file", "moe_layer", "file_row")}
        counts = shipped[Path(where["file"]).stem]
        loads = without_dense_layers(counts.astype(np.float64))
        assert np.array_equal(decode_weight(vector), loads[where["moe_layer"]][None, :])
        assert np.array_equal(decode_weight(vector)[0], counts[where["file_row"]])


def test_the_traces_tier_is_what_the_generator_writes_from_the_shipped_traces() -> None:
    assert traces_tier()["vectors"] == tier_file("traces")["vectors"]


def test_the_readme_table_matches_the_files() -> None:
    readme = (VECTORS / "README.md").read_text()
    for tier in TIERS:
        match = re.search(rf"\| `{tier}\.json` \| (\d+) \|", readme)
        assert match is not None, tier
        assert int(match.group(1)) == tier_file(tier)["manifest"]["count"]


def test_the_generator_rejects_an_unknown_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["balancer-vectors", "--tiers", "huge", "--out", "unused"]) == 2
    assert "tier must be one of" in capsys.readouterr().err
