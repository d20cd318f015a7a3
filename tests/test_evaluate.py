"""The evaluator for program searches: documented metrics, a zero score naming the rule
for every broken or hostile target, determinism, batches that lose and duplicate nothing
(a local pool and a Dask LocalCluster, with a worker killed mid-batch), resumption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eplb_spec.cli import main
from properties.distribute import DaskCluster, LocalPool, RayCluster
from properties.evaluate import (
    METRIC_KEYS,
    SLOW_FREE,
    TIMING_KEYS,
    Settings,
    evaluate,
    evaluate_many,
    find_candidates,
    finished_keys,
    iter_results,
    make_settings,
    result_key,
    score_formula,
    speed_factor,
    split_metrics,
    write_shinka_results,
)
from properties.gate import Budget

TARGETS = Path(__file__).parent / "targets"
REFERENCE = str(Path(__file__).parents[1] / "impl" / "balancer.py")
BROKEN = str(TARGETS / "broken.py")
HOSTILE = str(TARGETS / "hostile.py")
LOST_WORKER = str(TARGETS / "lost_worker.py")

# Few examples: each broken target fails on its first example or two.
TINY = Budget(
    "tiny", contract=10, deterministic=5, input_forms=5, optimality=10, traces=1, trace_repeats=1
)
CONTRACT_ONLY = make_settings(
    budget=TINY, checks=["contract"], timeout_s=3, memory_mb=1536, measure_speed=False
)

# target -> the rule the evaluator must name (its first finding's check/code).
REJECTED_BY_CONTRACT = {
    f"{BROKEN}:wrong_count": "contract/count-sum",
    f"{BROKEN}:out_of_range_id": "contract/expert-out-of-range",
    f"{BROKEN}:inconsistent_log2phy": "contract/log2phy-slot",
    f"{BROKEN}:group_split": "contract/group-split",
    f"{BROKEN}:mutates_input": "input-unmodified",
    f"{BROKEN}:hangs": "timeout",
    f"{BROKEN}:crash_on_all_zero": "raises-on-valid-input/ZeroDivisionError",
    f"{BROKEN}:dies": "crash",
    f"{BROKEN}:refinement_raises_peak": "raises-on-valid-input/TypeError",
    f"{HOSTILE}:pickled_payload": "contract/returned-value",
    f"{HOSTILE}:patches_then_mutates": "input-unmodified",
    f"{HOSTILE}:nested_too_deep": "undecodable-result",
    f"{HOSTILE}:explodes_when_read": "contract/dtype",  # only claims to be a tensor
    f"{HOSTILE}:garbage_on_the_wire": "undecodable-result",
    f"{HOSTILE}:raises_a_spoof": "raises-on-valid-input/ValueError",
    f"{HOSTILE}:leaks_memory": "raises-on-valid-input/MemoryError",
    f"{HOSTILE}:exits": "raises-on-valid-input/SystemExit",
    f"{HOSTILE}:crashes_then_cannot_be_imported_again": "crash",
    f"{HOSTILE}:fails_only_once": "contract/count-sum",
    f"{HOSTILE}:returns_int32": "dtype",
}
ACCEPTED_BY_CONTRACT = [
    f"{BROKEN}:reference",
    f"{BROKEN}:phy2log_only_numpy",
    f"{HOSTILE}:reference",
    f"{HOSTILE}:classes_of_its_own",
    f"{HOSTILE}:floods_output",
    f"{HOSTILE}:spawns_a_daemon",
]
# Caught by a section other than the contract one: (target, section, rule).
REJECTED_ELSEWHERE = [
    (f"{BROKEN}:nondeterministic", "deterministic", "deterministic"),
    (f"{BROKEN}:accepts_bad_input", "bad-input", "bad-input/num_replicas < num_experts"),
]


@pytest.fixture(scope="module")
def contract_batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every broken and hostile target (kills_the_gate aside: see the lost-worker tests),
    scored in one batch on a local pool of 2 workers."""
    evidence = tmp_path_factory.mktemp("evidence") / "evidence"
    specs = [*REJECTED_BY_CONTRACT, *ACCEPTED_BY_CONTRACT]
    lines: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EPLB_HOSTILE_EVIDENCE", str(evidence))
        backend = LocalPool(2)
        try:
            evaluate_many(find_candidates(specs), CONTRACT_ONLY, backend, lines.append)
        finally:
            backend.close()
    assert Counter(f"{x['program']}:{x['function']}" for x in lines) == Counter(specs)
    return {f"{x['program']}:{x['function']}": x for x in lines}


def check_documented_shape(result: dict[str, Any]) -> None:
    for key in METRIC_KEYS:
        value = result[key]
        assert isinstance(value, (int, float)), key
        assert not isinstance(value, bool), key
    for key in ("verdict", "rule", "feedback", "program_sha256", "evaluator_version", "key"):
        assert isinstance(result[key], str), key
    assert result["status"] == "evaluated"
    assert len(result["program_sha256"]) == 64


@pytest.mark.parametrize(("target", "rule"), sorted(REJECTED_BY_CONTRACT.items()))
def test_a_broken_or_hostile_target_scores_zero_and_the_feedback_names_the_rule(
    contract_batch: dict[str, dict[str, Any]], target: str, rule: str
) -> None:
    result = contract_batch[target]
    check_documented_shape(result)
    assert result["verdict"] == "fail"
    assert result["passed"] == 0.0
    assert result["combined_score"] == 0.0
    assert result["rule"] == rule
    feedback = result["feedback"]
    assert feedback.startswith("REJECTED")
    check, _, code = rule.partition("/")
    assert f"[{rule}]" in feedback
    if check not in ("timeout", "crash", "undecodable-result"):  # these stop at first sight
        assert "smallest failing input" in feedback
    assert code in feedback


@pytest.mark.parametrize("target", ACCEPTED_BY_CONTRACT)
def test_a_valid_target_passes_with_a_positive_score(
    contract_batch: dict[str, dict[str, Any]], target: str
) -> None:
    result = contract_batch[target]
    check_documented_shape(result)
    assert (result["verdict"], result["rule"], result["findings"]) == ("pass", "", 0)
    assert result["combined_score"] == 1.0  # no traces ran: the verdict alone
    assert result["feedback"].startswith("ACCEPTED")


@pytest.mark.parametrize(("target", "section", "rule"), REJECTED_ELSEWHERE)
def test_targets_caught_by_other_sections_score_zero(target: str, section: str, rule: str) -> None:
    path, _, function = target.rpartition(":")
    result = evaluate(
        path, function=function, budget=TINY, checks=[section], timeout_s=5, measure_speed=False
    )
    assert (result["verdict"], result["combined_score"], result["rule"]) == ("fail", 0.0, rule)
    assert f"[{rule}]" in result["feedback"]


def test_a_valid_but_poor_target_keeps_its_gap_in_the_metrics() -> None:
    result = evaluate(
        BROKEN,
        function="stacks_equal_hot_experts",
        budget=TINY,
        checks=["optimality"],
        measure_speed=False,
    )
    assert result["verdict"] == "pass"
    assert result["optimality_gap_max"] > 0.99  # twice the optimum on a tie at token scale
    assert f"{result['optimality_gap_max']:.4%} above the optimum" in result["feedback"]


def test_a_program_that_cannot_be_imported_scores_zero(tmp_path: Path) -> None:
    program = tmp_path / "broken_syntax.py"
    program.write_text("def rebalance_experts(:\n")
    result = evaluate(program, budget=TINY, measure_speed=False)
    check_documented_shape(result)
    assert (result["verdict"], result["rule"], result["combined_score"]) == (
        "unusable",
        "import",
        0,
    )
    assert "SyntaxError" in result["feedback"]
    assert str(program) in result["feedback"]  # named as given, not by its private copy
    valid = tmp_path / "valid.py"
    valid.write_text("from impl import rebalance_experts\n")
    missing = evaluate(valid, function="no_such_function", budget=TINY, measure_speed=False)
    assert (missing["verdict"], missing["combined_score"]) == ("unusable", 0)
    assert "no function 'no_such_function'" in missing["feedback"]


ONE_TRACE = Budget(
    "one-trace",
    contract=20,
    deterministic=5,
    input_forms=5,
    optimality=10,
    traces=1,
    trace_repeats=1,
)


@pytest.fixture(scope="module")
def reference_twice() -> list[dict[str, Any]]:
    return [evaluate(REFERENCE, budget=ONE_TRACE) for _ in range(2)]


def test_the_reference_gets_the_documented_metrics(reference_twice: list[dict[str, Any]]) -> None:
    result = reference_twice[0]
    check_documented_shape(result)
    assert (result["verdict"], result["findings"], result["traces_scored"]) == ("pass", 0, 1)
    assert 0 < result["balancedness"] <= 1
    assert 1 <= result["peak_over_bound_mean"] <= result["peak_over_bound_max"] < 1.05
    assert result["duplicate_gpus"] == 0
    # the reference is not optimal on tiny problems: +60 % is its worst known gap
    # (tests/test_properties.py::test_pinned_worst_gaps)
    assert 0 <= result["optimality_gap_mean"] <= result["optimality_gap_max"] <= 0.6 + 1e-9
    assert result["optimality_layers"] > 0
    assert result["seconds_per_call"] > 0
    assert result["fast_seconds_per_call"] > 0
    assert result["time_ratio"] == pytest.approx(
        result["seconds_per_call"] / result["fast_seconds_per_call"]
    )
    assert result["time_ratio"] < SLOW_FREE
    assert result["combined_score"] == 1 / result["peak_over_bound_mean"]
    assert "x the compiled fast path" in result["feedback"]


def test_the_same_program_gives_the_same_result_timings_aside(
    reference_twice: list[dict[str, Any]],
) -> None:
    first, second = ({k: v for k, v in r.items() if k not in TIMING_KEYS} for r in reference_twice)
    assert first == second
    assert first["key"] == second["key"]


def test_the_baseline_passes_and_scores_below_the_reference(
    reference_twice: list[dict[str, Any]],
) -> None:
    result = evaluate(REFERENCE, function="rebalance_experts_baseline", budget=ONE_TRACE)
    assert result["verdict"] == "pass"
    assert result["peak_over_bound_mean"] > reference_twice[0]["peak_over_bound_mean"]
    assert 0 < result["combined_score"] < reference_twice[0]["combined_score"]


def test_the_score_formula() -> None:
    assert score_formula(False, 1.01, 2, 5.0) == 0.0
    assert score_formula(True, 1.25, 2, 5.0) == pytest.approx(0.8)
    assert score_formula(True, 0.0, 0, 0.0) == 1.0  # no trace scored: the verdict alone
    assert speed_factor(0.0) == speed_factor(SLOW_FREE) == 1.0
    assert speed_factor(10 * SLOW_FREE) == pytest.approx(0.75)
    assert speed_factor(1e9) == 0.5
    assert score_formula(True, 1.0, 1, 10 * SLOW_FREE) == pytest.approx(0.75)


def test_search_loop_adapters(tmp_path: Path) -> None:
    result = {"combined_score": 0.5, "passed": 1.0, "verdict": "pass", "feedback": "ok", "x": 2}
    numbers, texts = split_metrics(result)
    assert numbers == {"combined_score": 0.5, "passed": 1.0, "x": 2.0}
    assert texts == {"verdict": "pass", "feedback": "ok"}
    write_shinka_results(result, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["combined_score"] == 0.5
    assert metrics["text_feedback"] == "ok"
    assert metrics["public"] == {"passed": 1.0, "x": 2.0}
    assert json.loads((tmp_path / "out" / "correct.json").read_text()) == {
        "correct": True,
        "error": None,
    }


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    """Three small programs: two valid (different bytes), one broken."""
    folder = tmp_path / "programs"
    folder.mkdir()
    reference = "from impl import rebalance_experts as rebalance_experts\n"
    (folder / "a_reference.py").write_text(reference)
    (folder / "b_reference_again.py").write_text(reference + "# the same, other bytes\n")
    (folder / "c_wrong_count.py").write_text(
        "from impl import rebalance_experts as reference\n\n\n"
        "def rebalance_experts(weight, r, g, n, p):\n"
        "    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)\n"
        "    logcnt[:, 0] += 1\n"
        "    return phy2log, log2phy, logcnt\n"
    )
    return folder


def test_the_command_prints_one_object_for_one_program(
    programs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["evaluate", "--checks", "contract", "--no-speed"]
    assert main([*command, str(programs / "c_wrong_count.py")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["verdict"], result["rule"]) == ("fail", "contract/count-sum")
    assert main([*command, str(programs / "nothing_here.py")]) == 2
    assert main([*command, f"{programs / 'a_reference.py'}:not-a-name"]) == 2


def test_a_batch_is_resumable_and_never_duplicates(
    programs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    command = ["evaluate", "--checks", "contract", "--no-speed", "--workers", "1"]
    command += ["--out", str(out)]
    assert (
        main([*command, str(programs / "a_reference.py"), str(programs / "c_wrong_count.py")]) == 0
    )
    first = lines_of(out)
    assert [x["status"] for x in first] == ["evaluated", "evaluated"]
    with out.open("a") as stream:
        stream.write('{"status": "evaluated", "key": "torn')  # a run killed mid-line
    assert main([*command, str(programs)]) == 0  # the folder: one program is new
    lines = [json.loads(x) for x in out.read_text().splitlines() if not x.endswith('"torn')]
    assert len(lines) == 3
    assert Counter(x["program"] for x in lines) == Counter(
        str(p) for p in sorted(programs.glob("*.py"))
    )
    assert finished_keys(out) == {x["key"] for x in lines}
    assert "1 evaluated, 2 already in" in capsys.readouterr().err


def test_a_batch_through_a_dask_local_cluster_survives_a_killed_worker(
    programs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    marker = tmp_path / "killed"
    monkeypatch.setenv("EPLB_LOST_WORKER_MARKER", str(marker))  # inherited by the workers
    monkeypatch.setenv("EPLB_SANDBOX", "0")  # in the sandbox a target cannot kill its gate
    specs = [str(programs), f"{LOST_WORKER}:kills_its_evaluator_once"]
    candidates = find_candidates(specs)
    lines: list[dict[str, Any]] = []
    backend = DaskCluster("local:2")
    try:
        assert backend.slots() == 2
        summary = evaluate_many(candidates, CONTRACT_ONLY, backend, lines.append)
    finally:
        backend.close()
    assert marker.exists(), "the worker was killed"
    assert Counter(x["program"] for x in lines) == Counter(c.program for c in candidates)
    assert all(x["status"] == "evaluated" for x in lines), lines
    assert summary.evaluated == len(candidates) == 4
    verdicts = {Path(x["program"]).name: x["verdict"] for x in lines}
    assert verdicts == {
        "a_reference.py": "pass",
        "b_reference_again.py": "pass",
        "c_wrong_count.py": "fail",
        "lost_worker.py": "pass",
    }


def test_a_local_pool_loses_nothing_when_workers_are_killed(
    programs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One target kills its worker once (it is retried and scored); one kills every
    worker it runs on (it is reported as not evaluated once it has killed two alone);
    the others are scored once each, whatever ran beside the killers. (Two attempts:
    when the other killer strikes first, the one-time killer still kills once alone.)"""
    monkeypatch.setenv("EPLB_LOST_WORKER_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("EPLB_SANDBOX", "0")  # in the sandbox a target cannot kill its gate
    specs = [
        f"{LOST_WORKER}:kills_its_evaluator_once",
        f"{HOSTILE}:kills_the_gate",
        str(programs),
    ]
    candidates = find_candidates(specs)
    lines: list[dict[str, Any]] = []
    backend = LocalPool(2)
    try:
        evaluate_many(candidates, CONTRACT_ONLY, backend, lines.append, max_attempts=2)
    finally:
        backend.close()
    by_name = {
        x["function"] if x["program"] in (LOST_WORKER, HOSTILE) else Path(x["program"]).name: x
        for x in lines
    }
    assert len(lines) == len(candidates) == len(by_name) == 5
    assert by_name["kills_its_evaluator_once"]["verdict"] == "pass"
    assert by_name["kills_its_evaluator_once"]["attempts"] >= 2
    lost = by_name["kills_the_gate"]
    assert lost["status"] == "not-evaluated"
    assert "combined_score" not in lost
    assert lost["attempts"] == 3  # once beside others (not charged), then twice alone
    assert "worker was lost" in lost["reason"]
    assert [by_name[n]["verdict"] for n in sorted(by_name) if n.endswith(".py")] == [
        "pass",
        "pass",
        "fail",
    ]


def test_settings_are_part_of_the_key(programs: Path) -> None:
    candidate = find_candidates([str(programs / "a_reference.py")])[0]
    other = Settings(budget=TINY)
    assert result_key(candidate.sha256, "f", other) != result_key(candidate.sha256, "g", other)
    assert result_key(candidate.sha256, "f", other) != result_key(candidate.sha256, "f", Settings())
    assert os.path.basename(candidate.program) == "a_reference.py"


def test_the_sections_listed_are_the_sections_that_run() -> None:
    """A program is a stateless balancer: the sections that need an old placement or
    another target never run, so they are not listed, and choosing only them is refused."""
    assert Settings().sections == (
        "contract",
        "deterministic",
        "input-forms",
        "optimality",
        "bad-input",
        "traces",
    )
    with pytest.raises(ValueError, match="no section to run"):
        make_settings(checks=["rebalance", "schedule"])


def test_a_batch_through_ray_survives_a_killed_worker(
    programs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opt-in (``nox -s ray``): skipped where Ray is not installed."""
    pytest.importorskip("ray")
    marker = tmp_path / "killed"
    monkeypatch.setenv("EPLB_LOST_WORKER_MARKER", str(marker))
    candidates = find_candidates([str(programs), f"{LOST_WORKER}:kills_its_evaluator_once"])
    lines: list[dict[str, Any]] = []
    backend = RayCluster("local")
    try:
        evaluate_many(candidates, CONTRACT_ONLY, backend, lines.append)
    finally:
        backend.close()
    assert marker.exists(), "the worker was killed"
    assert Counter(x["program"] for x in lines) == Counter(c.program for c in candidates)
    assert [x["status"] for x in lines] == ["evaluated"] * 4, lines
    assert sorted(x["verdict"] for x in lines) == ["fail", "pass", "pass", "pass"]


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_batch_killed_outright_leaves_no_worker_behind(programs: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "eplb_spec.cli", "evaluate", str(programs)]
    command += ["--checks", "contract", "--no-speed", "--workers", "2", "--out", str(out)]
    batch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert batch.poll() is None, "the batch ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        workers = children_of(batch.pid)
        assert workers, "the pool's workers"
    finally:
        batch.kill()
        batch.wait()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()]
    assert not [p for p in alive if "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]


def test_the_last_line_per_program_wins(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    lines = [
        {"key": "k1", "program": "a.py", "status": "not-evaluated"},
        {"key": "k2", "program": "b.py", "status": "evaluated"},
        {"key": "k1", "program": "a.py", "status": "evaluated"},
    ]
    out.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"key": "k3", "tor')
    assert sorted(iter_results(out), key=lambda x: str(x["key"])) == [lines[2], lines[1]]
    assert finished_keys(out) == {"k1", "k2"}


def test_the_benchmark_leaves_dask_out_when_it_is_missing_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from studies import evaluate_bench

    assert evaluate_bench.default_backends() == (evaluate_bench.DEFAULT_BACKENDS, "")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name)
    )
    backends, note = evaluate_bench.default_backends()
    assert backends == "pool:1,pool:2"
    assert "Dask is not installed" in note
    with pytest.raises(ValueError, match="dask:2 needs Dask"):
        evaluate_bench.run_evaluate_benchmark(1, 1, "pool:1,dask:2", None)
