"""The whole balancer: groups to nodes, replicas inside nodes, replicas to GPUs, slots.

``rebalance_experts`` has DeepSeek's signature and output layout; ``balance`` is the same
pipeline on a validated ``spec.BalancingProblem`` and also reports where each
refinement acted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from impl.migration import migrate, move_log2phy
from impl.steps import (
    Packing,
    group_loads,
    layout_by_expert,
    pack_balanced,
    pack_diverse,
    refine_counts,
    refine_swap,
    renumber_node_local,
    replica_ranks,
    replicate_greedy,
    slots_of,
    water_fill,
)
from spec.migration import network_nodes, validate_placement
from spec.problem import BalancingProblem, Policy

Variant = Literal["refined", "baseline", "joint"]
VARIANTS: tuple[Variant, ...] = ("refined", "baseline", "joint")
VARIANT_ALIASES = {"seed": "refined"}
"""Earlier names of the variants, still accepted."""

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class BalanceResult:
    """A placement in the DeepSeek layout, and where the refinements acted.

    ``counts_refined[l, n]`` is True where refinement A moved a replica in node ``n`` of
    layer ``l``; ``replicas_swapped[l, n]`` where refinement B exchanged two replicas.
    Both are all False for the baseline.
    """

    phy2log: IntArray
    log2phy: IntArray
    logcnt: IntArray
    counts_refined: BoolArray
    replicas_swapped: BoolArray


def check_options(variant: object, refine_a: bool | None, refine_b: bool | None) -> Variant:
    """The variant (earlier names resolved), after checking it and that refinements are
    asked only of ``refined``."""
    if isinstance(variant, str):
        variant = VARIANT_ALIASES.get(variant, variant)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, flag in (("refine_a", refine_a), ("refine_b", refine_b)):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool or None, got {type(flag).__name__}")
        if variant != "refined" and flag:
            raise ValueError(f"{name}=True asks for a refinement; the {variant} variant has none")
    return "refined" if variant == "refined" else "joint" if variant == "joint" else "baseline"


def node_local_experts(problem: BalancingProblem, layer: int) -> list[list[int]]:
    """Step 1 on one layer: groups packed onto nodes by load (``pack_balanced``), then
    the global expert ids of each node in node-local order (``renumber_node_local``)."""
    loads = group_loads(problem.loads[layer].tolist(), problem.packing_groups)
    packing = pack_balanced(loads, problem.packing_nodes)
    return renumber_node_local(packing, problem.packing_nodes, problem.group_size)


def balance(
    problem: BalancingProblem,
    *,
    variant: Variant | str = "refined",
    refine_a: bool = True,
    refine_b: bool = True,
    fast: bool = False,
    threads: int | None = None,
    previous: object = None,
) -> BalanceResult:
    """Run the balancer of ``docs/specification.md`` (or its baseline) on ``problem``.

    ``refine_a`` and ``refine_b`` switch the refinements of the ``refined`` variant; the
    baseline has none and ignores them. ``fast=True`` runs the compiled implementation
    in ``impl.fast``, whose output is identical; ``threads`` caps its threads (default:
    the CPUs available, at most 8; the result does not depend on it).

    ``previous`` (a ``phy2log`` ``[L, R]`` of the same cluster) asks for a rebalance from
    that placement: the stateless answer's GPUs are relabeled for the fewest transfers
    and experts that stay on a GPU keep their slot (``impl.migration.migrate``); the
    GPU loads are those of the stateless answer, up to that relabeling.
    """
    chosen = check_options(variant, None, None)
    old = None if previous is None else validate_placement(problem, previous, "previous")
    result = _balance_stateless(problem, chosen, refine_a, refine_b, fast, threads)
    if old is None:
        return result
    hierarchical = problem.policy is Policy.HIERARCHICAL
    moved = migrate(
        old,
        result.phy2log,
        num_experts=problem.num_experts,
        num_gpus=problem.num_gpus,
        num_nodes=network_nodes(problem),
        keep_nodes=hierarchical,
    )
    log2phy = move_log2phy(result.log2phy, moved.slot_of)
    counts_refined, replicas_swapped = result.counts_refined, result.replicas_swapped
    if hierarchical:
        node_of = moved.gpu_of[:, :: problem.gpus_per_node] // problem.gpus_per_node
        counts_refined = np.empty_like(counts_refined)
        replicas_swapped = np.empty_like(replicas_swapped)
        np.put_along_axis(counts_refined, node_of, result.counts_refined, axis=1)
        np.put_along_axis(replicas_swapped, node_of, result.replicas_swapped, axis=1)
    return BalanceResult(moved.phy2log, log2phy, result.logcnt, counts_refined, replicas_swapped)


def _balance_stateless(
    problem: BalancingProblem,
    variant: Variant,
    refine_a: bool,
    refine_b: bool,
    fast: bool,
    threads: int | None,
) -> BalanceResult:
    if variant == "joint":
        from impl.joint import balance_joint  # counts and placement chosen together

        return balance_joint(problem, fast=fast)
    if fast:
        from impl.fast import balance_arrays  # numba is loaded only for the fast path

        arrays = balance_arrays(
            problem.loads,
            problem.num_replicas,
            problem.packing_groups,
            problem.packing_nodes,
            problem.num_gpus,
            refined=variant == "refined",
            refine_a=refine_a,
            refine_b=refine_b,
            threads=threads,
        )
        return BalanceResult(*arrays)
    num_layers, num_experts = problem.num_layers, problem.num_experts
    nodes, slots = problem.packing_nodes, problem.slots_per_node
    gpus, cap = problem.gpus_per_node, problem.slots_per_gpu

    phy2log = np.full((num_layers, problem.num_replicas), -1, dtype=np.int64)
    log2phy = np.full((num_layers, num_experts, problem.log2phy_width), -1, dtype=np.int64)
    logcnt = np.zeros((num_layers, num_experts), dtype=np.int64)
    counts_refined = np.zeros((num_layers, nodes), dtype=np.bool_)
    replicas_swapped = np.zeros((num_layers, nodes), dtype=np.bool_)

    for layer in range(num_layers):
        for node, experts in enumerate(node_local_experts(problem, layer)):
            loads = [float(problem.loads[layer, e]) for e in experts]
            if variant == "refined":
                counts = water_fill(loads, slots)
                if refine_a:
                    refined = refine_counts(loads, counts)
                    counts_refined[layer, node] = refined != counts
                    counts = refined
                layout = layout_by_expert(counts)
            else:
                counts, layout = replicate_greedy(loads, slots)
            weights = [loads[i] / counts[i] for i in layout]
            packing: Packing
            if variant == "refined":
                packing = pack_diverse(weights, layout, gpus)
                if refine_b:
                    swapped = refine_swap(weights, packing, gpus)
                    replicas_swapped[layer, node] = swapped.pack != packing.pack
                    packing = swapped
            else:
                packing = pack_balanced(weights, gpus)

            slots_here = slots_of(packing, node, slots, cap)
            for label, rank, slot in zip(layout, replica_ranks(layout), slots_here, strict=True):
                expert = experts[label]
                phy2log[layer, slot] = expert
                log2phy[layer, expert, rank] = slot
            for label, expert in enumerate(experts):
                logcnt[layer, expert] = counts[label]
    return BalanceResult(phy2log, log2phy, logcnt, counts_refined, replicas_swapped)


def rebalance_experts(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    variant: Variant | str = "refined",
    refine_a: bool | None = None,
    refine_b: bool | None = None,
    fast: bool = False,
    previous: torch.Tensor | npt.NDArray[np.integer[Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place ``num_replicas`` expert replicas per layer on ``num_gpus`` GPUs.

    ``weight`` is ``[layers, experts]`` (integer or float, any device; read in float64,
    never modified). Returns CPU int64 tensors ``(phy2log [L, R], log2phy [L, E, R-E+1],
    logcnt [L, E])``. ``variant="refined"`` (earlier ``"seed"``) is the balancer of
    ``docs/specification.md``
    with refinements A and B (each switchable off); ``variant="baseline"`` is the
    DeepSeek-style balancer it refines; ``variant="joint"`` chooses counts and
    placement together (``impl.joint``), never above either of the other two. Bad
    input raises ValueError or TypeError naming the parameter. ``fast=True`` gives the
    identical answer from the compiled implementation (``impl.fast``), which handles
    all (layer, node) rows in one pass.

    ``previous``, the ``phy2log`` this cluster runs now (``[L, R]``, integer ids, a
    valid placement), makes it a rebalance: the same GPU loads as without it, up to a
    relabeling of the GPUs (nodes onto nodes under the hierarchical policy) chosen for
    the fewest transfers, and every expert that stays on a GPU keeps its slot.
    ``impl.schedule_transfers(previous, phy2log, ...)`` then says what to send when.
    """
    chosen = check_options(variant, refine_a, refine_b)
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
    problem = BalancingProblem(weight, num_replicas, num_groups, num_nodes, num_gpus)
    result = balance(
        problem,
        variant=chosen,
        refine_a=refine_a is not False and chosen == "refined",
        refine_b=refine_b is not False and chosen == "refined",
        fast=fast,
        previous=previous,
    )
    return (
        torch.from_numpy(result.phy2log),
        torch.from_numpy(result.log2phy),
        torch.from_numpy(result.logcnt),
    )


def rebalance_experts_baseline(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    previous: torch.Tensor | npt.NDArray[np.integer[Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rebalance_experts(..., variant="baseline")`` with DeepSeek's plain signature."""
    return rebalance_experts(
        weight,
        num_replicas,
        num_groups,
        num_nodes,
        num_gpus,
        variant="baseline",
        previous=previous,
    )


def rebalance_experts_fast(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    previous: torch.Tensor | npt.NDArray[np.integer[Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rebalance_experts(..., fast=True)`` with DeepSeek's plain signature."""
    return rebalance_experts(
        weight, num_replicas, num_groups, num_nodes, num_gpus, fast=True, previous=previous
    )
