"""The benchmark's breakdown of the fast path and its rivals (what is printed, not how
fast: speed claims live in the benchmark's output, never in a test)."""

from __future__ import annotations

import math

import pytest

from properties.workloads import generated_loads
from studies.bench import END_TO_END, fast_path_breakdown, rivals

CLUSTER = (72, 8, 4, 8)


def test_the_breakdown_times_the_whole_call_and_each_part() -> None:
    loads = generated_loads(seed=3, num_layers=4, num_experts=64)
    stages = fast_path_breakdown(loads, CLUSTER, repeats=3)
    assert stages[0].name == END_TO_END
    assert len(stages) == 5
    for stage in stages:
        assert 0 < stage.min_ms <= stage.median_ms


def test_rivals_are_timed_beside_the_fast_path_or_say_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = generated_loads(seed=3, num_layers=4, num_experts=64)
    monkeypatch.setenv("EPLB_SPEC_ENGINE_CACHE", "/no/such/engine/cache")
    found = rivals(loads, CLUSTER, rounds=1, fast_median_ms=0.5)
    by_name = {r.name: r for r in found}
    reference = by_name["refined (reference, readable)"]
    assert reference.median_ms > 0
    assert reference.times_fast == pytest.approx(reference.median_ms / 0.5)
    engines = [r for r in found if "@" in r.name]
    assert engines  # the pinned releases are named even when they cannot be timed
    for rival in engines:  # without a cache, only an engine installed here is timed
        if math.isnan(rival.median_ms):
            assert rival.note.startswith("not timed:")
        else:
            assert rival.median_ms > 0
