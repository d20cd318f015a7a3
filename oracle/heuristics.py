"""Quick feasible answers used as CP-SAT hints and as upper bounds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oracle.cpsat import Deadline


def greedy_packing(
    weights: Sequence[int], num_packs: int, labels: Sequence[int] | None = None
) -> list[int] | None:
    """Heaviest item first onto the pack with room that holds fewest of its label, then
    is lightest. None when the label rule cannot be kept this way."""
    count = len(weights)
    cap = count // num_packs
    load = [0] * num_packs
    size = [0] * num_packs
    held: list[dict[int, int]] = [{} for _ in range(num_packs)]
    pack_of = [-1] * count
    for item in sorted(range(count), key=lambda j: (-weights[j], j)):
        label = labels[item] if labels is not None else item
        target = min(
            (p for p in range(num_packs) if size[p] < cap),
            key=lambda p: (held[p].get(label, 0), load[p], p),
        )
        if labels is not None and held[target].get(label, 0):
            return None
        pack_of[item] = target
        load[target] += weights[item]
        size[target] += 1
        held[target][label] = held[target].get(label, 0) + 1
    return pack_of


def improve_by_swaps(
    weights: Sequence[int],
    pack_of: list[int],
    num_packs: int,
    labels: Sequence[int] | None,
    rounds: int = 10_000,
    deadline: Deadline | None = None,
) -> list[int]:
    """Local search: exchange an item of the heaviest pack with a lighter item elsewhere
    while the two packs' new maximum is below the heaviest load (labels kept distinct
    when given). Stops when no exchange helps, after ``rounds`` exchanges or at the
    deadline."""
    result = list(pack_of)
    load = [0] * num_packs
    members: list[set[int]] = [set() for _ in range(num_packs)]
    for j, p in enumerate(result):
        load[p] += weights[j]
        members[p].add(j)
    tags: list[dict[int, int]] = [{} for _ in range(num_packs)]
    if labels is not None:
        for j, p in enumerate(result):
            tags[p][labels[j]] = tags[p].get(labels[j], 0) + 1

    def clash(item: int, leaving: int, pack: int) -> bool:
        if labels is None:
            return False
        held = tags[pack].get(labels[item], 0) - (1 if labels[leaving] == labels[item] else 0)
        return held > 0

    for _ in range(rounds):
        if deadline is not None and deadline.expired():
            break
        heavy = max(range(num_packs), key=lambda p: (load[p], -p))
        best: tuple[int, int, int] | None = None
        for a in members[heavy]:
            for q in range(num_packs):
                if q == heavy:
                    continue
                for b in members[q]:
                    delta = weights[a] - weights[b]
                    if delta <= 0:
                        continue
                    pair_peak = max(load[heavy] - delta, load[q] + delta)
                    if pair_peak >= load[heavy] or (best is not None and pair_peak >= best[0]):
                        continue
                    if clash(b, a, heavy) or clash(a, b, q):
                        continue
                    best = (pair_peak, a, b)
        if best is None:
            break
        _, a, b = best
        q = result[b]
        for item, old, new in ((a, heavy, q), (b, q, heavy)):
            members[old].discard(item)
            members[new].add(item)
            result[item] = new
            load[old] -= weights[item]
            load[new] += weights[item]
            if labels is not None:
                tags[old][labels[item]] -= 1
                tags[new][labels[item]] = tags[new].get(labels[item], 0) + 1
    return result


def canonical_packs(pack_of: Sequence[int]) -> list[int]:
    """Renumber packs in order of their lowest item index (items sorted heaviest first
    then satisfy 'item j is in a pack numbered at most j')."""
    names: dict[int, int] = {}
    return [names.setdefault(p, len(names)) for p in pack_of]


# even_out_by_swaps holds a few [items, items] float arrays: 8 MiB each at this size.
EVEN_OUT_MAX_ITEMS = 1024


def even_out_by_swaps(
    weights: Sequence[float],
    pack_of: list[int],
    num_packs: int,
    rounds: int = 2_000,
    deadline: Deadline | None = None,
) -> list[int]:
    """Local search on the sum of squared pack loads (no labels): repeatedly make the
    exchange of two items between two packs that lowers it most. Smoother than the
    heaviest pack alone, so it does not stall on ties; float arithmetic (a heuristic:
    callers evaluate the result exactly). Above ``EVEN_OUT_MAX_ITEMS`` items it returns
    the packing unchanged (its memory grows with the square of the items)."""
    count = len(pack_of)
    if count > EVEN_OUT_MAX_ITEMS:
        return list(pack_of)
    cap = count // num_packs
    members = np.zeros((num_packs, cap), dtype=np.int64)
    filled = [0] * num_packs
    for item, pack in enumerate(pack_of):
        members[pack, filled[pack]] = item
        filled[pack] += 1
    values = np.asarray(weights, dtype=np.float64)
    for _ in range(rounds):
        if deadline is not None and deadline.expired():
            break
        grid = values[members]  # [packs, cap]
        load = grid.sum(axis=1)
        # Moving delta = w_a - w_b from pack p to pack q changes the sum of squares by
        # 2 * delta * (L_q - L_p) + 2 * delta**2.
        delta = grid[:, :, None, None] - grid[None, None, :, :]
        spread = load[None, None, :, None] - load[:, None, None, None]
        change = 2 * delta * spread + 2 * delta * delta
        best = int(np.argmin(change))
        if not change.flat[best] < -1e-9 * max(1.0, float(load.max())) ** 2:
            break
        p, i, q, j = np.unravel_index(best, change.shape)
        members[p, i], members[q, j] = members[q, j], members[p, i]
    result = [0] * count
    for pack in range(num_packs):
        for item in members[pack]:
            result[int(item)] = pack
    return result
