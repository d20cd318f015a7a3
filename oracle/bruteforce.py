"""Exhaustive search on tiny instances, used only to test the oracle."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from fractions import Fraction

from oracle.exact import as_fractions


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every ``(c_1..c_parts)`` with ``c_i >= 1`` summing to ``total``."""
    if parts == 1:
        yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def packings(count: int, num_packs: int) -> Iterator[list[int]]:
    """Every assignment of ``count`` items to packs of exactly ``count / num_packs``,
    packs taken up in order of first use (identical packs are not repeated)."""
    cap = count // num_packs
    pack_of = [-1] * count
    size = [0] * num_packs

    def place(item: int, used: int) -> Iterator[list[int]]:
        if item == count:
            yield list(pack_of)
            return
        for p in range(min(used + 1, num_packs)):
            if size[p] < cap:
                pack_of[item], size[p] = p, size[p] + 1
                yield from place(item + 1, max(used, p + 1))
                size[p] -= 1

    yield from place(0, 0)


def best_replication(weights: Sequence[float | int | Fraction], num_slots: int) -> Fraction:
    exact = as_fractions(weights)
    return min(
        max(w / c for w, c in zip(exact, counts, strict=True))
        for counts in compositions(num_slots, len(exact))
    )


def best_packing(
    weights: Sequence[float | int | Fraction], num_packs: int, labels: Sequence[int] | None = None
) -> Fraction | None:
    """The least heaviest pack, or None when no packing keeps the label rule."""
    exact = as_fractions(weights)
    best: Fraction | None = None
    for pack_of in packings(len(exact), num_packs):
        if labels is not None:
            pairs = list(zip(labels, pack_of, strict=True))
            if len(set(pairs)) < len(pairs):
                continue
        loads = [Fraction(0)] * num_packs
        for w, p in zip(exact, pack_of, strict=True):
            loads[p] += w
        if best is None or max(loads) < best:
            best = max(loads)
    return best


def best_joint(
    weights: Sequence[float | int | Fraction],
    num_slots: int,
    num_packs: int,
    distinct: bool = False,
) -> Fraction | None:
    exact = as_fractions(weights)
    best: Fraction | None = None
    for counts in compositions(num_slots, len(exact)):
        labels = [i for i, c in enumerate(counts) for _ in range(c)]
        items = [exact[i] / counts[i] for i in labels]
        value = best_packing(items, num_packs, labels if distinct else None)
        if value is not None and (best is None or value < best):
            best = value
    return best


def best_layer(
    weights: Sequence[float | int | Fraction],
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> Fraction:
    """The least peak GPU load of one layer over every placement the contract accepts:
    each assignment of groups to (labelled) nodes in which every node holds at least
    one group and no more experts than slots, each node then solved by ``best_joint``.
    Under the global policy the whole cluster is one node."""
    exact = as_fractions(weights)
    if num_groups % num_nodes:  # the global policy
        best = best_joint(exact, num_replicas, num_gpus)
        assert best is not None
        return best
    size = len(exact) // num_groups
    slots, gpus = num_replicas // num_nodes, num_gpus // num_nodes
    found: Fraction | None = None
    for assignment in itertools.product(range(num_nodes), repeat=num_groups):
        nodes = [[g for g in range(num_groups) if assignment[g] == n] for n in range(num_nodes)]
        if any(not groups or len(groups) * size > slots for groups in nodes):
            continue
        peak = Fraction(0)
        for groups in nodes:
            node = [exact[g * size + i] for g in groups for i in range(size)]
            value = best_joint(node, slots, gpus)
            assert value is not None
            peak = max(peak, value)
        if found is None or peak < found:
            found = peak
    assert found is not None
    return found
