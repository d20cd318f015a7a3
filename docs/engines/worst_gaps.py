"""The worst gap to the proven optimum that a targeted search finds for each balancer, on
the gate's tiny problems (the threshold of ``nox -s downstream``'s ``--max-gap`` must sit
above what a working heuristic reaches).

    python docs/engines/worst_gaps.py [--examples 400] [TARGET ...]

Calls run in this process (``properties.suite.in_process``); out-of-domain problems are
skipped; outputs are read as int64 (only their values matter here).
"""

import argparse
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings, target
from hypothesis import strategies as st

from properties.engines import EngineAdapter, find_engine, pinned_targets
from properties.strategies import tiny_problems
from properties.suite import check_optimality, in_process
from spec.problem import BalancingProblem


def worst_gap(engine: EngineAdapter, examples: int) -> tuple[float, Any]:
    rebalance = engine.load()

    def as_int64(*arguments: Any) -> Any:
        result = rebalance(*arguments)
        return tuple(r.long() for r in result) if isinstance(result, tuple) else result

    call = in_process(as_int64)
    worst: list[Any] = [0.0, None]

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.target],
    )
    @given(st.data())
    def search(data: st.DataObject) -> None:
        problem: BalancingProblem = data.draw(tiny_problems())
        cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
        if engine.outside_domain(problem.num_experts, cluster):
            return
        gaps = [g.relative for g in check_optimality(call, problem, None) if g.proven]
        gap = max(gaps, default=0.0)
        target(gap)
        if gap > worst[0]:
            worst[:] = [gap, (problem.loads.tolist(), *cluster)]

    search()
    return worst[0], worst[1]


parser = argparse.ArgumentParser()
parser.add_argument("--examples", type=int, default=400)
parser.add_argument("targets", nargs="*")
args = parser.parse_args()
for name in args.targets or pinned_targets():
    adapter = find_engine(name)
    assert adapter is not None
    gap, where = worst_gap(adapter, args.examples)
    print(f"{adapter.name}: worst gap {gap:.2%} on {where}", flush=True)
