"""What a valid answer to each sub-problem is (used to re-check every oracle answer).

- Replication: counts ``c_i >= 1`` with ``sum c_i == S``; objective ``max_i w_i / c_i``.
- Packing with cardinality: every item in one of ``G`` packs, exactly ``n / G`` items in
  each; optionally no two items with the same label in one pack; objective: the
  heaviest pack.
- Joint (one node): counts as above and replicas packed as above, the replicas of expert
  ``i`` each weighing ``w_i / c_i`` and labelled ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from spec.violations import SolutionCode, Violation


def count_violations(counts: Sequence[int], num_experts: int, num_slots: int) -> list[Violation]:
    """Why ``counts`` is not a valid replication of ``num_experts`` into ``num_slots``."""
    found = []
    if len(counts) != num_experts:
        found.append(
            Violation(SolutionCode.COUNTS_LENGTH, f"{len(counts)} counts for {num_experts} experts")
        )
    if any(c < 1 for c in counts):
        found.append(
            Violation(SolutionCode.COUNT_BELOW_ONE, f"a count is below one: {list(counts)}")
        )
    if sum(counts) != num_slots:
        found.append(
            Violation(SolutionCode.COUNT_SUM, f"counts sum to {sum(counts)}, expected {num_slots}")
        )
    return found


def packing_violations(
    pack_of: Sequence[int],
    num_packs: int,
    labels: Sequence[int] | None = None,
) -> list[Violation]:
    """Why ``pack_of`` is not a valid packing (labels given: with the distinct rule)."""
    count = len(pack_of)
    if num_packs < 1 or count % num_packs:
        message = f"{count} items do not split evenly into {num_packs} packs"
        return [Violation(SolutionCode.UNEVEN_PACKS, message)]
    if any(not 0 <= p < num_packs for p in pack_of):
        return [Violation(SolutionCode.PACK_INDEX, f"a pack index is outside [0, {num_packs})")]
    found = []
    sizes = [0] * num_packs
    for p in pack_of:
        sizes[p] += 1
    if any(size != count // num_packs for size in sizes):
        message = f"pack sizes {sizes}, expected {count // num_packs} each"
        found.append(Violation(SolutionCode.PACK_SIZE, message))
    if labels is not None:
        seen: set[tuple[int, int]] = set()
        for label, p in zip(labels, pack_of, strict=True):
            if (label, p) in seen:
                message = f"pack {p} holds two items labelled {label}"
                found.append(Violation(SolutionCode.LABEL_TWICE, message))
                break
            seen.add((label, p))
    return found


def replication_peak(weights: Sequence[Fraction], counts: Sequence[int]) -> Fraction:
    """``max_i w_i / c_i``, exactly."""
    return max(w / c for w, c in zip(weights, counts, strict=True))


def heaviest_pack(weights: Sequence[Fraction], pack_of: Sequence[int], num_packs: int) -> Fraction:
    """The heaviest pack's load, exactly."""
    loads = [Fraction(0)] * num_packs
    for w, p in zip(weights, pack_of, strict=True):
        loads[p] += w
    return max(loads)
