"""The reference pipeline with its intermediate decisions kept: what each step decided.

``explain`` runs the same step functions as ``impl.balancer.balance`` (in the same
order, on the same values) and returns, per layer, the group-to-node split and, per
(layer, node) row, the counts before and after refinement A, the replica layout, and the
packing before and after refinement B. Its placement is the reference's, element for
element (a test holds it to that). ``balance`` itself is untouched: nothing here slows
the normal path.
"""

from __future__ import annotations

from dataclasses import dataclass

from impl.balancer import Variant, check_options
from impl.steps import (
    Packing,
    bisected_counts,
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
from spec.problem import BalancingProblem


@dataclass(frozen=True)
class NodeTrace:
    """One (layer, node) row of the pipeline, in node-local numbering.

    ``experts[i]`` is the global id of local expert ``i``. ``bisected`` holds the
    water-filling counts before their top-ups (``None`` for the baseline and for rows
    that skip the bisection: one slot per expert, or no load). ``filled`` holds the
    counts of the replication step (water-filling, or the baseline's greedy),
    ``counts`` those after refinement A. ``layout[j]`` is the local expert of replica
    ``j`` and ``weights[j]`` its load; ``packed`` is the greedy packing of the replicas
    onto the node's GPUs, ``packing`` the packing after refinement B. ``slots[j]`` is
    the global slot of replica ``j`` and ``ranks[j]`` its replica rank (its index in
    ``log2phy``).
    """

    node: int
    experts: list[int]
    loads: list[float]
    bisected: list[int] | None
    filled: list[int]
    counts: list[int]
    layout: list[int]
    weights: list[float]
    packed: Packing
    packing: Packing
    slots: list[int]
    ranks: list[int]

    @property
    def counts_refined(self) -> bool:
        return self.counts != self.filled

    @property
    def replicas_swapped(self) -> bool:
        return self.packing.pack != self.packed.pack


@dataclass(frozen=True)
class LayerTrace:
    """One layer: the loads of the groups packed, their packing onto nodes (``pack``:
    node, ``rank``: arrival order there) and the rows of the nodes."""

    layer: int
    group_loads: list[float]
    group_packing: Packing
    nodes: list[NodeTrace]


def explain_layer(
    problem: BalancingProblem,
    layer: int,
    *,
    variant: Variant | str = "refined",
    refine_a: bool = True,
    refine_b: bool = True,
) -> LayerTrace:
    """The reference's decisions on one layer (the options as for ``balance``)."""
    chosen = check_options(variant, None, None)
    if not 0 <= layer < problem.num_layers:
        raise ValueError(f"layer must be in [0, {problem.num_layers}), got {layer}")
    refined = chosen == "refined"
    keys = group_loads(problem.loads[layer].tolist(), problem.packing_groups)
    group_packing = pack_balanced(keys, problem.packing_nodes)
    local = renumber_node_local(group_packing, problem.packing_nodes, problem.group_size)
    slots_per_node, gpus, cap = (
        problem.slots_per_node,
        problem.gpus_per_node,
        problem.slots_per_gpu,
    )
    nodes = []
    for node, experts in enumerate(local):
        loads = [float(problem.loads[layer, e]) for e in experts]
        bisected: list[int] | None = None
        if refined:
            if slots_per_node != len(loads) and any(w != 0 for w in loads):
                bisected = bisected_counts(loads, slots_per_node)
            filled = water_fill(loads, slots_per_node)
            counts = refine_counts(loads, filled) if refine_a else filled
            layout = layout_by_expert(counts)
        else:
            filled, layout = replicate_greedy(loads, slots_per_node)
            counts = filled
        weights = [loads[i] / counts[i] for i in layout]
        if refined:
            packed = pack_diverse(weights, layout, gpus)
            packing = refine_swap(weights, packed, gpus) if refine_b else packed
        else:
            packed = packing = pack_balanced(weights, gpus)
        slots = slots_of(packing, node, slots_per_node, cap)
        nodes.append(
            NodeTrace(
                node=node,
                experts=experts,
                loads=loads,
                bisected=bisected,
                filled=filled,
                counts=counts,
                layout=layout,
                weights=weights,
                packed=packed,
                packing=packing,
                slots=slots,
                ranks=replica_ranks(layout),
            )
        )
    return LayerTrace(layer, keys, group_packing, nodes)


def explain(
    problem: BalancingProblem,
    *,
    variant: Variant | str = "refined",
    refine_a: bool = True,
    refine_b: bool = True,
) -> list[LayerTrace]:
    """The reference's decisions on every layer of ``problem``.

    ``refine_a`` / ``refine_b`` switch the refinements of ``refined``; the baseline has
    none and ignores them, as in ``balance``.
    """
    return [
        explain_layer(problem, layer, variant=variant, refine_a=refine_a, refine_b=refine_b)
        for layer in range(problem.num_layers)
    ]


def phy2log_row(problem: BalancingProblem, trace: LayerTrace) -> list[int]:
    """The layer's ``phy2log`` row that the trace implies."""
    row = [-1] * problem.num_replicas
    for node in trace.nodes:
        for label, slot in zip(node.layout, node.slots, strict=True):
            row[slot] = node.experts[label]
    return row


__all__ = ["LayerTrace", "NodeTrace", "explain", "explain_layer", "phy2log_row"]
