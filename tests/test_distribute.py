"""The job runner under the evaluator and the oracle's sweeps: every job ends in exactly
one outcome, errors are retried a bounded number of times, and the work spread over a
pool gives what it gives in one process."""

from __future__ import annotations

import dataclasses

import pytest

from properties.distribute import Inline, LocalPool, choose_backend, run_jobs
from properties.workloads import generated_loads
from studies.oracle_bench import SweepCell, certification_sweep, parse_clusters


def test_errors_are_retried_then_reported_and_each_job_ends_once() -> None:
    calls: list[str] = []

    def flaky(job: str) -> str:
        calls.append(job)
        if job == "always" or (job == "once" and calls.count("once") == 1):
            raise RuntimeError(f"{job} failed")
        return job.upper()

    outcomes = list(run_jobs(flaky, ["fine", "once", "always"], Inline(), max_attempts=3))
    by_job = {o.job: o for o in outcomes}
    assert len(outcomes) == 3
    assert (by_job["fine"].value, by_job["fine"].attempts, by_job["fine"].ok) == ("FINE", 1, True)
    assert (by_job["once"].value, by_job["once"].attempts) == ("ONCE", 2)
    assert by_job["always"].value is None
    assert by_job["always"].attempts == 3
    assert by_job["always"].error == "RuntimeError: always failed"
    assert calls.count("always") == 3


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        list(run_jobs(str, [1], Inline(), max_attempts=0))
    with pytest.raises(ValueError, match="workers"):
        LocalPool(0)
    with pytest.raises(ValueError, match="together"):
        choose_backend(scheduler="local:1", ray="local")
    with pytest.raises(ValueError, match="replicas,groups,nodes,gpus"):
        parse_clusters(["288,8,4"])
    with pytest.raises(ValueError, match="num_gpus"):
        parse_clusters(["288,8,4,33"])


def test_a_certification_sweep_on_a_pool_equals_one_in_this_process() -> None:
    loads = generated_loads(num_layers=2)
    workloads = [("generated", loads)]
    clusters = parse_clusters(["288,8,4,32", "272,8,8,16"])
    inline = certification_sweep(workloads, clusters, 1, Inline())
    backend = LocalPool(2)
    try:
        pooled = certification_sweep(workloads, clusters, 1, backend)
    finally:
        backend.close()
    assert [c.job.cluster for c in pooled] == clusters  # in job order, whatever finished first

    def timeless(cell: SweepCell) -> dict[str, object]:
        """What does not depend on time: the certified bounds can (their CP-SAT packing
        solves are time-limited), so only what was scored is compared."""
        score = cell.score
        assert score is not None
        found = dataclasses.asdict(score)
        kept = ("trace", "cluster", "layers")
        return {k: found[k] for k in kept}

    assert [timeless(c) for c in pooled] == [timeless(c) for c in inline]
    assert {timeless(c)["cluster"] for c in inline} == {"288,8,4,32", "272,8,8,16"}
