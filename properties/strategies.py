"""Hypothesis strategies for balancing problems and for the inputs of each step.

Loads come in styles that stress different parts of a balancer: many zeros, many ties,
one dominant expert, near-equal loads, a wide dynamic range, and plain random integers
or floats; and the regime engines meet: token counts in the thousands to billions with
exact and near ties (where float32 arithmetic and small additive tie-break offsets stop
separating values), values near the float32 limits, and rows mixing tiny and huge loads.
Shapes run from one expert on one GPU to a few dozen experts on a dozen GPUs, under both
the hierarchical and the global policy; ``scaled_problems`` adds the sizes real models
and deployments use (8 to 384 experts, 1 to 36 nodes, 8 to 288 GPUs, up to a few hundred
redundant slots), each layer with loads of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import strategies as st

from spec.problem import BalancingProblem

if TYPE_CHECKING:
    from properties.suite import CountCase, SwapCase

LOAD_STYLES = (
    "small-integers",
    "integers",
    "floats",
    "zeros",
    "ties",
    "dominant",
    "near-equal",
    "wide",
    "large-ties",
    "float32-extremes",
    "mixed-magnitudes",
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


@st.composite
def large_tie_values(draw: st.DrawFn, count: int) -> list[float]:
    """Hot loads of one scale from 2**11 to 2**40, equal or a few float32 steps below,
    beside cold loads below 2**11; often the two hottest are equal. Every value is an
    integer exact in float32."""
    shift = draw(st.integers(0, 29))
    mantissa = draw(st.integers(2**11 + 8, 2**12 - 1))
    choices = st.one_of(
        st.just(mantissa << shift),
        st.integers(1, 4).map(lambda d: (mantissa - d) << shift),
        st.integers(0, 2**11 - 1),
    )
    values = draw(st.lists(choices, min_size=count, max_size=count))
    if count >= 2 and draw(st.booleans()):  # at least two equal hot experts
        first, second = draw(st.permutations(range(count)))[:2]
        values[first] = values[second] = mantissa << shift
    return [float(v) for v in values]


@dataclass(frozen=True)
class Cluster:
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus)


@st.composite
def load_values(draw: st.DrawFn, count: int, style: str | None = None) -> list[float]:
    """``count`` non-negative loads in one of ``LOAD_STYLES``."""
    chosen = style if style is not None else draw(st.sampled_from(LOAD_STYLES))
    if chosen == "small-integers":
        return [float(x) for x in draw(st.lists(st.integers(0, 6), min_size=count, max_size=count))]
    if chosen == "integers":
        integers = st.integers(0, 2**24)
        return [float(x) for x in draw(st.lists(integers, min_size=count, max_size=count))]
    if chosen == "floats":
        floats = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
        return draw(st.lists(floats, min_size=count, max_size=count))
    if chosen == "zeros":
        mask = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        return [float(draw(st.integers(1, 100))) if m else 0.0 for m in mask]
    if chosen == "ties":
        level = float(draw(st.integers(0, 50)))
        other = float(draw(st.integers(0, 50)))
        mask = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        return [level if m else other for m in mask]
    if chosen == "dominant":
        rest = draw(st.lists(st.integers(0, 10), min_size=count, max_size=count))
        index = draw(st.integers(0, count - 1))
        rest[index] = draw(st.integers(1000, 10**6))
        return [float(x) for x in rest]
    if chosen == "near-equal":
        base = float(draw(st.integers(1, 10**6)))
        steps = draw(st.lists(st.integers(-2, 2), min_size=count, max_size=count))
        return [max(0.0, base + s * 2**-20 * base) for s in steps]
    if chosen == "large-ties":
        return draw(large_tie_values(count))
    if chosen == "float32-extremes":
        near = st.sampled_from(
            [FLOAT32_MAX, FLOAT32_MAX / 2, FLOAT32_MAX / count, FLOAT32_TINY, 0.0, 1.0]
        )
        return draw(st.lists(near, min_size=count, max_size=count))
    if chosen == "mixed-magnitudes":
        tiny = st.floats(1e-30, 1e-20)
        huge = st.floats(1e20, 1e30)
        return draw(st.lists(st.one_of(tiny, huge, st.just(0.0)), min_size=count, max_size=count))
    exponents = draw(st.lists(st.integers(-30, 30), min_size=count, max_size=count))
    return [float(2.0**e) for e in exponents]


@st.composite
def clusters(
    draw: st.DrawFn, num_experts: int | None = None, max_gpus: int = 12
) -> tuple[int, Cluster]:
    """A number of experts and a valid cluster for it, under either policy."""
    hierarchical = draw(st.booleans())
    if hierarchical:
        nodes = draw(st.integers(1, 3))
        groups = nodes * draw(st.integers(1, 3))
        experts = num_experts if num_experts is not None else groups * draw(st.integers(1, 4))
        if experts % groups:
            groups = nodes = 1
        gpus = nodes * draw(st.integers(1, max(1, max_gpus // nodes)))
    else:
        nodes = draw(st.integers(2, 4))
        groups = nodes * draw(st.integers(0, 2)) + draw(st.integers(1, nodes - 1))
        experts = num_experts if num_experts is not None else draw(st.integers(1, 16))
        gpus = draw(st.integers(1, max_gpus))
    per_gpu = draw(st.integers(1, 4))
    per_gpu = max(per_gpu, -(-experts // gpus))
    return experts, Cluster(gpus * per_gpu, groups, nodes, gpus)


@st.composite
def problems(draw: st.DrawFn, max_layers: int = 3) -> BalancingProblem:
    """A valid ``BalancingProblem`` with loads of mixed styles (one style per layer)."""
    experts, cluster = draw(clusters())
    layers = draw(st.integers(1, max_layers))
    loads = [draw(load_values(experts)) for _ in range(layers)]
    return BalancingProblem(np.asarray(loads, dtype=np.float64), *cluster.as_tuple())


INTEGER_STYLES = ("small-integers", "integers", "zeros", "ties", "dominant", "large-ties")
"""Styles whose values are integers exact in int64, float32 and float64."""

REAL_EXPERT_COUNTS = (8, 16, 32, 60, 64, 128, 160, 256, 384)
"""Routed experts per layer in released MoE models (Mixtral 8, Qwen1.5-MoE 60, OLMoE 64,
Qwen3-MoE 128, DeepSeek-V2 160, DeepSeek-V3 256, Kimi K2 384) and a few powers of two."""
MIN_SCALED_GPUS, MAX_SCALED_GPUS, MAX_SCALED_NODES = 8, 288, 36
MAX_REDUNDANCY = 320

SCALED_STYLES = (*INTEGER_STYLES, "token-counts", "floats", "near-equal", "wide")
SCALED_INTEGER_STYLES = (*INTEGER_STYLES, "token-counts")


@st.composite
def scaled_clusters(draw: st.DrawFn) -> tuple[int, Cluster]:
    """A number of experts from ``REAL_EXPERT_COUNTS`` and a cluster of real size: 1 to 36
    nodes of 1 to 8 GPUs (8 to 288 GPUs in all), groups that divide the experts (the
    hierarchical policy) or not a multiple of the nodes (the global one), and 0 to
    ``MAX_REDUNDANCY`` redundant slots, rounded up to fill every GPU equally."""
    experts = draw(st.sampled_from(REAL_EXPERT_COUNTS))
    nodes = draw(st.integers(1, MAX_SCALED_NODES))
    low = max(1, -(-MIN_SCALED_GPUS // nodes))
    per_node = draw(st.sampled_from([k for k in (1, 2, 4, 8) if k >= low] or [8]))
    gpus = min(nodes * per_node, MAX_SCALED_GPUS)
    divisors = [d for d in range(1, experts + 1) if experts % d == 0]
    grouped = [d for d in divisors if d % nodes == 0]
    hierarchical: bool = draw(st.booleans())
    if grouped and hierarchical:
        groups = draw(st.sampled_from(grouped))
    else:
        ungrouped = [d for d in divisors if d % nodes]
        if not ungrouped:  # one node: every group count is hierarchical
            groups = draw(st.sampled_from(divisors))
        else:
            groups = draw(st.sampled_from(ungrouped))
    redundancy = draw(st.integers(0, MAX_REDUNDANCY))
    replicas = gpus * -(-(experts + redundancy) // gpus)
    return experts, Cluster(replicas, groups, nodes, gpus)


def seeded_row(style: str, seed: int, count: int) -> list[float]:
    """``count`` loads of one style, from a seed (``load_values``' styles, and
    ``token-counts``: log-normal token counts as in the traces); cheap at any size."""
    rng = np.random.default_rng(seed)
    if style == "small-integers":
        values = rng.integers(0, 7, count)
    elif style == "integers":
        values = rng.integers(0, 2**24 + 1, count)
    elif style == "zeros":
        values = rng.integers(1, 101, count) * (rng.random(count) < 0.5)
    elif style == "ties":
        high, low = (int(x) for x in rng.integers(0, 51, 2))
        values = np.where(rng.random(count) < 0.5, high, low)
    elif style == "dominant":
        values = rng.integers(0, 11, count)
        values[rng.integers(count)] = rng.integers(1000, 10**6 + 1)
    elif style == "large-ties":
        shift, mantissa = int(rng.integers(0, 30)), int(rng.integers(2**11 + 8, 2**12))
        choices = [mantissa << shift, (mantissa - int(rng.integers(1, 5))) << shift]
        hot = rng.choice(np.asarray(choices, dtype=np.int64), count)
        values = np.where(rng.random(count) < 0.5, hot, rng.integers(0, 2**11, count))
    elif style == "token-counts":
        scale = rng.uniform(1e2, 1e5)
        values = np.minimum(np.round(scale * rng.lognormal(0.0, 1.0, count)), 2**24)
    elif style == "floats":
        return [float(x) for x in rng.uniform(0, 1e6, count)]
    elif style == "near-equal":
        base = float(rng.integers(1, 10**6 + 1))
        return [max(0.0, base + s * 2**-20 * base) for s in rng.integers(-2, 3, count)]
    else:  # wide
        return [float(2.0**e) for e in rng.integers(-30, 31, count)]
    return [float(x) for x in values]


@st.composite
def scaled_problems(
    draw: st.DrawFn, max_layers: int = 4, styles: tuple[str, ...] = SCALED_STYLES
) -> BalancingProblem:
    """A problem of real size (``scaled_clusters``); each layer draws its own style and
    has its own seed, so layers differ."""
    experts, cluster = draw(scaled_clusters())
    layers = draw(st.integers(1, max_layers))
    seed = draw(st.integers(0, 2**16))  # one seed per layer: no two layers alike
    rows = [
        seeded_row(draw(st.sampled_from(styles)), seed + layer, experts) for layer in range(layers)
    ]
    return BalancingProblem(np.asarray(rows, dtype=np.float64), *cluster.as_tuple())


def gate_problems() -> st.SearchStrategy[BalancingProblem]:
    """The gate's problems: small ones of every style (``problems``) and real-size ones
    (``scaled_problems``), about half each."""
    return st.one_of(problems(), scaled_problems())


def gate_integer_problems() -> st.SearchStrategy[BalancingProblem]:
    """``gate_problems`` with integer loads exact in float32 (for the input forms)."""
    return st.one_of(integer_problems(), scaled_problems(styles=SCALED_INTEGER_STYLES))


@st.composite
def layered_problems(draw: st.DrawFn) -> BalancingProblem:
    """Two to six layers that differ (each its own style, consecutive seeds), small or
    of real size: a defect tied to a layer's index, count or position shows on one of them."""
    if draw(st.booleans()):
        experts, cluster = draw(clusters())
    else:
        experts, cluster = draw(scaled_clusters())
    layers = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    rows = [
        seeded_row(draw(st.sampled_from(SCALED_STYLES)), seed + layer, experts)
        for layer in range(layers)
    ]
    return BalancingProblem(np.asarray(rows, dtype=np.float64), *cluster.as_tuple())


def scored_problems() -> st.SearchStrategy[BalancingProblem]:
    """The optimality section's problems: tiny ones the oracle solves exactly, and
    multi-layer ones of any size scored against the best valid placement at hand."""
    return st.one_of(tiny_problems(), layered_problems())


@st.composite
def integer_problems(draw: st.DrawFn, max_layers: int = 3) -> BalancingProblem:
    """Like ``problems`` with integer loads exact in float32 (below 2**24, or large
    with few significant bits), for comparing integer, float32 and float64 inputs."""
    experts, cluster = draw(clusters())
    layers = draw(st.integers(1, max_layers))
    loads = [
        draw(load_values(experts, draw(st.sampled_from(INTEGER_STYLES)))) for _ in range(layers)
    ]
    return BalancingProblem(np.asarray(loads, dtype=np.float64), *cluster.as_tuple())


@st.composite
def tiny_problems(draw: st.DrawFn) -> BalancingProblem:
    """One layer small enough for the exact layer oracle (at most 6 experts, 8 slots);
    a third of them at token scale with ties (``large-ties``)."""
    experts = draw(st.integers(1, 6))
    _, cluster = draw(
        clusters(num_experts=experts, max_gpus=4).filter(lambda c: c[1].num_replicas <= 8)
    )
    style = draw(st.sampled_from((*INTEGER_STYLES, "large-ties", "large-ties")))
    loads = draw(load_values(experts, style))
    return BalancingProblem(np.asarray([loads], dtype=np.float64), *cluster.as_tuple())


def engine_regime_examples() -> list[BalancingProblem]:
    """Hand-picked problems every gate run checks after the generated ones: two equal
    hot experts at token scale (2**11 to 2**40, where float32 sums and small additive
    offsets stop separating values), on GPUs and competing for spare replicas, float32's
    largest values, and tiny beside huge loads."""
    hot = [2.0**20, 2.0**24 + 2.0**12, 2.0**40]
    picked = [BalancingProblem([[h, h, 0.0, 7.0]], 4, 1, 1, 2) for h in hot]
    picked += [BalancingProblem([[h, 3.0, h, 5.0, 1.0, h]], 8, 3, 1, 4) for h in hot[:2]]
    picked += [
        BalancingProblem([[1.0, 1.0, h, h]], 6, 1, 1, gpus)
        for h in (2048.0, hot[0])
        for gpus in (3, 6)
    ]
    picked.append(BalancingProblem([[FLOAT32_MAX, FLOAT32_MAX, 1.0, 0.0]], 4, 2, 2, 2))
    picked.append(BalancingProblem([[1e-30, 1e30, 1e-25, 1e25]], 8, 2, 1, 4))
    return picked


@st.composite
def count_cases(draw: st.DrawFn) -> CountCase:
    """Refinement A inputs: water-filled counts, or any valid counts."""
    from impl.steps import water_fill
    from properties.suite import CountCase

    n = draw(st.integers(1, 10))
    loads = draw(load_values(n))
    slots = n + draw(st.integers(0, 12))
    if draw(st.booleans()):
        return CountCase(loads, water_fill(loads, slots))
    return CountCase(loads, [draw(st.integers(1, 5)) for _ in range(n)])


@st.composite
def swap_cases(draw: st.DrawFn) -> SwapCase:
    """Refinement B inputs: a diverse-greedy packing of water-filled replicas, or any
    full assignment."""
    from impl.steps import layout_by_expert, pack_diverse, water_fill
    from properties.suite import SwapCase

    num_gpus = draw(st.integers(1, 4))
    cap = draw(st.integers(1, 4))
    slots = num_gpus * cap
    n = draw(st.integers(1, slots))
    loads = draw(load_values(n))
    counts = water_fill(loads, slots)
    labels = layout_by_expert(counts)
    weights = [loads[i] / counts[i] for i in labels]
    if draw(st.booleans()):
        packing = pack_diverse(weights, labels, num_gpus)
        return SwapCase(weights, labels, packing.pack, packing.rank, num_gpus)
    places = draw(st.permutations([(g, r) for g in range(num_gpus) for r in range(cap)]))
    return SwapCase(weights, labels, [g for g, _ in places], [r for _, r in places], num_gpus)


# --- rebalancing from an old placement ------------------------------------------------------


@st.composite
def placement_rows(draw: st.DrawFn, problem: BalancingProblem) -> list[int]:
    """One valid layer placement, uniformly shaped: a random split of the groups over the
    nodes, random counts inside each node, the node's slots in random order."""
    from oracle.pipeline import node_experts

    nodes, groups = problem.packing_nodes, problem.packing_groups
    order = draw(st.permutations(range(groups)))
    per = groups // nodes
    row: list[int] = []
    for node in range(nodes):
        experts = node_experts(problem, order[node * per : (node + 1) * per])
        spare = problem.slots_per_node - len(experts)
        extra = draw(st.lists(st.sampled_from(experts), min_size=spare, max_size=spare))
        row.extend(draw(st.permutations(experts + extra)))
    return row


@st.composite
def rebalance_cases(
    draw: st.DrawFn, max_gpus: int = 6, max_layers: int = 2
) -> tuple[BalancingProblem, np.ndarray, np.ndarray]:
    """A problem, an old placement and a new one (each random or the balancer's)."""
    from impl.balancer import balance

    experts, cluster = draw(
        clusters(max_gpus=max_gpus).filter(lambda c: c[1].num_replicas // c[1].num_gpus <= 4)
    )
    layers = draw(st.integers(1, max_layers))
    loads = np.asarray([draw(load_values(experts)) for _ in range(layers)], dtype=np.float64)
    problem = BalancingProblem(loads, *cluster.as_tuple())
    placements = []
    for _ in range(2):
        if draw(st.booleans()):
            seed_variant = draw(st.booleans())
            placements.append(
                balance(problem, variant="refined" if seed_variant else "baseline").phy2log
            )
        else:
            rows = [draw(placement_rows(problem)) for _ in range(layers)]
            placements.append(np.asarray(rows, dtype=np.int64))
    return problem, placements[0], placements[1]


PREVIOUS_ORIGINS = ("random", "reference", "baseline", "target")
"""Where the gate's old placements come from: a random valid placement, this project's
reference or baseline on other loads, or the target itself on other loads."""


@dataclass(frozen=True)
class RebalanceCase:
    """A rebalance the gate asks for, as plain data (a failing case is reported as is).

    The new loads ``weight`` on the cluster, from the old placement ``previous``
    (``[L, R]`` expert ids); for ``origin == "target"`` the old placement is the
    target's own answer on ``previous_weight``, so ``previous`` is None until the gate
    has asked the target. ``previous_weight`` is the loads the old placement was made
    for (None for a random one).
    """

    weight: list[list[float]]
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    origin: str
    previous: list[list[int]] | None
    previous_weight: list[list[float]] | None

    @property
    def cluster(self) -> tuple[int, int, int, int]:
        return (self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus)

    @property
    def problem(self) -> BalancingProblem:
        return BalancingProblem(np.asarray(self.weight, dtype=np.float64), *self.cluster)

    @property
    def previous_problem(self) -> BalancingProblem | None:
        if self.previous_weight is None:
            return None
        return BalancingProblem(np.asarray(self.previous_weight, dtype=np.float64), *self.cluster)


@st.composite
def rebalance_gate_cases(draw: st.DrawFn) -> RebalanceCase:
    """Rebalances for the gate: small clusters of both policies (a third of them tiny
    enough for the exact migration oracle: one layer, at most 6 experts and 8 slots),
    integer loads (exact in every dtype, as engines count tokens), and an old placement
    of every origin in ``PREVIOUS_ORIGINS``; the old loads are independent of the new
    ones or the new ones with a few experts changed (what a real rebalance sees)."""
    from impl.balancer import balance

    if draw(st.integers(0, 2)) == 0:
        experts = draw(st.integers(1, 6))
        _, cluster = draw(
            clusters(num_experts=experts, max_gpus=4).filter(
                lambda c: c[1].num_replicas <= 8 and c[1].num_gpus >= 2
            )
        )
        layers = 1
    else:
        experts, cluster = draw(
            clusters(max_gpus=8).filter(lambda c: c[1].num_replicas // c[1].num_gpus <= 4)
        )
        layers = draw(st.integers(1, 2))
    styles = st.sampled_from(INTEGER_STYLES)
    loads = [draw(load_values(experts, draw(styles))) for _ in range(layers)]
    if draw(st.booleans()):
        old_loads = [draw(load_values(experts, draw(styles))) for _ in range(layers)]
    else:
        old_loads = [list(row) for row in loads]
        for row in old_loads:
            for index in draw(st.lists(st.integers(0, experts - 1), max_size=3)):
                row[index] = float(draw(st.integers(0, 2**20)))
    problem = BalancingProblem(np.asarray(loads, dtype=np.float64), *cluster.as_tuple())
    origin = draw(st.sampled_from(PREVIOUS_ORIGINS))
    previous: list[list[int]] | None = None
    previous_weight: list[list[float]] | None = old_loads
    if origin == "random":
        previous, previous_weight = [draw(placement_rows(problem)) for _ in range(layers)], None
    elif origin in ("reference", "baseline"):
        old_problem = BalancingProblem(np.asarray(old_loads, dtype=np.float64), *cluster.as_tuple())
        variant = "refined" if origin == "reference" else "baseline"
        previous = balance(old_problem, variant=variant).phy2log.tolist()
    return RebalanceCase(loads, *cluster.as_tuple(), origin, previous, previous_weight)


@dataclass(frozen=True)
class ScheduleCase:
    """A transfer schedule the gate asks for: from ``previous`` to ``phy2log`` (``[L, R]``
    expert ids, valid placements of the cluster for ``num_experts`` experts)."""

    num_experts: int
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    previous: list[list[int]]
    phy2log: list[list[int]]

    @property
    def problem(self) -> BalancingProblem:
        """The cluster's problem (the loads do not matter to a schedule: all ones)."""
        loads = np.ones((len(self.previous), self.num_experts))
        return BalancingProblem(
            loads, self.num_replicas, self.num_groups, self.num_nodes, self.num_gpus
        )


@st.composite
def schedule_cases(draw: st.DrawFn) -> ScheduleCase:
    """Pairs of valid placements of one cluster (random or a balancer's), the new one
    as a rebalance makes it half of the time (relabeled for the fewest transfers and
    slot-preserved), so that both many and few transfers are scheduled."""
    from properties.rebalance import relabeling_optimum  # it imports this module

    problem, old, new = draw(rebalance_cases(max_gpus=8, max_layers=2))
    if draw(st.booleans()):
        new = relabeling_optimum(problem, old, new)
    return ScheduleCase(
        problem.num_experts,
        problem.num_replicas,
        problem.num_groups,
        problem.num_nodes,
        problem.num_gpus,
        np.asarray(old).tolist(),
        np.asarray(new).tolist(),
    )
