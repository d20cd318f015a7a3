"""Fake vLLM migration scheduler: records each call and returns fixed flows (two layers:
one batch of two flows, then none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CALLS: list[dict[str, Any]] = []


@dataclass(frozen=True, slots=True)
class MigrationFlow:
    src_rank: int
    dst_rank: int
    expert_ids: tuple[int, ...]


def schedule_migration_batches_for_layers(
    num_local_experts: int, old_indices: Any, new_indices: Any
) -> list[list[list[MigrationFlow]]]:
    CALLS.append({"num_local_experts": num_local_experts, "old": old_indices, "new": new_indices})
    return [[[MigrationFlow(0, 1, (3, 2)), MigrationFlow(2, 3, (5,))]], []]
