"""Fidelity: does a port reproduce the reference exactly, and if not, where does it part?

``compare(problem, phy2log, same_as)`` compares a target's placement with the output of a
named reference (``refined`` with or without its refinements, or ``baseline``) layer by
layer. For a layer that differs it finds the FIRST step, in pipeline order, whose outcome
differs: the group-to-node ``split``, the replica ``counts`` (water-filling, or the
baseline's greedy replication), ``refinement-a``, the ``packing`` of replicas onto GPUs,
``refinement-b``, the order of the ``slots`` inside a GPU, and (when the target returns
it) the replica numbering of ``log2phy``. Everything after a first difference follows from
it, so later steps are not judged.

Each step is judged by replaying the reference's decisions against the target's outcome,
with the spec's own keys: at every decision the target may take any choice whose keys
equal the reference's choice (two groups of equal load, two GPUs with equal keys, two
experts with equal ``w/c``). A target reachable that way differs only by a **tie**; one
reachable only when keys within ``NEAR`` (relative) count as equal is a **near tie**
(what float32 arithmetic does to float64 keys); anything else is a **real** divergence,
reported with the decision and the keys compared. Every differing layer also says
whether the two placements are **equivalent for balance**: the same multiset of GPU
loads, computed exactly (which is blind to relabeling GPUs and nodes).

``run_fidelity(call, same_as)`` drives a target (any ``properties.suite.Caller``) on
Hypothesis-generated problems (derandomized, shrinking to the smallest diverging input)
and on the real traces.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, Phase, example, given, settings, target
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.errors import Flaky

from impl.balancer import Variant
from impl.explain import LayerTrace, NodeTrace, explain_layer, phy2log_row
from impl.steps import Packing, bisected_counts, refine_counts, refine_swap
from properties.strategies import load_values
from properties.suite import Caller, Finding, call_ok, read_outputs
from properties.workloads import TRACE_CLUSTER, Workload, default_workloads
from spec.placement import check_placement, placement_from_phy2log
from spec.problem import BalancingProblem, Policy

IntArray = npt.NDArray[np.int64]

NEAR = 1e-6
"""Keys closer than this (relative) make a near tie: float32 arithmetic, which rounds
each operation to 2**-24 relative, moves float64 keys by less than this (keys below
float32's smallest normal number are near ties too)."""


class Step(enum.Enum):
    """The steps of the pipeline, in order."""

    CONTRACT = "contract"
    SPLIT = "split"
    COUNTS = "counts"
    REFINEMENT_A = "refinement-a"
    PACKING = "packing"
    REFINEMENT_B = "refinement-b"
    SLOTS = "slots"
    LOG2PHY = "log2phy"


STEP_WORDS = {
    Step.CONTRACT: "the placement is invalid",
    Step.SPLIT: "group-to-node split",
    Step.COUNTS: "replica counts",
    Step.REFINEMENT_A: "refinement A",
    Step.PACKING: "replicas to GPUs",
    Step.REFINEMENT_B: "refinement B",
    Step.SLOTS: "slot order inside a GPU",
    Step.LOG2PHY: "replica numbering (log2phy)",
}


class Kind(enum.Enum):
    """How the first differing decision differs: the target took a choice the
    reference's rule also allows under another breaking of exact ties (``TIE``), or of
    keys within ``NEAR`` (``NEAR_TIE``), or one the rule never takes (``RULE``: the
    target follows another rule there). The kind says nothing about balance: a layer's
    effect on the GPU loads is its ``Balance``."""

    TIE = "tie"
    NEAR_TIE = "near-tie"
    RULE = "another rule"


class Balance(enum.Enum):
    """What a layer's placement does to the GPU loads, against the reference's.

    ``EQUIVALENT``: the same multiset of GPU loads up to rounding (each sorted load
    within ``NEAR`` of the layer's peak): ties, near ties, replica numbering, slot order.
    ``SAME_PEAK``: other GPU loads, the same peak up to rounding. ``WORSE`` and
    ``BETTER``: the peak differs beyond rounding."""

    IDENTICAL = "identical"
    EQUIVALENT = "equivalent for balance"
    SAME_PEAK = "same peak, other GPU loads"
    WORSE = "worse for balance"
    BETTER = "better for balance"


TOLERATED = frozenset({Balance.IDENTICAL, Balance.EQUIVALENT, Balance.SAME_PEAK})
"""The classes ``--same-balance`` passes: the peak, which balance is measured by (the
mean GPU load is the same for every placement), equals the reference's up to rounding.
A tie the specification leaves open can give other GPU loads at the same peak (two
groups of equal load but other experts, split the other way)."""

WORST_FIRST = (
    Balance.WORSE,
    Balance.BETTER,
    Balance.SAME_PEAK,
    Balance.EQUIVALENT,
    Balance.IDENTICAL,
)


@dataclass(frozen=True)
class Reference:
    """A reference output: the variant of ``impl.balance`` and its refinement flags."""

    name: str
    variant: Variant
    refine_a: bool
    refine_b: bool


REFERENCES: dict[str, Reference] = {
    r.name: r
    for r in (
        Reference("refined", "refined", True, True),
        Reference("refined-without-a", "refined", False, True),
        Reference("refined-without-b", "refined", True, False),
        Reference("refined-without-refinements", "refined", False, False),
        Reference("baseline", "baseline", False, False),
    )
}


def reference_named(name: object) -> Reference:
    """The reference called ``name``; ValueError listing the names otherwise."""
    if isinstance(name, Reference):
        return name
    if isinstance(name, str) and name.startswith("seed"):  # the variant's earlier name
        name = "refined" + name.removeprefix("seed")
    if not isinstance(name, str) or name not in REFERENCES:
        raise ValueError(f"same_as must be one of {sorted(REFERENCES)}, got {name!r}")
    return REFERENCES[name]


# ---------------------------------------------------------------------------------------
# Replays: one step of the reference against the target's outcome of that step.


@dataclass
class Replay:
    """The outcome of replaying one step's decisions against the target's outcome.

    ``agrees``: the target's outcome is one the step produces under some breaking of its
    ties (exactly the reference's when ``tie`` is None). Otherwise ``divergence`` names
    the first decision the target cannot have taken and ``near`` says whether its keys
    were within ``NEAR``. ``ties_met`` lists the kinds of tie met on the way.
    ``packing``: the packing the replay reached, when it agrees.
    """

    agrees: bool = True
    tie: str | None = None
    divergence: str | None = None
    near: bool = False
    ties_met: set[str] = field(default_factory=set)
    packing: Packing | None = None

    def diverge(self, message: str, near: bool = False) -> None:
        self.agrees, self.divergence, self.near = False, message, near

    def note_tie(self, message: str) -> None:
        if self.tie is None:
            self.tie = message


FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def close(a: float, b: float) -> bool:
    """Equal within ``NEAR``, relative to the larger magnitude, or both too small for a
    float32 (normal) number: keys float32 arithmetic may find equal."""
    largest = max(abs(a), abs(b))
    return abs(a - b) <= NEAR * largest or largest < FLOAT32_TINY


def kind_of_peaks(mine: float, theirs: float) -> Kind:
    """Whether two peaks reached by different moves are a tie, a near tie or apart."""
    return Kind.TIE if mine == theirs else Kind.NEAR_TIE if close(mine, theirs) else Kind.RULE


def fmt(value: float) -> str:
    return f"{value:.9g}"


def replay_packing(
    weights: Sequence[float],
    labels: Sequence[int],
    num_packs: int,
    target: Sequence[Counter[int]],
    *,
    diverse: bool,
    item: Callable[[int], str],
    pack: Callable[[int], str],
) -> Replay:
    """Replay a greedy packing (``pack_balanced``, or ``pack_diverse`` when ``diverse``)
    against the target's contents: ``target[p][label]`` items of ``label`` in pack ``p``.

    Items of one label must share a weight (replicas of one expert; groups are their own
    labels): they are interchangeable. The reference visits items by descending weight
    (ties: lower index) and takes the pack with room that minimises (same-label items
    held, load, item count, index) when ``diverse``, else (load, index). Item order
    among equal weights and the pack among equal keys are ties. The replay stops at the
    first divergence; ``packing`` is what it reached when it agrees.
    """
    replay = Replay()
    cap = len(weights) // num_packs
    indices: dict[int, list[int]] = {}
    for j in range(len(weights)):
        indices.setdefault(labels[j], []).append(j)
    weight_of = {label: weights[js[0]] for label, js in indices.items()}
    placed = dict.fromkeys(indices, 0)
    load = [0.0] * num_packs
    size = [0] * num_packs
    held: list[Counter[int]] = [Counter() for _ in range(num_packs)]
    reached = Packing(pack=[-1] * len(weights), rank=[-1] * len(weights))

    def key(p: int, label: int) -> tuple[float, ...]:
        if diverse:
            return (held[p].get(label, 0), load[p], size[p])
        return (load[p],)

    def describe_key(p: int, label: int) -> str:
        if diverse:
            return f"(held {held[p][label]}, load {fmt(load[p])}, count {size[p]})"
        return f"(load {fmt(load[p])})"

    def admissible(label: int) -> list[int]:
        keyed = [(key(p, label), p) for p in range(num_packs) if size[p] < cap]
        best = min(keyed)[0]
        return [p for k, p in keyed if k == best]

    def need(p: int, label: int) -> int:
        return target[p].get(label, 0) - held[p].get(label, 0)

    for _ in range(len(weights)):
        waiting = [label for label in indices if placed[label] < len(indices[label])]
        top = max(weight_of[label] for label in waiting)
        tied = sorted(
            (label for label in waiting if weight_of[label] == top),
            key=lambda label: indices[label][placed[label]],
        )
        first = tied[0]
        packs = admissible(first)
        if len(tied) > 1:
            replay.ties_met.add("equal-item-weights")
        if len(packs) > 1 and load[packs[0]] > 0:
            replay.ties_met.add("equal-pack-keys")
        if diverse and load[packs[0]] > 0:
            chosen_key = key(packs[0], first)
            if any(
                size[p] < cap and key(p, first)[:2] == chosen_key[:2] and p not in packs
                for p in range(num_packs)
            ):
                replay.ties_met.add("equal-pack-loads")
        choice: tuple[int, int] | None = None
        if need(packs[0], first) > 0:
            choice = (first, packs[0])
        else:
            for label in tied:
                found = [p for p in admissible(label) if need(p, label) > 0]
                if found:
                    choice = (label, found[0])
                    break
            if choice is not None:
                label, p = choice
                if label != first:
                    replay.note_tie(
                        f"{item(first)} and {item(label)} have equal load {fmt(top)}: the "
                        f"reference places {item(first)} first, the target {item(label)}"
                    )
                else:
                    replay.note_tie(
                        f"{item(first)} goes to {pack(packs[0])} in the reference, to "
                        f"{pack(p)} in the target, both with keys {describe_key(p, first)}"
                    )
        if choice is None:
            wanted = [p for p in range(num_packs) if need(p, first) > 0 and size[p] < cap]
            near = False
            if wanted:
                other = wanted[0]
                same_held = not diverse or held[other][first] == held[packs[0]][first]
                near = same_held and close(load[other], load[packs[0]])
                where = f"the target puts it on {pack(other)} {describe_key(other, first)}"
            else:
                where = "the target has no room left for it"
            near = near or any(
                label != first
                and close(weight_of[label], top)
                and any(need(p, label) > 0 for p in admissible(label))
                for label in waiting
            )
            replay.diverge(
                f"{item(first)} (load {fmt(top)}) goes to {pack(packs[0])} "
                f"{describe_key(packs[0], first)} in the reference; {where}",
                near,
            )
            return replay
        label, p = choice
        j = indices[label][placed[label]]
        reached.pack[j], reached.rank[j] = p, size[p]
        placed[label] += 1
        load[p] += weight_of[label]
        size[p] += 1
        held[p][label] += 1
    replay.packing = reached
    return replay


def replay_water_fill(
    loads: Sequence[float], num_slots: int, target: Sequence[int], name: Callable[[int], str]
) -> Replay:
    """Replay water-filling against the target's counts: the counts at the bisected
    threshold are fixed; each top-up round may serve any of the experts whose ``w/c``
    ties at the round's cut (the reference serves the lower index). The replay stops at
    the first divergence."""
    replay = Replay()
    n = len(loads)
    if num_slots == n:
        return replay
    if all(w == 0 for w in loads):
        spare = num_slots - n
        rule = [1 + spare // n + (1 if i < spare % n else 0) for i in range(n)]
        if list(target) != rule:
            replay.note_tie(
                "every load in the row is 0, so every spread of the spare slots is equal; "
                "the reference gives them to the first experts"
            )
        return replay
    counts = bisected_counts(loads, num_slots)
    for i in range(n):
        if target[i] < counts[i]:
            peak = max(w / c for w, c in zip(loads, counts, strict=True))
            near = target[i] > 0 and loads[i] / target[i] <= peak * (1 + NEAR)
            replay.diverge(
                f"{name(i)} (load {fmt(loads[i])}) gets {counts[i]} replicas at the bisected "
                f"threshold already; the target gives it {target[i]}",
                near,
            )
            return replay
    left = num_slots - sum(counts)
    while left > 0:
        take = min(left, n)
        ratio = [loads[i] / counts[i] for i in range(n)]
        order = sorted(range(n), key=lambda i: (-ratio[i], i))
        cut = ratio[order[take - 1]]
        above = [i for i in order[:take] if ratio[i] > cut]
        at_cut = [i for i in range(n) if ratio[i] == cut]
        wanted = take - len(above)
        if len(at_cut) > wanted:
            replay.ties_met.add("equal-top-up-loads")
        served = [i for i in at_cut if target[i] > counts[i]][:wanted]
        missing = [i for i in above if target[i] <= counts[i]]
        if missing or len(served) < wanted:
            skipped = missing[0] if missing else next(i for i in at_cut if i not in served)
            extra = [
                i for i in range(n) if target[i] > counts[i] and i not in above and i not in served
            ]
            best = max(extra, key=lambda i: (ratio[i], -i)) if extra else None
            near = best is not None and close(ratio[best], ratio[skipped])
            instead = (
                f"the target serves {name(best)} (w/c {fmt(ratio[best])})"
                if best is not None
                else "the target serves no other expert"
            )
            replay.diverge(
                f"top-up: the reference gives one more replica to {name(skipped)} "
                f"(w/c {fmt(ratio[skipped])}); {instead}",
                near,
            )
            return replay
        reference = at_cut[:wanted]
        if sorted(served) != reference:
            other = next(i for i in served if i not in reference)
            mine = next(i for i in reference if i not in served)
            replay.note_tie(
                f"top-up: {name(mine)} and {name(other)} have equal w/c {fmt(cut)}; the "
                f"reference serves {name(mine)}, the target {name(other)}"
            )
        for i in above + served:
            counts[i] += 1
        left -= take
    return replay


def replay_replication(
    loads: Sequence[float],
    num_slots: int,
    target: Sequence[int],
    name: Callable[[int], str],
    sequence: Sequence[int] | None = None,
) -> Replay:
    """Replay the baseline's replication (one extra replica at a time to the highest
    ``w/c``, ties: lower index) against the target's counts, or against the order in
    which it created its extra replicas when ``sequence`` is given."""
    replay = Replay()
    n = len(loads)
    counts = [1] * n
    for step in range(num_slots - n):
        ratio = [loads[i] / counts[i] for i in range(n)]
        top = max(ratio)
        best = [i for i in range(n) if ratio[i] == top]
        if len(best) > 1:
            replay.ties_met.add("equal-replica-loads")
        first = best[0]
        chosen: int | None
        if sequence is not None:
            chosen = sequence[step]
        elif target[first] > counts[first]:
            chosen = first
        else:
            chosen = next((i for i in best if target[i] > counts[i]), None)
        if chosen is None or chosen not in best:
            if chosen is None:
                extra = [i for i in range(n) if target[i] > counts[i]]
                chosen = max(extra, key=lambda i: (ratio[i], -i)) if extra else None
            near = chosen is not None and close(ratio[chosen], top)
            instead = (
                f"the target gives it to {name(chosen)} (w/c {fmt(ratio[chosen])})"
                if chosen is not None
                else "the target gives it to no one"
            )
            replay.diverge(
                f"replication: extra replica {step + 1} goes to {name(first)} "
                f"(w/c {fmt(top)}) in the reference; {instead}",
                near,
            )
            return replay
        if chosen != first:
            replay.note_tie(
                f"replication: {name(first)} and {name(chosen)} have equal w/c {fmt(top)}; "
                f"extra replica {step + 1} goes to {name(first)} in the reference, to "
                f"{name(chosen)} in the target"
            )
        counts[chosen] += 1
    return replay


# ---------------------------------------------------------------------------------------
# One layer.


@dataclass(frozen=True)
class Divergence:
    """The first difference of a layer: the step, where, how, and its effect on balance."""

    layer: int
    step: Step
    kind: Kind
    node: int | None
    detail: str
    balance: Balance
    peak_reference: float
    peak_target: float
    peak_ratio: float = 1.0  # target / reference, exact before rounding to a float

    @property
    def balance_equivalent(self) -> bool:
        return self.balance is Balance.EQUIVALENT

    def effect(self) -> str:
        """The effect on balance, in words."""
        if self.balance is Balance.EQUIVALENT:
            return "equivalent for balance"
        if self.balance is Balance.SAME_PEAK:
            return f"same peak {fmt(self.peak_target)}, other GPU loads"
        word = "WORSE" if self.balance is Balance.WORSE else "BETTER"
        return (
            f"{word} for balance: peak {fmt(self.peak_target)}, the reference's "
            f"{fmt(self.peak_reference)} (x{self.peak_ratio:.6g})"
        )

    def summary(self) -> str:
        where = f"layer {self.layer}" + ("" if self.node is None else f" node {self.node}")
        return (
            f"{where}: first difference at {self.step.value} ({STEP_WORDS[self.step]}), "
            f"{self.kind.value}: {self.detail}; {self.effect()}"
        )


def severity(divergence: Divergence) -> tuple[int, float]:
    """Sort key, worst first: worse for balance by peak ratio, better (the ratio
    farthest below 1 first), same peak, equivalent."""
    rank = WORST_FIRST.index(divergence.balance)
    ratio = divergence.peak_ratio
    return (rank, -ratio if divergence.balance is Balance.WORSE else ratio)


@dataclass(frozen=True)
class LayerVerdict:
    layer: int
    identical: bool
    divergence: Divergence | None

    @property
    def balance(self) -> Balance:
        return Balance.IDENTICAL if self.divergence is None else self.divergence.balance


def balance_of(reference: Sequence[Fraction], target: Sequence[Fraction]) -> Balance:
    """The class of a differing layer from both placements' exact GPU loads."""
    ours, theirs = sorted(reference), sorted(target)
    peak = max(ours[-1], theirs[-1])
    if float(peak) < FLOAT32_TINY:
        return Balance.EQUIVALENT
    rounding = Fraction(NEAR) * peak
    if all(abs(a - b) <= rounding for a, b in zip(ours, theirs, strict=True)):
        return Balance.EQUIVALENT
    if abs(ours[-1] - theirs[-1]) <= rounding:
        return Balance.SAME_PEAK
    return Balance.WORSE if theirs[-1] > ours[-1] else Balance.BETTER


def peak_ratio(reference: Sequence[Fraction], target: Sequence[Fraction]) -> float:
    """Peak of the target over the reference's (1 when both are 0)."""
    mine, theirs = max(reference), max(target)
    if mine == 0:
        return 1.0 if theirs == 0 else math.inf
    return float(theirs / mine)


def exact_gpu_loads(problem: BalancingProblem, layer: int, row: Sequence[int]) -> list[Fraction]:
    """Each GPU's load as an exact fraction (float loads are exact dyadic rationals)."""
    counts = Counter(row)
    share = {e: Fraction(float(problem.loads[layer, e])) / c for e, c in counts.items()}
    cap = problem.slots_per_gpu
    return [
        sum((share[e] for e in row[g * cap : (g + 1) * cap]), Fraction(0))
        for g in range(problem.num_gpus)
    ]


@dataclass(frozen=True)
class NodeView:
    """What the target did in one node, in the reference's node-local numbering."""

    counts: list[int]
    gpus: list[list[int]]  # local labels slot by slot, per GPU of the node


def packing_contents(
    packing_pack: Sequence[int], layout: Sequence[int], gpus: int
) -> list[Counter[int]]:
    contents: list[Counter[int]] = [Counter() for _ in range(gpus)]
    for label, gpu in zip(layout, packing_pack, strict=True):
        contents[gpu][label] += 1
    return contents


def one_move(before: Sequence[int], after: Sequence[int]) -> tuple[int, int] | None:
    """``(donor, receiver)`` when ``after`` is ``before`` with one replica moved."""
    diff = [a - b for a, b in zip(after, before, strict=True)]
    down = [i for i, d in enumerate(diff) if d == -1]
    up = [i for i, d in enumerate(diff) if d == 1]
    if len(down) == 1 and len(up) == 1 and sum(d != 0 for d in diff) == 2:
        return down[0], up[0]
    return None


def one_exchange(
    before: Sequence[Counter[int]], after: Sequence[Counter[int]]
) -> tuple[int, int, int, int] | None:
    """``(gpu_a, label_a, gpu_b, label_b)`` when ``after`` is ``before`` with one item of
    ``label_a`` on ``gpu_a`` exchanged for one of ``label_b`` on ``gpu_b``."""
    changed = [g for g in range(len(before)) if before[g] != after[g]]
    if len(changed) != 2:
        return None
    a, b = changed
    lost_a, gained_a = before[a] - after[a], after[a] - before[a]
    lost_b, gained_b = before[b] - after[b], after[b] - before[b]
    if (
        sum(lost_a.values()) == 1
        and lost_a == gained_b
        and gained_a == lost_b
        and sum(gained_a.values()) == 1
    ):
        return a, next(iter(lost_a)), b, next(iter(lost_b))
    return None


def gpu_load(contents: Counter[int], weight: Callable[[int], float]) -> float:
    return sum(weight(label) * k for label, k in sorted(contents.items()))


def peak_of(contents: Sequence[Counter[int]], weight: Callable[[int], float]) -> float:
    return max(gpu_load(gpu, weight) for gpu in contents)


def within_refinement_a(
    loads: Sequence[float], counts: Sequence[int], move: tuple[int, int]
) -> bool:
    """Whether ``move`` (donor, receiver) is one refinement A tries on ``counts``: the
    donor among the two highest ``w/c`` with ``c > 1``, the receiver among the two
    lowest (ties at the second place included)."""
    donor, receiver = move
    ratio = [w / c for w, c in zip(loads, counts, strict=True)]
    donors = sorted((ratio[i] for i in range(len(counts)) if counts[i] > 1), reverse=True)
    receivers = sorted(ratio)
    return (
        counts[donor] > 1
        and ratio[donor] >= donors[:2][-1]
        and ratio[receiver] <= receivers[:2][-1]
    )


def within_refinement_b(
    contents: Sequence[Counter[int]],
    exchange: tuple[int, int, int, int],
    weight: Callable[[int], float],
) -> tuple[int, int, int, int] | None:
    """The exchange as ``(heavy GPU, its replica, light GPU, its replica)`` when it is
    one refinement B tries on ``contents``: the heavy GPU the heaviest, the light one
    among the two lightest others, the replicas among the two heaviest of the one and
    the two lightest of the other (ties at the second place included); else None."""
    loads = [gpu_load(gpu, weight) for gpu in contents]
    first, label_first, second, label_second = exchange
    for heavy, a, light, b in (
        (first, label_first, second, label_second),
        (second, label_second, first, label_first),
    ):
        if loads[heavy] != max(loads):
            continue
        lights = sorted(loads[g] for g in range(len(loads)) if g != heavy)
        heavy_members = sorted((weight(x) for x in contents[heavy].elements()), reverse=True)
        light_members = sorted(weight(x) for x in contents[light].elements())
        if (
            loads[light] <= lights[:2][-1]
            and weight(a) >= heavy_members[:2][-1]
            and weight(b) <= light_members[:2][-1]
        ):
            return heavy, a, light, b
    return None


def counts_before_refinement_a(loads: Sequence[float], target: Sequence[int]) -> list[list[int]]:
    """The counts from which one refinement-A move gives ``target``: its donor must then
    hold the highest ``w/c`` (else no move lowers the peak)."""
    n = len(target)
    ratio = [w / c for w, c in zip(loads, target, strict=True)]
    found = []
    for donor in range(n):
        before = loads[donor] / (target[donor] + 1)
        if any(ratio[i] > before for i in range(n) if i != donor):
            continue
        for receiver in range(n):
            if receiver == donor or target[receiver] < 2:
                continue
            counts = list(target)
            counts[donor] += 1
            counts[receiver] -= 1
            if refine_counts(loads, counts) == list(target):
                found.append(counts)
    return found


def contents_before_refinement_b(
    target: Sequence[Counter[int]], weight: Callable[[int], float]
) -> list[list[Counter[int]]]:
    """The GPU contents from which one refinement-B swap gives ``target``: the swap
    takes a heavier replica off the GPU that was then the heaviest."""
    loads = [gpu_load(gpu, weight) for gpu in target]
    found = []
    for heavy in range(len(target)):
        for light in range(len(target)):
            if heavy == light:
                continue
            others = max(
                (loads[g] for g in range(len(target)) if g not in (heavy, light)), default=0.0
            )
            for moved in target[light]:
                for back in target[heavy]:
                    gain = weight(moved) - weight(back)
                    if gain <= 0 or loads[heavy] + gain < others:
                        continue
                    if loads[light] - gain > loads[heavy] + gain:
                        continue
                    before = [Counter(gpu) for gpu in target]
                    before[heavy][back] -= 1
                    before[heavy][moved] += 1
                    before[light][moved] -= 1
                    before[light][back] += 1
                    before = [+gpu for gpu in before]
                    if within_refinement_b(before, (heavy, moved, light, back), weight):
                        found.append(before)
    return found


class LayerComparison:
    """The comparison of one layer, step by step (see ``compare_layer``)."""

    def __init__(
        self,
        problem: BalancingProblem,
        trace: LayerTrace,
        reference: Reference,
        row: list[int],
        log2phy_row: list[list[int]] | None,
    ) -> None:
        self.problem = problem
        self.trace = trace
        self.reference = reference
        self.row = row
        self.log2phy_row = log2phy_row
        self.ties_met: set[str] = set()

    # Each step returns (step, kind, node, detail) for its first difference, or None.

    def split(self) -> tuple[Step, Kind, int | None, str] | None:
        problem, trace = self.problem, self.trace
        if problem.policy is not Policy.HIERARCHICAL or problem.packing_nodes == 1:
            return None
        size, slots = problem.group_size, problem.slots_per_node
        node_of_slot = {e: s // slots for s, e in enumerate(self.row)}
        target_node = [node_of_slot[g * size] for g in range(problem.num_groups)]
        reference_node = trace.group_packing.pack
        contents: list[Counter[int]] = [Counter() for _ in range(problem.num_nodes)]
        for group, node in enumerate(target_node):
            contents[node][group] += 1
        groups_per_node = problem.num_groups // problem.num_nodes
        if groups_per_node > 1:
            replay = replay_packing(
                trace.group_loads,
                list(range(problem.num_groups)),
                problem.num_nodes,
                contents,
                diverse=False,
                item=lambda g: f"group {g}",
                pack=lambda n: f"node {n}",
            )
            self.ties_met |= {f"split:{t}" for t in replay.ties_met}
        if target_node == reference_node:
            return None
        if groups_per_node == 1:
            group = next(g for g in range(problem.num_groups) if target_node[g] != g)
            return (
                Step.SPLIT,
                Kind.RULE,
                None,
                f"with one group per node group {group} belongs on node {group}; the target "
                f"puts it on node {target_node[group]}",
            )
        return self.judge(Step.SPLIT, None, replay)

    def judge(
        self, step: Step, node: int | None, replay: Replay
    ) -> tuple[Step, Kind, int | None, str]:
        if replay.agrees:
            assert replay.tie is not None, "a replay that agrees exactly cannot differ"
            return step, Kind.TIE, node, replay.tie
        assert replay.divergence is not None
        kind = Kind.NEAR_TIE if replay.near else Kind.RULE
        return step, kind, node, replay.divergence

    def view(self, node: NodeTrace) -> NodeView:
        problem = self.problem
        local = {e: i for i, e in enumerate(node.experts)}
        held = Counter(
            self.row[node.node * problem.slots_per_node : (node.node + 1) * problem.slots_per_node]
        )
        counts = [held[e] for e in node.experts]
        cap, gpus = problem.slots_per_gpu, problem.gpus_per_node
        base = node.node * problem.slots_per_node
        layout = [
            [local[e] for e in self.row[base + q * cap : base + (q + 1) * cap]] for q in range(gpus)
        ]
        return NodeView(counts, layout)

    def expert_name(self, node: NodeTrace) -> Callable[[int], str]:
        return lambda i: f"expert {node.experts[i]}"

    def counts(self) -> tuple[Step, Kind, int | None, str] | None:
        refined = self.reference.variant == "refined"
        slots = self.problem.slots_per_node
        for node in self.trace.nodes:
            target = self.view(node).counts
            name = self.expert_name(node)
            if refined:
                replay = replay_water_fill(node.loads, slots, target, name)
            else:
                replay = replay_replication(node.loads, slots, target, name)
            self.ties_met |= {f"counts:{t}" for t in replay.ties_met}
            if target == node.counts:
                continue
            if not refined:
                return self.judge(Step.COUNTS, node.node, replay)
            found = self.refinement_a(node, target, replay)
            if found is not None:
                return found
        return None

    def refinement_a(
        self, node: NodeTrace, target: list[int], replay: Replay
    ) -> tuple[Step, Kind, int | None, str]:
        """Counts differ under ``refined``: water-filling or refinement A."""
        name = self.expert_name(node)

        def peak(counts: Sequence[int]) -> float:
            return max(w / c for w, c in zip(node.loads, counts, strict=True))

        moved = one_move(node.filled, node.counts)
        if target == node.filled:
            assert moved is not None
            return (
                Step.REFINEMENT_A,
                Kind.RULE,
                node.node,
                f"the target equals the reference with refinement A off: the reference moves "
                f"a replica from {name(moved[0])} to {name(moved[1])} (peak replica load "
                f"{fmt(peak(node.filled))} -> {fmt(peak(node.counts))})",
            )
        if replay.agrees:
            return self.judge(Step.COUNTS, node.node, replay)
        if self.reference.refine_a:
            for before in counts_before_refinement_a(node.loads, target):
                earlier = replay_water_fill(node.loads, len(node.layout), before, name)
                if earlier.agrees and earlier.tie is not None:
                    return (
                        Step.COUNTS,
                        Kind.TIE,
                        node.node,
                        f"{earlier.tie} (refinement A then acts on the target's counts as it "
                        f"would on the reference's)",
                    )
        theirs = one_move(node.filled, target)
        if (
            theirs is not None
            and within_refinement_a(node.loads, node.filled, theirs)
            and peak(target) < peak(node.filled)
        ):
            text = (
                f"the target moves a replica from {name(theirs[0])} to {name(theirs[1])} "
                f"(peak replica load {fmt(peak(node.filled))} -> {fmt(peak(target))})"
            )
            if moved is None:
                off = "" if self.reference.refine_a else " (refinement A off)"
                return (
                    Step.REFINEMENT_A,
                    Kind.RULE,
                    node.node,
                    f"{text}; the reference{off} moves none",
                )
            return (
                Step.REFINEMENT_A,
                kind_of_peaks(peak(target), peak(node.counts)),
                node.node,
                f"{text}; the reference moves one from {name(moved[0])} to {name(moved[1])} "
                f"(peak {fmt(peak(node.counts))})",
            )
        return self.judge(Step.COUNTS, node.node, replay)

    def packing(self) -> tuple[Step, Kind, int | None, str] | None:
        problem = self.problem
        refined = self.reference.variant == "refined"
        gpus, cap = problem.gpus_per_node, problem.slots_per_gpu
        for node in self.trace.nodes:
            view = self.view(node)
            target = [Counter(labels) for labels in view.gpus]
            final = packing_contents(node.packing.pack, node.layout, gpus)
            name = self.expert_name(node)

            def gpu(q: int, node: NodeTrace = node) -> str:
                return f"GPU {node.node * gpus + q}"

            def replica(label: int, name: Callable[[int], str] = name) -> str:
                return f"a replica of {name(label)}"

            if cap == 1:
                if target == final:
                    continue
                flat = [labels[0] for labels in view.gpus]
                if refined:
                    q = next(q for q in range(gpus) if flat[q] != node.layout[q])
                    return (
                        Step.PACKING,
                        Kind.RULE,
                        node.node,
                        f"with one slot per GPU replica {q} of the layout ({name(node.layout[q])}) "
                        f"belongs on {gpu(q)}; the target puts {name(flat[q])} there",
                    )
                n = len(node.experts)
                if flat[:n] != list(range(n)):
                    q = next(q for q in range(n) if flat[q] != q)
                    return (
                        Step.PACKING,
                        Kind.RULE,
                        node.node,
                        f"with one slot per GPU {gpu(q)} holds the first replica of "
                        f"{name(q)} in the reference; the target puts {name(flat[q])} there",
                    )
                replay = replay_replication(
                    node.loads, problem.slots_per_node, view.counts, name, flat[n:]
                )
                self.ties_met |= {f"packing:{t}" for t in replay.ties_met}
                step, kind, where, detail = self.judge(Step.PACKING, node.node, replay)
                return (
                    step,
                    kind,
                    where,
                    "with one slot per GPU the extra replicas sit in the order they were "
                    f"created: {detail}",
                )
            replay = replay_packing(
                node.weights,
                node.layout,
                gpus,
                target,
                diverse=refined,
                item=replica,
                pack=gpu,
            )
            self.ties_met |= {f"packing:{t}" for t in replay.ties_met}
            if target == final:
                continue
            if not refined:
                return self.judge(Step.PACKING, node.node, replay)
            greedy = packing_contents(node.packed.pack, node.layout, gpus)

            def weight(label: int, node: NodeTrace = node) -> float:
                return node.loads[label] / node.counts[label]

            swapped = one_exchange(greedy, final)
            if target == greedy:
                assert swapped is not None
                h, a, lq, b = swapped
                return (
                    Step.REFINEMENT_B,
                    Kind.RULE,
                    node.node,
                    f"the target equals the reference with refinement B off: the reference "
                    f"swaps {replica(a)} on {gpu(h)} with {replica(b)} on {gpu(lq)} (peak "
                    f"{fmt(peak_of(greedy, weight))} -> {fmt(peak_of(final, weight))})",
                )
            if replay.agrees:
                return self.judge(Step.PACKING, node.node, replay)
            if self.reference.refine_b:
                for before in contents_before_refinement_b(target, weight):
                    earlier = replay_packing(
                        node.weights,
                        node.layout,
                        gpus,
                        before,
                        diverse=True,
                        item=replica,
                        pack=gpu,
                    )
                    if not earlier.agrees or earlier.tie is None or earlier.packing is None:
                        continue
                    after = refine_swap(node.weights, earlier.packing, gpus)
                    if packing_contents(after.pack, node.layout, gpus) == target:
                        return (
                            Step.PACKING,
                            Kind.TIE,
                            node.node,
                            f"{earlier.tie} (refinement B then acts on the target's packing "
                            f"as it would on the reference's)",
                        )
            exchange = one_exchange(greedy, target)
            theirs = None if exchange is None else within_refinement_b(greedy, exchange, weight)
            if theirs is not None and peak_of(target, weight) < peak_of(greedy, weight):
                h, a, lq, b = theirs
                text = (
                    f"the target swaps {replica(a)} on {gpu(h)} with {replica(b)} on {gpu(lq)} "
                    f"(peak {fmt(peak_of(greedy, weight))} -> {fmt(peak_of(target, weight))})"
                )
                if swapped is None:
                    off = "" if self.reference.refine_b else " (refinement B off)"
                    return (
                        Step.REFINEMENT_B,
                        Kind.RULE,
                        node.node,
                        f"{text}; the reference{off} swaps none",
                    )
                mine, theirs_peak = peak_of(final, weight), peak_of(target, weight)
                h0, a0, l0, b0 = swapped
                return (
                    Step.REFINEMENT_B,
                    kind_of_peaks(mine, theirs_peak),
                    node.node,
                    f"{text}; the reference swaps {replica(a0)} on {gpu(h0)} with "
                    f"{replica(b0)} on {gpu(l0)} (peak {fmt(mine)})",
                )
            return self.judge(Step.PACKING, node.node, replay)
        return None

    def slots(self) -> tuple[Step, Kind, int | None, str] | None:
        problem = self.problem
        gpus, cap = problem.gpus_per_node, problem.slots_per_gpu
        for node in self.trace.nodes:
            view = self.view(node)
            reference: list[list[int]] = [[-1] * cap for _ in range(gpus)]
            for label, q, rank in zip(
                node.layout, node.packing.pack, node.packing.rank, strict=True
            ):
                reference[q][rank] = label
            touched = {
                node.packing.pack[j]
                for j in range(len(node.layout))
                if node.packing.pack[j] != node.packed.pack[j]
            }
            for q in range(gpus):
                if view.gpus[q] == reference[q]:
                    continue
                names = [node.experts[label] for label in reference[q]]
                theirs = [node.experts[label] for label in view.gpus[q]]
                where = f"GPU {node.node * gpus + q} holds the same replicas in another order"
                if q in touched:
                    return (
                        Step.SLOTS,
                        Kind.RULE,
                        node.node,
                        f"{where}: reference {names} (member order after refinement B's "
                        f"swap), target {theirs}",
                    )
                loads = [node.loads[label] / node.counts[label] for label in view.gpus[q]]
                pairs = list(itertools.pairwise(loads))
                if all(a >= b for a, b in pairs):
                    kind, reason = Kind.TIE, "equal replica loads arrive in either order"
                else:
                    kind = (
                        Kind.NEAR_TIE if all(a >= b or close(a, b) for a, b in pairs) else Kind.RULE
                    )
                    reason = "the reference orders them by arrival (descending replica load)"
                return (
                    Step.SLOTS,
                    kind,
                    node.node,
                    f"{where}: reference {names}, target {theirs}; {reason}",
                )
        return None

    def log2phy(self, reference_row: list[list[int]]) -> tuple[Step, Kind, int | None, str] | None:
        if self.log2phy_row is None:
            return None
        for expert, (mine, theirs) in enumerate(zip(reference_row, self.log2phy_row, strict=True)):
            if mine != theirs:
                where = (
                    f"expert {expert}'s replicas are numbered in another order: reference "
                    f"slots {mine}, target {theirs}"
                )
                if self.problem.slots_per_gpu == 1:
                    return Step.LOG2PHY, Kind.RULE, None, f"{where} (one slot per GPU)"
                return (
                    Step.LOG2PHY,
                    Kind.TIE,
                    None,
                    f"{where}; its replicas weigh the same, so the numbering follows the order "
                    f"the packing visits them in (the reference: lower replica index first)",
                )
        return None


def ragged_log2phy(log2phy: IntArray, logcnt: IntArray) -> list[list[int]]:
    """One layer's ``log2phy`` as each expert's slots in replica order (padding dropped)."""
    return [[int(s) for s in log2phy[e, : int(logcnt[e])]] for e in range(logcnt.shape[0])]


def reference_log2phy(problem: BalancingProblem, trace: LayerTrace) -> list[list[int]]:
    slots: list[list[tuple[int, int]]] = [[] for _ in range(problem.num_experts)]
    for node in trace.nodes:
        for label, slot, rank in zip(node.layout, node.slots, node.ranks, strict=True):
            slots[node.experts[label]].append((rank, slot))
    return [[slot for _, slot in sorted(pairs)] for pairs in slots]


def compare_layer(
    problem: BalancingProblem,
    layer: int,
    phy2log: Sequence[int],
    same_as: str | Reference,
    *,
    log2phy: list[list[int]] | None = None,
    trace: LayerTrace | None = None,
) -> LayerVerdict:
    """Compare one layer of a valid target placement with the reference ``same_as``.

    ``phy2log`` is the layer's row; ``log2phy``, when the target returned one, is each
    expert's slots in replica order (``ragged_log2phy``). ``trace`` may pass the
    reference's ``explain_layer`` when it is already at hand.
    """
    reference = reference_named(same_as)
    if trace is None:
        trace = explain_layer(
            problem,
            layer,
            variant=reference.variant,
            refine_a=reference.refine_a,
            refine_b=reference.refine_b,
        )
    row = [int(e) for e in phy2log]
    mine = phy2log_row(problem, trace)
    mine_log2phy = reference_log2phy(problem, trace)
    if row == mine and (log2phy is None or log2phy == mine_log2phy):
        return LayerVerdict(layer, True, None)
    comparison = LayerComparison(problem, trace, reference, row, log2phy)
    found = (
        comparison.split()
        or comparison.counts()
        or comparison.packing()
        or comparison.slots()
        or comparison.log2phy(mine_log2phy)
    )
    assert found is not None, "a layer that differs must differ at some step"
    step, kind, node, detail = found
    ours, theirs = exact_gpu_loads(problem, layer, mine), exact_gpu_loads(problem, layer, row)
    return LayerVerdict(
        layer,
        False,
        Divergence(
            layer=layer,
            step=step,
            kind=kind,
            node=node,
            detail=detail,
            balance=balance_of(ours, theirs),
            peak_reference=float(max(ours)),
            peak_target=float(max(theirs)),
            peak_ratio=peak_ratio(ours, theirs),
        ),
    )


def ties_met(problem: BalancingProblem, layer: int, same_as: str | Reference) -> set[str]:
    """The kinds of tie the reference itself meets on a layer (its own output replayed):
    ``split:equal-item-weights`` (two groups of equal load), ``counts:equal-top-up-loads``,
    ``packing:equal-pack-loads`` (two GPUs with equal load, and equal same-label count,
    decided by replica count or index), ``packing:equal-pack-keys``, ... Pack ties of
    empty packs are left out (every greedy starts with one)."""
    reference = reference_named(same_as)
    trace = explain_layer(
        problem,
        layer,
        variant=reference.variant,
        refine_a=reference.refine_a,
        refine_b=reference.refine_b,
    )
    comparison = LayerComparison(problem, trace, reference, phy2log_row(problem, trace), None)
    assert comparison.split() is None
    assert comparison.counts() is None
    assert comparison.packing() is None
    return comparison.ties_met


# ---------------------------------------------------------------------------------------
# A whole placement.


@dataclass
class FidelityReport:
    """The comparison of one placement (all layers) with a reference."""

    reference: str
    layers: list[LayerVerdict]
    violations: list[str] = field(default_factory=list)

    @property
    def divergences(self) -> list[Divergence]:
        return [v.divergence for v in self.layers if v.divergence is not None]

    @property
    def identical(self) -> bool:
        return not self.violations and all(v.identical for v in self.layers)

    def tally(self) -> Counter[tuple[Step, Kind]]:
        return Counter((d.step, d.kind) for d in self.divergences)

    def classes(self) -> Counter[Balance]:
        """How many layers fall in each ``Balance`` class."""
        return Counter(v.balance for v in self.layers)

    def worst_first(self) -> list[Divergence]:
        """The divergences, the one that changes balance most first."""
        return sorted(self.divergences, key=severity)

    @property
    def max_ratio(self) -> float:
        """The largest peak ratio target / reference over the layers (1 if identical)."""
        return max((d.peak_ratio for d in self.divergences), default=1.0)

    @property
    def min_ratio(self) -> float:
        return min((d.peak_ratio for d in self.divergences), default=1.0)

    def summary(self) -> str:
        """One line: how many layers differ, their effect on balance, where first."""
        total = len(self.layers)
        if self.violations:
            return f"invalid placement: {self.violations[0]}"
        found = self.divergences
        if not found:
            return f"identical to {self.reference} on all {total} layer(s)"
        classes = self.classes()
        effect = ", ".join(f"{classes[b]} {b.value}" for b in WORST_FIRST[:-1] if b in classes)
        steps: Counter[Step] = Counter(d.step for d in found)
        parts = []
        for step in Step:
            if step not in steps:
                continue
            kinds = Counter(d.kind for d in found if d.step is step)
            how = ", ".join(f"{kinds[k]} {k.value}" for k in Kind if k in kinds)
            parts.append(f"{step.value} in {steps[step]} ({how})")
        return (
            f"differs from {self.reference} in {len(found)} of {total} layer(s): {effect}; "
            f"first difference at {'; '.join(parts)}"
        )

    def lines(self, limit: int = 5) -> list[str]:
        """The summary, then one line per divergence, worst first (the first ``limit``)."""
        result = [self.summary()]
        ordered = self.worst_first()
        result += [f"  {d.summary()}" for d in ordered[:limit]]
        if len(ordered) > limit:
            result.append(f"  ... and {len(ordered) - limit} more layer(s)")
        return result


def as_rows(value: Any) -> IntArray | None:
    """An integer array from a target's output, or None when it is not one."""
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    return None


def compare(
    problem: BalancingProblem,
    phy2log: Any,
    same_as: str | Reference,
    *,
    log2phy: Any = None,
    logcnt: Any = None,
) -> FidelityReport:
    """Compare a target's placement with the reference ``same_as`` on every layer.

    ``phy2log`` alone is enough (``log2phy`` and ``logcnt`` are derived from it); when
    the target's ``log2phy`` and ``logcnt`` are given, its replica numbering is compared
    too. An invalid placement is reported as such (``violations``), not compared.
    """
    reference = reference_named(same_as)
    rows = as_rows(phy2log)
    if rows is None:
        return FidelityReport(reference.name, [], ["phy2log is not an integer array"])
    numbered = log2phy is not None and logcnt is not None
    if numbered:
        table, counts = as_rows(log2phy), as_rows(logcnt)
    else:
        table, counts = None, None
    if table is None or counts is None:
        if rows.ndim == 2:
            table, counts = placement_from_phy2log(rows, problem.num_experts)
        else:
            table, counts = np.zeros((0, 0, 1), np.int64), np.zeros((0, 0), np.int64)
    violations = check_placement(problem, rows, table, counts)
    if violations:
        return FidelityReport(reference.name, [], [str(v) for v in violations])
    verdicts = [
        compare_layer(
            problem,
            layer,
            rows[layer].tolist(),
            reference,
            log2phy=ragged_log2phy(table[layer], counts[layer]) if numbered else None,
        )
        for layer in range(problem.num_layers)
    ]
    return FidelityReport(reference.name, verdicts)


# ---------------------------------------------------------------------------------------
# Driving a target.


class TargetFailed(Exception):
    """The target failed on a valid problem (raised, crashed, hung, or returned junk)."""


def fidelity_of(
    call: Caller, problem: BalancingProblem, same_as: str | Reference
) -> FidelityReport:
    """Call the target on ``problem`` and compare its answer with ``same_as``."""
    try:
        result = call_ok(call, problem)
        outputs = read_outputs(result, problem)
    except Finding as finding:
        raise TargetFailed(str(finding)) from None
    if outputs.derived is None:
        return compare(
            problem, outputs.phy2log, same_as, log2phy=outputs.log2phy, logcnt=outputs.logcnt
        )
    return compare(problem, outputs.phy2log, same_as)


@dataclass(frozen=True)
class DivergingInput:
    """The smallest generated input found with a divergence (or a failure)."""

    search: str
    input: dict[str, Any]
    report: FidelityReport | None
    failure: str | None = None
    kind: Balance | None = None  # the class it stands for; None: its worst layer

    @property
    def divergence(self) -> Divergence | None:
        """The layer it is reported for: of class ``kind``, else the worst."""
        if self.report is None or self.report.violations:
            return None
        ordered = self.report.worst_first()
        if self.kind is not None:
            ordered = [d for d in ordered if d.balance is self.kind] or ordered
        return ordered[0] if ordered else None

    def summary(self) -> str:
        if self.failure is not None:
            return f"{self.search}: the target failed: {self.failure}"
        assert self.report is not None
        found = self.divergence
        if found is None:
            return f"{self.search}: {self.report.summary()}"
        return f"{self.search}: {found.summary()}"


@dataclass(frozen=True)
class TraceFidelity:
    trace: str
    generated: bool
    report: FidelityReport | None
    failure: str | None = None
    cluster: tuple[int, int, int, int] = TRACE_CLUSTER


def describe_problem(problem: BalancingProblem) -> dict[str, Any]:
    loads = [[int(x) if float(x).is_integer() else float(x) for x in row] for row in problem.loads]
    return {
        "weight": loads,
        "num_replicas": problem.num_replicas,
        "num_groups": problem.num_groups,
        "num_nodes": problem.num_nodes,
        "num_gpus": problem.num_gpus,
    }


class StopHunt(Exception):
    """Raised inside a search to stop it without shrinking (the target failed)."""


def describe_layer(problem: BalancingProblem, layer: int) -> str:
    """Where a generated layer is: its index and the whole input (a target may depend on
    the other layers), cut short past ``SHOWN`` characters."""
    return f"layer {layer} of {shown(describe_problem(problem))}"


SHOWN = 400


def shown(value: dict[str, Any]) -> str:
    """An input as JSON, cut short past ``SHOWN`` characters (the JSON report has it
    whole)."""
    text = json.dumps(value)
    if len(text) <= SHOWN:
        return text
    shape = f"{len(value['weight'])} x {len(value['weight'][0])} loads"
    cluster = tuple(value[k] for k in ("num_replicas", "num_groups", "num_nodes", "num_gpus"))
    return f"{text[:SHOWN]}... ({shape} at {cluster}; whole in the JSON report)"


@dataclass
class PolicyTally:
    """The layers compared under one policy, by ``Balance`` class, with the worst and
    the best peak ratio target / reference and where each was met."""

    policy: str
    classes: Counter[Balance] = field(default_factory=Counter)
    worst_ratio: float = 1.0
    worst_input: str | None = None
    best_ratio: float = 1.0
    best_input: str | None = None

    @property
    def layers(self) -> int:
        return sum(self.classes.values())

    def add(self, report: FidelityReport, where: Callable[[int], str], count: bool = True) -> None:
        """Count the report's layers (unless not ``count``: a shrunk input, a replay of
        one already counted) and keep its worst and best ratios when beyond those met."""
        for verdict in report.layers:
            self.classes[verdict.balance] += count
            found = verdict.divergence
            if found is None:
                continue
            if found.balance is Balance.WORSE and found.peak_ratio > self.worst_ratio:
                self.worst_ratio, self.worst_input = found.peak_ratio, where(verdict.layer)
            if found.balance is Balance.BETTER and found.peak_ratio < self.best_ratio:
                self.best_ratio, self.best_input = found.peak_ratio, where(verdict.layer)

    def summary(self) -> str:
        counts = ", ".join(f"{self.classes[b]} {b.value}" for b in reversed(WORST_FIRST))
        line = f"{self.policy}: {self.layers} layer(s) compared: {counts}"
        if self.worst_input is None:
            line += "; none worse for balance"
        else:
            line += (
                f"; worst peak ratio target/reference {self.worst_ratio:.6g} on {self.worst_input}"
            )
        if self.best_input is not None:
            line += f"; best {self.best_ratio:.6g} on {self.best_input}"
        return line

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "classes": {b.value: self.classes[b] for b in reversed(WORST_FIRST)},
            "worst_ratio": self.worst_ratio,
            "worst_input": self.worst_input,
            "best_ratio": self.best_ratio,
            "best_input": self.best_input,
        }


SEARCH_NAMES = {
    Balance.WORSE: "worst divergence for balance",
    Balance.BETTER: "divergence most better for balance",
    Balance.SAME_PEAK: "divergence with the same peak, other GPU loads",
    Balance.EQUIVALENT: "divergence equivalent for balance",
}


def shrink_condition(kind: Balance, extreme: float) -> Callable[[FidelityReport], bool]:
    """What a smaller input must keep while it shrinks: a layer at least as worse (or
    better) as the one found, else a layer of the same class or worse."""
    if kind is Balance.WORSE:
        return lambda r: any(
            d.balance is Balance.WORSE and d.peak_ratio >= extreme for d in r.divergences
        )
    if kind is Balance.BETTER:
        return lambda r: any(
            d.balance is Balance.BETTER and d.peak_ratio <= extreme for d in r.divergences
        )
    rank = WORST_FIRST.index(kind)
    return lambda r: any(WORST_FIRST.index(d.balance) <= rank for d in r.divergences)


def search_divergences(
    call: Caller,
    reference: Reference,
    strategy: st.SearchStrategy[BalancingProblem],
    examples: int,
    tallies: dict[str, PolicyTally],
    picked: Sequence[BalancingProblem] = (),
    shrink_seconds: float = 60.0,
) -> list[DivergingInput]:
    """Look for the divergence that changes the peak most, then shrink it.

    The first pass runs ``picked`` then ``examples`` generated problems (derandomized),
    steering Hypothesis (``target``) towards the largest peak ratio target / reference
    and towards the smallest, and tallies every layer in ``tallies`` by policy. It
    keeps the most extreme input of each ``Balance`` class. The second pass replays the
    same search and shrinks the input of the class that matters most (an invalid
    placement, else worse, better, same peak, equivalent) while it keeps a layer as far
    from the reference as the one found; after ``shrink_seconds`` it stops shrinking.
    The other classes' inputs are reported as found. A target that fails stops both
    passes at that input."""
    found: dict[Balance, tuple[BalancingProblem, FidelityReport]] = {}
    invalid: list[tuple[BalancingProblem, FidelityReport]] = []
    failed: list[tuple[BalancingProblem, str]] = []
    shrinking: list[Callable[[FidelityReport], bool]] = []
    smallest: list[tuple[BalancingProblem, FidelityReport]] = []
    deadline = [math.inf]

    def keep(problem: BalancingProblem, report: FidelityReport) -> None:
        if report.violations:
            invalid.append((problem, report))
            return
        tally = tallies.setdefault(problem.policy.value, PolicyTally(problem.policy.value))
        tally.add(report, lambda layer: describe_layer(problem, layer))
        for kind in WORST_FIRST[:-1]:
            layers = [d for d in report.divergences if d.balance is kind]
            if not layers:
                continue
            before = found.get(kind)
            farther = before is None or (
                report.max_ratio > before[1].max_ratio
                if kind is Balance.WORSE
                else report.min_ratio < before[1].min_ratio
                if kind is Balance.BETTER
                else False
            )
            if farther:
                found[kind] = (problem, report)

    def explore(examples_: int, explicit: Sequence[BalancingProblem]) -> None:
        @settings(
            max_examples=examples_,
            derandomize=True,
            database=None,
            deadline=None,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
        )
        @given(strategy)
        def search_once(problem: BalancingProblem) -> None:
            if failed:
                raise StopHunt  # once the target fails, every example stops here
            if shrinking and smallest and time.monotonic() > deadline[0]:
                # out of time: only the smallest input found so far fails again
                if describe_problem(problem) == describe_problem(smallest[-1][0]):
                    smallest.append(smallest[-1])
                    raise AssertionError(smallest[-1][1].summary())
                return
            try:
                report = fidelity_of(call, problem, reference)
            except TargetFailed as error:
                failed.append((problem, str(error)))
                raise StopHunt from None
            worse = min(report.max_ratio, 1e300)
            better = min(1 / report.min_ratio if report.min_ratio > 0 else 1e300, 1e300)
            if currently_in_test_context():
                target(worse, label="peak ratio target/reference")
                target(better, label="peak ratio reference/target")
            if not shrinking:
                keep(problem, report)
                if report.violations:
                    raise StopHunt
                return
            if bool(report.violations) or shrinking[0](report):
                smallest.append((problem, report))
                raise AssertionError(report.summary())

        for problem in reversed(explicit):
            search_once = example(problem)(search_once)
        with contextlib.suppress(AssertionError, StopHunt, Flaky):
            search_once()

    explore(examples, picked)
    results: list[DivergingInput] = []
    if failed:
        problem, message = failed[0]
        return [DivergingInput("the target failed", describe_problem(problem), None, message)]
    top: tuple[str, BalancingProblem, FidelityReport] | None = None
    if invalid:
        top = ("invalid placement", *invalid[0])
        shrinking.append(lambda r: bool(r.violations))
    else:
        for kind in WORST_FIRST[:-1]:
            if kind in found:
                problem, report = found[kind]
                extreme = report.max_ratio if kind is Balance.WORSE else report.min_ratio
                top = (SEARCH_NAMES[kind], problem, report)
                shrinking.append(shrink_condition(kind, extreme))
                break
    if top is None:
        return results
    deadline[0] = time.monotonic() + shrink_seconds
    explore(examples, picked)
    name, problem, report = top
    if failed:
        problem, message = failed[0]
        return [DivergingInput("the target failed", describe_problem(problem), None, message)]
    if smallest:  # Hypothesis replays the smallest failing example last
        problem, report = smallest[-1]
        results.append(DivergingInput(f"{name} (shrunk)", describe_problem(problem), report))
        # a shrunk input may be farther from the reference than any the search met
        tally = tallies.setdefault(problem.policy.value, PolicyTally(problem.policy.value))
        tally.add(report, lambda layer: describe_layer(problem, layer), count=False)
    else:
        results.append(DivergingInput(f"{name} (as found)", describe_problem(problem), report))
    for kind in WORST_FIRST[:-1]:
        if kind in found and SEARCH_NAMES[kind] != name:
            problem, report = found[kind]
            search = f"{SEARCH_NAMES[kind]} (as found)"
            results.append(DivergingInput(search, describe_problem(problem), report, kind=kind))
    return results


def engine_scale_problems() -> st.SearchStrategy[BalancingProblem]:
    """Problems at the sizes engines run: 64 to 256 experts in 1 to 8 groups, 1 to 4
    nodes of 2 to 8 GPUs, up to 3 layers of token counts (ties at token scale among
    them), under either policy."""

    @st.composite
    def build(draw: st.DrawFn) -> BalancingProblem:
        experts = draw(st.sampled_from([64, 128, 256]))
        groups = draw(st.sampled_from([1, 4, 8]))
        if draw(st.booleans()):  # hierarchical: the groups split evenly over the nodes
            nodes = draw(st.sampled_from([n for n in (1, 2, 4) if groups % n == 0]))
        else:
            nodes = draw(st.sampled_from([n for n in (2, 3, 4) if groups % n]))
        gpus = nodes * draw(st.sampled_from([2, 4, 8]))
        per_gpu = -(-experts // gpus) + draw(st.integers(0, 2))
        layers = draw(st.integers(1, 3))
        styles = st.sampled_from(["integers", "dominant", "large-ties", "ties"])
        loads = [draw(load_values(experts, draw(styles))) for _ in range(layers)]
        return BalancingProblem(
            np.asarray(loads, dtype=np.float64), gpus * per_gpu, groups, nodes, gpus
        )

    return build()


def fidelity_problems() -> st.SearchStrategy[BalancingProblem]:
    """The fidelity search's problems: the gate's (both policies, up to 3 layers, every
    load style) and engine-scale ones (``engine_scale_problems``)."""
    from properties.strategies import problems

    return st.one_of(problems(), engine_scale_problems())


@dataclass
class FidelityRun:
    """Fidelity of a target against a reference on generated problems and real traces.

    ``same_balance``: the verdict passes when every layer is identical or equivalent
    for balance (``--same-balance``); otherwise only when every layer is identical."""

    reference: str
    examples: int
    same_balance: bool = False
    generated: list[DivergingInput] = field(default_factory=list)
    traces: list[TraceFidelity] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tallies: dict[str, PolicyTally] = field(default_factory=dict)

    def classes(self) -> Counter[Balance]:
        total: Counter[Balance] = Counter()
        for tally in self.tallies.values():
            total.update(tally.classes)
        return total

    @property
    def failures(self) -> list[str]:
        """Why the target could not be compared: it failed, or its placement is invalid."""
        found = [f"{g.search}: {g.failure}" for g in self.generated if g.failure]
        found += [f"{t.trace}: {t.failure}" for t in self.traces if t.failure]
        reports = [g.report for g in self.generated] + [t.report for t in self.traces]
        found += [f"invalid placement: {r.violations[0]}" for r in reports if r and r.violations]
        return found

    @property
    def verdict(self) -> str:
        allowed = TOLERATED if self.same_balance else {Balance.IDENTICAL}
        fine = all(b in allowed for b, n in self.classes().items() if n)
        return "pass" if fine and not self.failures else "fail"

    def reason(self) -> str:
        """Why the verdict, in a few words."""
        if self.failures:
            return self.failures[0]
        classes = self.classes()
        changed = [b for b in WORST_FIRST[:2] if classes[b]]
        differ = [b for b in WORST_FIRST[:-1] if classes[b]]
        total = sum(classes.values())
        if changed:
            what = ", ".join(f"{classes[b]} {b.value}" for b in changed)
            return f"{sum(classes[b] for b in changed)} of {total} layer(s) change balance: {what}"
        what = ", ".join(f"{classes[b]} {b.value}" for b in differ)
        if differ:
            tail = "" if self.same_balance else " (--same-balance passes such a port)"
            count = sum(classes[b] for b in differ)
            return f"{count} of {total} layer(s) differ, none in its peak: {what}{tail}"
        return f"identical on all {total} layer(s)"

    def summary(self) -> str:
        lines = [f"fidelity against {self.reference}: {self.verdict.upper()}: {self.reason()}"]
        lines += [f"  note: {n}" for n in self.notes]
        for policy in (Policy.HIERARCHICAL.value, Policy.GLOBAL.value):
            if policy in self.tallies:
                lines.append(f"  {self.tallies[policy].summary()}")
        for diverging in self.generated:
            lines.append(f"  {diverging.summary()}")
            lines.append(f"    input: {shown(diverging.input)}")
        by_cluster: dict[tuple[int, int, int, int], list[TraceFidelity]] = {}
        for t in self.traces:
            by_cluster.setdefault(t.cluster, []).append(t)
        for cluster, traces in by_cluster.items():
            reports = [t.report for t in traces if t.report is not None]
            merged = FidelityReport(self.reference, [v for r in reports for v in r.layers])
            lines.append(f"  real traces ({len(reports)}) at {cluster}: {merged.summary()}")
            worst = sorted(
                (t for t in traces if t.report is not None and t.report.divergences),
                key=lambda t: severity(t.report.worst_first()[0]) if t.report else (9, 0.0),
            )
            for t in traces:
                if t.failure is not None:
                    lines.append(f"    {t.trace}: the target failed: {t.failure}")
            for t in worst[:3]:
                assert t.report is not None
                lines.append(f"    {t.trace}: {t.report.summary()}")
                lines.append(f"      {t.report.worst_first()[0].summary()}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def report_json(report: FidelityReport | None) -> dict[str, Any] | None:
            if report is None:
                return None
            return {
                "summary": report.summary(),
                "layers": len(report.layers),
                "violations": report.violations,
                "divergences": [
                    {
                        "layer": d.layer,
                        "step": d.step.value,
                        "kind": d.kind.value,
                        "node": d.node,
                        "detail": d.detail,
                        "balance": d.balance.value,
                        "peak_reference": d.peak_reference,
                        "peak_target": d.peak_target,
                        "peak_ratio": d.peak_ratio,
                        "line": d.summary(),
                    }
                    for d in report.worst_first()
                ],
            }

        return {
            "format": 2,
            "reference": self.reference,
            "verdict": self.verdict,
            "reason": self.reason(),
            "same_balance": self.same_balance,
            "examples": self.examples,
            "notes": self.notes,
            "policies": {name: tally.to_json() for name, tally in self.tallies.items()},
            "generated": [
                {
                    "search": g.search,
                    "input": g.input,
                    "failure": g.failure,
                    "report": report_json(g.report),
                }
                for g in self.generated
            ],
            "traces": [
                {
                    "trace": t.trace,
                    "cluster": list(t.cluster),
                    "generated": t.generated,
                    "failure": t.failure,
                    "report": report_json(t.report),
                }
                for t in self.traces
            ],
        }


def run_fidelity(
    call: Caller,
    same_as: str | Reference,
    problems: st.SearchStrategy[BalancingProblem] | None = None,
    *,
    examples: int = 200,
    workloads: Iterable[Workload] | None = None,
    data: str | None = None,
    max_traces: int | None = None,
    same_balance: bool = False,
    clusters: Sequence[tuple[int, int, int, int]] = (TRACE_CLUSTER,),
    picked: Sequence[BalancingProblem] = (),
    shrink_seconds: float = 60.0,
) -> FidelityRun:
    """Compare the target ``call`` with the reference ``same_as``.

    On ``picked`` and ``examples`` problems from ``problems`` (default:
    ``fidelity_problems``) it searches for the divergence that changes the peak most and
    shrinks it (``search_divergences``). Then it compares every layer of the real traces
    (``workloads``, or those ``data`` points to; a generated stand-in when none are
    found, said in the notes) at each of ``clusters`` (none: the traces are left out).
    Every compared layer is tallied by policy and ``Balance`` class. The verdict is
    ``pass`` only when every layer is identical (with ``same_balance``, identical or
    equivalent for balance).
    """
    reference = reference_named(same_as)
    strategy = problems if problems is not None else fidelity_problems()
    run = FidelityRun(reference.name, examples, same_balance)
    run.generated = search_divergences(
        call, reference, strategy, examples, run.tallies, picked, shrink_seconds
    )
    if workloads is None:
        found, note = default_workloads(data)
        run.notes.append(note)
    else:
        found = list(workloads)
    chosen = found if max_traces is None else found[:max_traces]
    if not clusters:
        run.notes.append("real traces not compared: outside the target's domain")
        return run
    for cluster in clusters:
        for workload in chosen:
            problem = BalancingProblem(workload.loads, *cluster, loads_name=workload.name)
            try:
                report = fidelity_of(call, problem, reference)
            except TargetFailed as error:
                failure = TraceFidelity(
                    workload.name, workload.generated, None, str(error), cluster
                )
                run.traces.append(failure)
                continue
            run.traces.append(
                TraceFidelity(workload.name, workload.generated, report, None, cluster)
            )
            tally = run.tallies.setdefault(problem.policy.value, PolicyTally(problem.policy.value))
            tally.add(report, trace_layer(workload.name, cluster))
    return run


def trace_layer(name: str, cluster: tuple[int, int, int, int]) -> Callable[[int], str]:
    return lambda layer: f"{name} layer {layer} at {cluster}"


__all__ = [
    "NEAR",
    "REFERENCES",
    "TOLERATED",
    "WORST_FIRST",
    "Balance",
    "Divergence",
    "FidelityReport",
    "FidelityRun",
    "Kind",
    "LayerVerdict",
    "PolicyTally",
    "Reference",
    "Step",
    "compare",
    "compare_layer",
    "engine_scale_problems",
    "fidelity_of",
    "fidelity_problems",
    "reference_named",
    "run_fidelity",
    "search_divergences",
    "ties_met",
]
