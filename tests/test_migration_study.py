"""The migration study end to end (``eplb-spec migration --quick``), its figures against
numbers recomputed here, and the trade-off figure read back through matplotlib."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from eplb_spec.cli import main
from impl import balance, migrate
from impl.incremental import rebalance_incremental
from properties import workloads
from spec import BalancingProblem, count_transfers
from studies import plots
from studies.migration import (
    Settings,
    TradeoffFigures,
    TradeoffPointFigure,
    spread,
    study_workloads,
)


def test_the_quick_study_runs_end_to_end_and_its_figures_hold(tmp_path: Path) -> None:
    out, figures = tmp_path / "m.json", tmp_path / "plots"
    command = ["migration", "--quick", "--workers", "1", "--json", str(out), "--plot", str(figures)]
    assert main(command) == 0
    document = json.loads(out.read_text())
    quick = Settings.quick()
    assert quick.traces is not None
    assert document["settings"]["traces"] == quick.traces
    assert "analytical" in document["oracle_bound"]
    pairs = document["pairs"]
    assert len(pairs) == quick.traces * (quick.traces - 1)
    for pair in pairs:
        t = pair["transfers"]
        assert t["slots_kept"] == t["stateless"]  # slots never move weights between GPUs
        assert pair["lower_bound"] <= t["relabeled"] <= t["stateless"]
        assert pair["rewritten"]["slots_kept"] <= pair["rewritten"]["stateless"]
        assert pair["rewritten"]["relabeled"] >= t["relabeled"]
        for interval in pair["intervals"]:
            assert interval["lower"] <= interval["upper"] <= interval["relabeled"]
    assert sum(len(p["intervals"]) for p in pairs) == quick.interval_pairs
    summary = document["summary"]
    for way in ("stateless", "slots_kept", "relabeled"):
        values = [p["transfers"][way] for p in pairs]
        assert summary[way] == {"median": statistics.median(values), "worst": max(values)}

    # One pair recomputed here, from the traces the study read.
    workloads, _ = study_workloads(None, quick.traces)
    first = pairs[0]
    loads = {w.name: w.loads[: quick.layers] for w in workloads}
    cluster = tuple(document["cluster"])
    old = balance(BalancingProblem(loads[first["old"]], *cluster)).phy2log
    problem = BalancingProblem(loads[first["new"]], *cluster)
    new = balance(problem).phy2log
    experts, gpus = problem.num_experts, problem.num_gpus
    plain = count_transfers(old, new, num_experts=experts, num_gpus=gpus, num_nodes=4)
    assert plain.total == first["transfers"]["stateless"]
    relabeled = migrate(
        old, new, num_experts=experts, num_gpus=gpus, num_nodes=4, keep_nodes=True
    ).phy2log
    fewest = count_transfers(old, relabeled, num_experts=experts, num_gpus=gpus, num_nodes=4)
    assert fewest.total == first["transfers"]["relabeled"]

    (curve,) = document["tradeoffs"]
    points = curve["points"]
    assert [p["eps"] for p in points] == list(quick.eps)
    uppers = [p["upper"] for p in points if p["upper"] is not None]
    assert uppers == sorted(uppers, reverse=True)  # a looser budget never needs more
    for point in points:
        assert point["lower"] is None or point["upper"] is None or point["lower"] <= point["upper"]
        if point["upper"] is not None and point["budget_over_best"] >= curve["peaks"]["relabeled"]:
            assert point["upper"] <= curve["transfers"]["relabeled"]
    assert curve["transfers"]["old"] == 0
    assert sorted(p.name for p in figures.iterdir()) == [
        "migration-budgeted.png",
        "migration-budgeted.svg",
        "migration-tradeoff.png",
        "migration-tradeoff.svg",
    ]

    # The budgeted columns: every tolerance on every pair, never above relabeling, the
    # bound where computed never above the answer, one answer recomputed here.
    for pair in pairs:
        budgeted = pair["budgeted"]
        assert [b["eps"] for b in budgeted] == list(quick.budgeted_eps)
        for b in budgeted:
            assert b["transfers"] <= pair["transfers"]["relabeled"]
            assert (b["bound"] is not None) == (b["eps"] in quick.budgeted_bound_eps)
            if b["bound"] is not None:
                assert b["analytical"] <= b["bound"] <= b["transfers"]
    at_one = quick.budgeted_eps.index(0.01)
    answer = rebalance_incremental(problem, old, eps=0.01)
    assert answer.transfers.sum() == first["budgeted"][at_one]["transfers"]
    rows = document["summary"]["budgeted"]
    assert [r["eps"] for r in rows] == list(quick.budgeted_eps)
    values = [p["budgeted"][at_one]["transfers"] for p in pairs]
    assert rows[at_one]["transfers"] == {"median": statistics.median(values), "worst": max(values)}


def test_layers_are_spread_evenly() -> None:
    assert spread(1, 58) == (28,)
    assert spread(3, 58) == (9, 28, 48)
    assert spread(5, 3) == (0, 1, 2)
    assert spread(0, 10) == ()


def test_asked_for_generated_loads_the_study_generates_as_many_workloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(workloads.DATA_ENV, raising=False)
    found, note = study_workloads("generated", 4)
    assert [w.name for w in found] == [f"generated-lognormal-seed{i}" for i in range(4)]
    assert all(w.generated for w in found)
    assert "4 GENERATED workloads" in note
    assert not np.array_equal(found[0].loads, found[1].loads)


CURVES = [
    TradeoffFigures(
        old="a",
        new="b",
        layer=layer,
        best_peak=100.0,
        points=[
            TradeoffPointFigure(0.0, 1.0, 5, 9, "FEASIBLE"),
            TradeoffPointFigure(0.1, 1.1, 2, 2, "OPTIMAL"),
            TradeoffPointFigure(0.5, 1.5, 0, 0, "OPTIMAL"),
        ],
        peaks={"stateless": 1.02, "slots_kept": 1.02, "relabeled": 1.02, "old": 1.3 + layer},
        transfers={"stateless": 40, "slots_kept": 40, "relabeled": 30, "old": 0},
        seconds=1.0,
    )
    for layer in (3, 7)
]


def test_the_tradeoff_figure_draws_each_curve_and_each_way() -> None:
    figure = plots.tradeoff_figure(CURVES)
    axes = figure.axes
    assert len(axes) == 2
    for ax, curve in zip(axes, CURVES, strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        found = lines[plots.FOUND_LABEL]
        assert np.asarray(found.get_xdata()).tolist() == [1.0, 1.1, 1.5]
        assert np.asarray(found.get_ydata()).tolist() == [9, 2, 0]
        assert np.asarray(lines[plots.PROVEN_LABEL].get_ydata()).tolist() == [5, 2, 0]
        for way in ("stateless", "relabeled", "old"):
            marker = lines[plots.WAY_STYLES[way][2]]
            assert np.asarray(marker.get_xdata()).tolist() == [curve.peaks[way]]
            assert np.asarray(marker.get_ydata()).tolist() == [curve.transfers[way]]
        (band,) = [c for c in ax.collections if c.get_label() == plots.INTERVAL_LABEL]
        assert band.get_paths()  # the band between the bounds is drawn
        assert ax.get_title() == f"layer {curve.layer}"
    assert "from the placement of a to the loads of b" in figure.get_suptitle()
    with pytest.raises(ValueError, match="at least one curve"):
        plots.tradeoff_figure([])


def test_an_unknown_upper_bound_leaves_a_gap_in_the_line() -> None:
    curve = CURVES[0]
    points = [TradeoffPointFigure(0.0, 1.0, 5, None, "UNKNOWN"), *curve.points[1:]]
    figure = plots.tradeoff_figure([TradeoffFigures(**{**curve.__dict__, "points": points})])
    lines = figure.axes[0].get_lines()
    (found,) = [line for line in lines if line.get_label() == plots.FOUND_LABEL]
    assert np.isnan(np.asarray(found.get_ydata())[0])
