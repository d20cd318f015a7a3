"""The gate's rebalance and schedule sections: the reference, the baseline and the
reference schedule pass; each broken rebalance and schedule in
``tests/targets/broken_rebalance.py`` is caught with its violation code; the calling
conventions (keyword, sixth positional argument, engine adapters) and their errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eplb_spec.cli import main
from impl import rebalance_experts
from impl.migration import apply_slot_map, keep_slots
from properties.engines import find_engine
from properties.gate import QUICK, SECTIONS, GateReport, gate_report_text, run_gate
from properties.isolation import TargetError
from properties.rebalance import (
    POSITION,
    RebalanceTally,
    ScheduleTally,
    check_rebalance_case,
    check_schedule_case,
    parse_previous,
    reference_schedule,
)
from properties.strategies import PREVIOUS_ORIGINS, RebalanceCase, ScheduleCase
from properties.suite import Finding, in_process

BROKEN = str(Path(__file__).parent / "targets" / "broken_rebalance.py")
BUDGET = replace(QUICK, name="test", rebalance=12, schedule=12)


def found(report: GateReport) -> set[tuple[str, str]]:
    return {(f.check, f.code) for f in report.findings}


def rebalance_gate(target: str, previous: str | int = "previous") -> GateReport:
    return run_gate(target, budget=BUDGET, checks=["rebalance"], previous=previous)


@pytest.mark.parametrize(
    ("target", "previous"),
    [
        ("impl:rebalance_experts", "previous"),
        ("impl:rebalance_experts_baseline", "previous"),
        (f"{BROKEN}:positional", "6"),
    ],
)
def test_the_reference_and_the_baseline_pass_the_rebalance_section(
    target: str, previous: str
) -> None:
    report = rebalance_gate(target, previous)
    assert report.verdict == "pass", report.summary()
    measured = report.rebalance
    assert measured["cases"] > 0
    assert measured["transfers"] == measured["fewest_relabeled"]
    assert measured["transfers"] <= measured["stateless_transfers"]
    assert measured["layers_above_fewest"] == 0
    oracle = measured["oracle"]
    assert oracle["proven"] > 0
    assert oracle["target_transfers"] >= oracle["fewest"]
    assert set(measured["origins"]) <= set(PREVIOUS_ORIGINS)
    assert sum(measured["origins"].values()) == measured["cases"]


@pytest.mark.parametrize(
    ("broken", "check", "code"),
    [
        ("keeps_slots_only", "rebalance", "transfers-above-fewest"),
        ("never_moves", "rebalance", "balance-changed"),
        ("ignores_slots", "rebalance", "slot-not-kept"),
        ("invalid_with_previous", "rebalance", "placement-invalid"),
        ("mutates_previous", "input-unmodified", "input-unmodified"),
        ("no_previous", "raises-on-valid-input", "TypeError"),
    ],
)
def test_the_rebalance_section_catches_each_broken_rebalance(
    broken: str, check: str, code: str
) -> None:
    report = rebalance_gate(f"{BROKEN}:{broken}")
    assert report.verdict == "fail"
    assert found(report) == {(check, code)}, report.summary()
    finding = report.findings[0]
    assert finding.input is not None
    assert "previous_weight" in finding.input
    if check != "rebalance":
        assert "called with an old placement" in finding.message


def test_transfers_above_the_optimum_are_counted_not_stopped_at() -> None:
    report = rebalance_gate(f"{BROKEN}:keeps_slots_only")
    measured = report.rebalance
    assert measured["cases"] == BUDGET.rebalance  # every case checked and measured
    assert 0 < measured["layers_above_fewest"] < measured["layers"]
    assert measured["transfers"] == measured["stateless_transfers"] > measured["fewest_relabeled"]
    (finding,) = report.findings
    assert 1 <= finding.count <= measured["layers_above_fewest"]  # one per case above
    assert "FAIL (transfers above the relabeling optimum" in report.checks["rebalance"]


def test_the_reference_schedule_passes_the_schedule_section() -> None:
    report = run_gate(
        "impl:rebalance_experts",
        budget=BUDGET,
        checks=["schedule"],
        schedule="properties.rebalance:reference_schedule",
    )
    assert report.verdict == "pass", report.summary()
    # the headline names what was checked: the schedule, not the balancer never called
    headline = report.summary().splitlines()[0]
    assert headline == "eplb-spec gate: schedule properties.rebalance:reference_schedule: PASS"
    assert "impl:rebalance_experts" not in report.summary()
    measured = report.schedule
    assert measured["rule"] == "exchanges allowed"
    assert measured["transfers"] > 0
    assert measured["most_links"] <= measured["batches"]
    assert measured["inter_node"] == measured["fewest_inter_node"]


@pytest.mark.parametrize(
    ("broken", "code"),
    [
        ("drops_a_transfer", "transfer-missing"),
        ("sends_twice", "transfer-duplicated"),
        ("sends_unneeded", "transfer-unneeded"),
        ("wrong_source", "source-lacks-expert"),
        ("merges_batches", "rank-busy-twice"),
        ("declares_extra_batch", "batch-count"),
        ("four_columns", "schedule-malformed"),
    ],
)
def test_the_schedule_section_catches_each_broken_schedule(broken: str, code: str) -> None:
    report = run_gate(
        "impl:rebalance_experts",
        budget=BUDGET,
        checks=["schedule"],
        schedule=f"{BROKEN}:{broken}",
    )
    assert report.verdict == "fail"
    assert found(report) == {("schedule", code)}, report.summary()
    assert report.findings[0].input is not None


def test_vllms_scheduler_keeps_its_stricter_contract() -> None:
    try:
        find_engine("vllm:migration_scheduler")
    except TargetError as error:
        pytest.skip(f"vLLM not available: {error}")
    report = run_gate(
        "impl:rebalance_experts",
        budget=BUDGET,
        checks=["schedule"],
        schedule="vllm:migration_scheduler",
    )
    assert report.verdict == "pass", report.summary()
    assert report.schedule["rule"] == "one directed peer per GPU and batch"


def test_the_rebalance_section_runs_only_when_the_convention_is_known() -> None:
    with pytest.raises(ValueError, match="--checks rebalance needs --previous"):
        run_gate("impl:rebalance_experts", budget=BUDGET, checks=["rebalance"])
    others = [s for s in SECTIONS if s not in ("contract", "rebalance")]
    report = run_gate("impl:rebalance_experts", budget=BUDGET, skip=others)
    assert set(report.checks) == {"contract"}  # not asked for by name: left out quietly
    assert report.header["sections"] == ["contract"]
    assert report.rebalance == {}


# --- calling conventions ---------------------------------------------------------------------


def test_previous_is_a_keyword_name_or_the_sixth_position() -> None:
    assert parse_previous("previous") == "previous"
    assert parse_previous("6") == POSITION == 6
    assert parse_previous(6) == 6
    with pytest.raises(ValueError, match="only be passed positionally as argument 6"):
        parse_previous("5")
    with pytest.raises(ValueError, match="keyword name or 6"):
        parse_previous("old-map")


def test_the_command_line_refuses_bad_conventions_before_any_work() -> None:
    assert main(["gate", "--previous", "5", "--checks", "rebalance"]) == 2
    assert main(["gate", "--previous", "not a name", "--checks", "rebalance"]) == 2
    try:
        find_engine("vllm")
    except TargetError:
        return
    assert main(["gate", "--impl", "vllm:migration_scheduler", "--checks", "rebalance"]) == 2
    assert main(["gate", "--schedule", "vllm", "--checks", "schedule"]) == 2


CASE = RebalanceCase(
    weight=[[9.0, 1.0, 4.0, 4.0, 2.0, 7.0, 3.0, 5.0]],
    num_replicas=12,
    num_groups=4,
    num_nodes=2,
    num_gpus=4,
    origin="reference",
    previous=[[5, 4, 5, 4, 0, 1, 6, 7, 2, 3, 6, 3]],
    previous_weight=None,
)


def test_the_checks_run_in_process_with_either_convention() -> None:
    tally = RebalanceTally()
    keyword = in_process(rebalance_experts)
    check_rebalance_case(keyword, CASE, "previous", soft=[], tally=tally)

    def sixth(weight, r, g, n, p, old=None):  # type: ignore[no-untyped-def]
        return rebalance_experts(weight, r, g, n, p, previous=old)

    check_rebalance_case(in_process(sixth), CASE, 6, soft=[], tally=tally)
    assert tally.cases == 2
    assert tally.transfers == tally.fewest_relabeled > 0
    assert tally.oracle_layers == 0  # 8 experts and 12 slots: not tiny

    def stateless_only(weight, r, g, n, p, previous=None):  # type: ignore[no-untyped-def]
        return rebalance_experts(weight, r, g, n, p)

    with pytest.raises(Finding) as raised:
        check_rebalance_case(in_process(stateless_only), CASE, "previous", soft=[])
    assert raised.value.code == "slot-not-kept"

    def slots_kept(weight, r, g, n, p, previous=None):  # type: ignore[no-untyped-def]
        new = rebalance_experts(weight, r, g, n, p)[0].numpy()
        if previous is None:
            return new
        kept = keep_slots(previous.numpy(), new, num_experts=8, num_gpus=4)
        return apply_slot_map(new, kept)

    soft: list[Finding] = []
    check_rebalance_case(in_process(slots_kept), CASE, "previous", soft=soft)
    assert [f.code for f in soft] == ["transfers-above-fewest"]


def test_a_schedule_case_in_process() -> None:
    case = ScheduleCase(8, 12, 4, 2, 4, CASE.previous or [], [[0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 4, 6]])
    tally = ScheduleTally()
    check_schedule_case(in_process(reference_schedule), case, exchanges=True, tally=tally)
    assert tally.transfers > 0
    assert tally.batches >= tally.most_links
    # The reference pairs GPUs 1 and 3 both ways in one batch: vLLM's stricter rule
    # (one directed peer per batch) refuses that.
    with pytest.raises(Finding) as strict:
        check_schedule_case(in_process(reference_schedule), case, exchanges=False)
    assert strict.value.code == "rank-busy-twice"
    with pytest.raises(Finding) as raised:
        check_schedule_case(in_process(lambda *a: (np.zeros((1, 4)),)), case, exchanges=True)
    assert raised.value.code == "schedule-malformed"


# --- budgeted rebalances ----------------------------------------------------------------------

INCREMENTAL = "impl.incremental:rebalance_experts_incremental"


def budgeted_gate(
    target: str, *, eps: float | None = None, max_transfers: int | None = None
) -> GateReport:
    return run_gate(
        target,
        budget=BUDGET,
        checks=["rebalance"],
        previous="previous",
        eps=eps,
        max_transfers=max_transfers,
    )


def test_the_incremental_rebalancer_passes_the_budgeted_section() -> None:
    report = budgeted_gate(INCREMENTAL, eps=0.01)
    assert report.verdict == "pass", report.summary()
    measured = report.rebalance
    assert measured["cases"] > 0
    assert measured["worst_peak_over_stateless"] <= 1.01
    assert measured["layers_above_reference"] == 0
    assert measured["transfers"] <= measured["fewest_relabeled"]
    assert measured["transfers"] == measured["incremental_transfers"]
    assert measured["bound"]["layers"] > 0
    assert measured["bound"]["lower"] <= measured["bound"]["target_transfers"]
    assert "rebalance, budgeted" in gate_report_text(report)
    within = budgeted_gate(f"{BROKEN}:incremental_within_two", max_transfers=2)
    assert within.verdict == "pass", within.summary()


@pytest.mark.parametrize(
    ("broken", "options", "code"),
    [
        ("invalid_with_previous", {"eps": 0.01}, "placement-invalid"),
        ("never_moves", {"eps": 0.01}, "peak-above-tolerance"),
        ("reference", {"max_transfers": 0}, "transfers-above-budget"),
        ("flipped_loads", {"max_transfers": 10_000}, "peak-above-previous"),
        ("keeps_slots_only", {"eps": 0.01}, "transfers-above-reference"),
    ],
)
def test_the_budgeted_section_catches_each_broken_rebalance(
    broken: str, options: dict[str, float], code: str
) -> None:
    report = budgeted_gate(f"{BROKEN}:{broken}", **options)  # type: ignore[arg-type]
    assert report.verdict == "fail"
    assert found(report) == {("rebalance", code)}, report.summary()
    assert report.findings[0].input is not None


def test_vllms_rebalance_in_budgeted_terms() -> None:
    """vLLM keeps its stateless balance (within any tolerance) but does not relabel: it
    is above the relabeling optimum, which the section reports."""
    try:
        find_engine("vllm")
    except TargetError as error:
        pytest.skip(f"vLLM not available: {error}")
    report = run_gate("vllm", budget=BUDGET, checks=["rebalance"], eps=0.01)
    assert found(report) == {("rebalance", "transfers-above-reference")}, report.summary()
    measured = report.rebalance
    assert measured["cases"] > 0
    assert measured["worst_peak_over_stateless"] <= 1.01
    assert measured["transfers"] > measured["fewest_relabeled"]
    assert measured["layers_above_reference"] > 0
    assert measured["bound"]["lower"] <= measured["bound"]["target_transfers"]


def test_budgeted_options_are_checked_before_any_work() -> None:
    with pytest.raises(ValueError, match="give one"):
        budgeted_gate(INCREMENTAL, eps=0.01, max_transfers=3)
    with pytest.raises(ValueError, match="--eps must be a finite tolerance"):
        budgeted_gate(INCREMENTAL, eps=-0.5)
    with pytest.raises(ValueError, match="--max-transfers must be >= 0"):
        budgeted_gate(INCREMENTAL, max_transfers=-1)
    with pytest.raises(ValueError, match="give --previous"):
        run_gate(INCREMENTAL, budget=BUDGET, checks=["contract"], eps=0.01)
    with pytest.raises(ValueError, match="left out"):
        run_gate(INCREMENTAL, budget=BUDGET, checks=["contract"], previous="previous", eps=0.01)
    assert main(["gate", "--impl", INCREMENTAL, "--eps", "0.01"]) == 2
