"""Proven gaps on the traces: each balancer's peak against the least peak of a valid
placement at hand (the reference's or the baseline's), trace by trace and cluster by
cluster, as the gate's traces section scores them (``properties.quality``).

    python -m studies.proven_gaps                      # reference, baseline, pinned engines
    python -m studies.proven_gaps --targets impl:rebalance_experts --traces 2

Engines missing from the engine cache are listed as skipped (``python -m
properties.engines fetch`` fills it). One process scores every target, so each trace's
bounds are computed once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace

from properties.gate import THOROUGH, GateReport, TraceResult, run_gate
from properties.isolation import TargetError

DEFAULT_TARGETS = ("impl:rebalance_experts", "impl:rebalance_experts_baseline")


def all_targets() -> list[str]:
    from properties.engines import pinned_targets

    return [*DEFAULT_TARGETS, *pinned_targets()]


def score(target: str, traces: int | None, data: str | None) -> GateReport:
    """The gate's traces section alone, every trace at every cluster, one call each."""
    budget = replace(THOROUGH, traces=traces, traces_elsewhere=traces, trace_repeats=1)
    return run_gate(target, checks=["traces"], budget=budget, data=data)


def rows_of(report: GateReport) -> list[str]:
    """One line per cluster: traces, mean and worst proven gap, where the worst is."""
    results: list[TraceResult] = [*report.traces, *report.traces_elsewhere]
    lines = []
    for cluster in dict.fromkeys(tuple(t.cluster) for t in results):
        here = [t for t in results if tuple(t.cluster) == cluster]
        worst = max(here, key=lambda t: t.max_proven_gap)
        mean = statistics.fmean(t.mean_proven_gap for t in here)
        lines.append(
            f"{report.target:<40}{cluster!s:<18}{len(here):>7}{mean:>11.4%}"
            f"{worst.max_proven_gap:>11.4%}  {worst.trace} layer {worst.max_proven_gap_layer} "
            f"({worst.max_proven_gap_source})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.proven_gaps", description=__doc__)
    parser.add_argument("--targets", nargs="+", help="gate targets (default: all)")
    parser.add_argument("--traces", type=int, help="score only the first N traces")
    parser.add_argument("--data", help="the traces' folder")
    args = parser.parse_args(argv)
    print(
        f"{'target':<40}{'cluster':<18}{'traces':>7}{'mean':>11}{'worst':>11}  "
        "worst at (bound's source)"
    )
    for target in args.targets or all_targets():
        try:
            report = score(target, args.traces, args.data)
        except TargetError as error:
            print(f"{target:<40}skipped: {error}")
            continue
        if report.verdict != "pass" and not report.traces:
            print(
                f"{target:<40}not scored: {report.findings[0].message if report.findings else ''}"
            )
            continue
        for line in rows_of(report):
            print(line)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
