"""Rebalances and transfer schedules broken on purpose: the gate's rebalance and schedule
sections must catch each with its violation code.

Rebalance targets take the old placement as ``previous=`` (``positional`` as the sixth
argument); each wraps the reference and breaks one rule. Schedule targets have the
gate's schedule signature and break one rule of ``impl.schedule_transfers``' answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from impl import rebalance_experts
from impl.incremental import rebalance_experts_incremental
from impl.migration import apply_slot_map, keep_slots, relabel_gpus, slots_of_gpus
from properties.rebalance import reference_schedule
from spec import BalancingProblem, Policy, network_nodes

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
IntArray = npt.NDArray[np.int64]


def reference(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> Outputs:
    return rebalance_experts(weight, r, g, n, p, previous=previous)


def positional(weight: torch.Tensor, r: int, g: int, n: int, p: int, old: Any = None) -> Outputs:
    """The reference with vLLM's convention: the old placement as the sixth argument."""
    return rebalance_experts(weight, r, g, n, p, previous=old)


def moved(weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any) -> IntArray:
    """The stateless answer with whole GPUs relabeled for the fewest transfers, the order
    inside each GPU left as it was (no slot preservation)."""
    stateless = rebalance_experts(weight, r, g, n, p)[0].numpy()
    problem = BalancingProblem(weight, r, g, n, p)
    old = previous.numpy()
    gpu_of = relabel_gpus(
        old,
        stateless,
        num_experts=problem.num_experts,
        num_gpus=p,
        num_nodes=network_nodes(problem),
        keep_nodes=problem.policy is Policy.HIERARCHICAL,
    )
    result: IntArray = apply_slot_map(stateless, slots_of_gpus(gpu_of, r))
    return result


def keeps_slots_only(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> torch.Tensor:
    """What vLLM 0.33.0 does: the stateless answer, slots preserved, GPUs not relabeled."""
    stateless = rebalance_experts(weight, r, g, n, p)[0]
    if previous is None:
        return stateless
    new, old = stateless.numpy(), previous.numpy()
    kept = apply_slot_map(new, keep_slots(old, new, num_experts=weight.shape[1], num_gpus=p))
    return torch.from_numpy(kept)


def never_moves(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> torch.Tensor:
    """Keeps the old placement whatever the loads: no transfer, but not its balance."""
    if previous is None:
        return rebalance_experts(weight, r, g, n, p)[0]
    kept: torch.Tensor = previous.clone()
    return kept


def ignores_slots(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> torch.Tensor:
    """The fewest transfers, but experts that stay on a GPU may change slot."""
    if previous is None:
        return rebalance_experts(weight, r, g, n, p)[0]
    return torch.from_numpy(moved(weight, r, g, n, p, previous))


def invalid_with_previous(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> Outputs:
    """Valid without an old placement; with one, the last slot holds no expert id."""
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p, previous)
    if previous is not None:
        phy2log[:, -1] = weight.shape[1]
    return phy2log, log2phy, logcnt


def mutates_previous(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> Outputs:
    """Answers right, then overwrites the caller's old placement with the new one."""
    result = reference(weight, r, g, n, p, previous)
    if previous is not None:
        previous.copy_(result[0])
    return result


def no_previous(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """A stateless balancer: it takes no old placement at all."""
    return rebalance_experts(weight, r, g, n, p)


def incremental_within_two(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> Outputs:
    """The reference budgeted rebalancer with at most 2 transfers per layer."""
    return rebalance_experts_incremental(weight, r, g, n, p, previous, max_transfers=2)


def flipped_loads(
    weight: torch.Tensor, r: int, g: int, n: int, p: int, previous: Any = None
) -> torch.Tensor:
    """With an old placement: the reference's relabeled rebalance for the loads in
    reverse expert order, a valid placement made for other loads (often more peaked than
    the old placement, which needs no transfer)."""
    if previous is None:
        return rebalance_experts(weight, r, g, n, p)[0]
    flipped = torch.flip(torch.as_tensor(weight, dtype=torch.float64), dims=[1])
    return rebalance_experts(flipped, r, g, n, p, previous=previous)[0]


# --- schedules ------------------------------------------------------------------------------

Schedule = tuple[IntArray, IntArray]


def compact(rows: IntArray, layers: int) -> Schedule:
    """The schedule with each layer's batches renumbered 0, 1, ... in order."""
    rows = rows.copy()
    counts = np.zeros(layers, dtype=np.int64)
    for layer in range(layers):
        mine = rows[:, 0] == layer
        used = np.unique(rows[mine, 1])
        rows[mine, 1] = np.searchsorted(used, rows[mine, 1])
        counts[layer] = used.size
    return rows, counts


def drops_a_transfer(*args: Any) -> Schedule:
    rows, batches = reference_schedule(*args)
    return compact(rows[:-1], len(batches)) if len(rows) else (rows, batches)


def sends_twice(*args: Any) -> Schedule:
    rows, batches = reference_schedule(*args)
    return (np.vstack([rows, rows[:1]]), batches) if len(rows) else (rows, batches)


def sends_unneeded(
    previous: Any, phy2log: Any, num_experts: int, num_gpus: int, num_nodes: int
) -> Schedule:
    """Also sends GPU 0 an expert it held already (from itself, in a batch of its own)."""
    rows, batches = reference_schedule(previous, phy2log, num_experts, num_gpus, num_nodes)
    expert = int(previous.numpy()[0, 0])  # slot 0 is on GPU 0
    extra = np.array([[0, batches[0], expert, 0, 0]], dtype=np.int64)
    batches = batches.copy()
    batches[0] += 1
    return np.vstack([rows, extra]), batches


def wrong_source(*args: Any) -> Schedule:
    """The first transfer comes from its own destination, which lacked the expert."""
    rows, batches = reference_schedule(*args)
    if not len(rows):
        return rows, batches
    rows = rows.copy()
    layer = rows[0, 0]
    rows[0, 3] = rows[0, 4]
    rows[0, 1] = batches[layer]  # a batch of its own, so only the source is wrong
    return compact(rows, len(batches))


def merges_batches(*args: Any) -> Schedule:
    """Batch 1 of every layer runs with batch 0 (first-fit put it apart for a reason)."""
    rows, batches = reference_schedule(*args)
    rows = rows.copy()
    rows[rows[:, 1] == 1, 1] = 0
    return compact(rows, len(batches))


def declares_extra_batch(*args: Any) -> Schedule:
    rows, batches = reference_schedule(*args)
    batches = batches.copy()
    batches[0] += 1
    return rows, batches


def four_columns(*args: Any) -> Schedule:
    rows, batches = reference_schedule(*args)
    return rows[:, :4], batches
