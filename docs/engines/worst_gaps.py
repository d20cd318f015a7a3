"""The worst gap to the proven optimum that a targeted search finds for each balancer, on
the gate's tiny problems (the threshold of ``nox -s downstream``'s ``--max-gap`` must sit
above what a working heuristic reaches).

    python docs/engines/worst_gaps.py [--examples 400] [TARGET ...]

TARGET is an engine target (default: every pinned one), ``reference`` or ``baseline``.
Before the search, every target meets the hand-picked ``FAMILY``: one hot expert and
G - 1 cold ones on 2G slots of G GPUs. Water-filling gives the hot expert G + 1
replicas (any fewer raises its replica load), so one GPU holds two of them: peak
2W/(G + 1), where one hot replica per GPU and the cold experts on the other slots give
W/G + 1 (W/2 + 1/2 on 2 GPUs); the gap tends to (G - 1)/(G + 1): 33 % on 2 GPUs, 50 %
on 3, 60 % on 4 (the largest the gate's tiny problems allow), 78 % on 8. The lines
printed are search results, not bounds: no upper bound on a greedy balancer's gap is
proved here.

Calls run in this process (``properties.suite.in_process``); out-of-domain problems are
skipped; outputs are read as int64 (only their values matter here). Each line's input
is re-measured by ``tests/test_engine_reproductions.py`` against docs/ENGINES.md.
"""

import argparse
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings, target
from hypothesis import strategies as st

from properties.engines import find_engine, pinned_targets
from properties.strategies import tiny_problems
from properties.suite import check_optimality, in_process
from spec.problem import BalancingProblem

HOT = 1000000
FAMILY = [
    BalancingProblem([[1.0] * (gpus - 1) + [float(HOT)]], 2 * gpus, 1, 1, gpus)
    for gpus in (2, 3, 4)
]


def balancer(name: str) -> tuple[Callable[..., Any], Callable[[BalancingProblem], bool]]:
    """The target's call, and whether a problem is outside its caller's domain."""
    if name in ("reference", "baseline"):
        from impl import rebalance_experts

        variant = "refined" if name == "reference" else "baseline"

        def own(*arguments: Any) -> Any:
            return rebalance_experts(*arguments, variant=variant)

        return own, lambda problem: False
    engine = find_engine(name)
    assert engine is not None, name
    rebalance = engine.load()

    def as_int64(*arguments: Any) -> Any:
        result = rebalance(*arguments)
        return tuple(r.long() for r in result) if isinstance(result, tuple) else result

    def outside(problem: BalancingProblem) -> bool:
        cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
        return engine.outside_domain(problem.num_experts, cluster) is not None

    return as_int64, outside


def describe(problem: BalancingProblem) -> tuple[Any, ...]:
    cluster = (problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus)
    return (problem.loads.tolist(), *cluster)


def proven_gap(function: Callable[..., Any], problem: BalancingProblem) -> float:
    gaps = check_optimality(in_process(function), problem, None)
    return max((g.relative for g in gaps if g.proven), default=0.0)


def worst_gap(name: str, examples: int) -> tuple[float, Any]:
    function, outside = balancer(name)
    worst: list[Any] = [0.0, None]

    def measure(problem: BalancingProblem) -> float:
        if outside(problem):
            return 0.0
        gap = proven_gap(function, problem)
        if gap > worst[0]:
            worst[:] = [gap, describe(problem)]
        return gap

    for problem in FAMILY:
        measure(problem)

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
        target(measure(data.draw(tiny_problems())))

    search()
    return worst[0], worst[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("targets", nargs="*")
    args = parser.parse_args()
    for name in args.targets or ["reference", "baseline", *pinned_targets()]:
        gap, where = worst_gap(name, args.examples)
        print(f"{name}: worst gap {gap:.2%} on {where}", flush=True)
