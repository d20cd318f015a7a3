"""What is wrong with an answer: one ``Violation`` type for every checker in ``spec``.

A violation has a stable code (a member of one of the code enums below, whose value is
the kebab-case string reports show), a message that says where and what, and the layer
it concerns when there is one. The placement checker, the refinement contracts, the
migration and schedule checkers and the sub-problem checks the oracle applies to its
own answers all speak it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ViolationCode(enum.Enum):
    """The ways a placement breaks the output contract (``spec.placement``)."""

    SHAPE = "shape"
    DTYPE = "dtype"
    EXPERT_OUT_OF_RANGE = "expert-out-of-range"
    COUNT_BELOW_ONE = "count-below-one"
    COUNT_SUM = "count-sum"
    COUNT_MISMATCH = "count-mismatch"
    LOG2PHY_SLOT = "log2phy-slot"
    LOG2PHY_DUPLICATE = "log2phy-duplicate"
    LOG2PHY_PADDING = "log2phy-padding"
    GROUP_SPLIT = "group-split"


class RefinementRule(enum.Enum):
    """The ways a refinement step breaks its contract (``spec.refinements``)."""

    LENGTH = "length"
    COUNT_SUM = "count-sum"
    COUNT_BELOW_ONE = "count-below-one"
    ONE_MOVE = "one-move"
    ASSIGNMENT = "assignment"
    ONE_SWAP = "one-swap"
    RANKS_KEPT = "ranks-kept"
    PEAK_RAISED = "peak-raised"
    NO_GAIN = "no-gain"


class MigrationCode(enum.Enum):
    """The ways a rebalance or a transfer schedule breaks its contract
    (``spec.migration``)."""

    PLACEMENT_INVALID = "placement-invalid"
    BALANCE_CHANGED = "balance-changed"
    SLOT_NOT_KEPT = "slot-not-kept"
    TRANSFERS_ABOVE_FEWEST = "transfers-above-fewest"
    PEAK_ABOVE_TOLERANCE = "peak-above-tolerance"
    TRANSFERS_ABOVE_BUDGET = "transfers-above-budget"
    TRANSFERS_ABOVE_REFERENCE = "transfers-above-reference"
    PEAK_ABOVE_PREVIOUS = "peak-above-previous"
    SCHEDULE_MALFORMED = "schedule-malformed"
    TRANSFER_MISSING = "transfer-missing"
    TRANSFER_DUPLICATED = "transfer-duplicated"
    TRANSFER_UNNEEDED = "transfer-unneeded"
    SOURCE_LACKS_EXPERT = "source-lacks-expert"
    RANK_BUSY_TWICE = "rank-busy-twice"
    BATCH_COUNT = "batch-count"


class SolutionCode(enum.Enum):
    """The ways an answer to a sub-problem (replication, packing) is not a solution
    (``spec.solutions``)."""

    COUNTS_LENGTH = "counts-length"
    COUNT_BELOW_ONE = "count-below-one"
    COUNT_SUM = "count-sum"
    UNEVEN_PACKS = "uneven-packs"
    PACK_INDEX = "pack-index"
    PACK_SIZE = "pack-size"
    LABEL_TWICE = "label-twice"


Code = ViolationCode | RefinementRule | MigrationCode | SolutionCode


@dataclass(frozen=True)
class Violation:
    """One broken rule: its code, what and where, and the layer when there is one."""

    code: Code
    message: str
    layer: int | None = None

    def __str__(self) -> str:
        where = "" if self.layer is None else f" (layer {self.layer})"
        return f"[{self.code.value}]{where} {self.message}"


# The names each checker used before the vocabulary was one: the same type.
RefinementViolation = Violation
MigrationViolation = Violation
