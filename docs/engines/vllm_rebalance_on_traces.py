"""vLLM's rebalance from an old placement on the real traces, against the relabeling
optimum of its own stateless answer, and its migration scheduler's schedules.

    python docs/engines/vllm_rebalance_on_traces.py [TARGET] [--data DIR]
    (default vllm@0.33.0; the scheduler is TARGET's migration_scheduler)

For every ordered pair of traces (old, new) at (288, 8, 4, 32): the old placement is
vLLM's own answer for the old trace; vLLM rebalances to the new loads with it, as
``EplbState.rearrange`` calls the policy (the old map as the sixth argument). Printed per
pair summary, median and worst over the pairs: vLLM's transfers, the relabeling optimum
of its stateless answer (``impl.migrate``: exactly the same GPU loads), and for vLLM's
schedule of the rebalance (``schedule_migration_batches_for_layers``, as the async
worker calls it) the transfers that cross nodes against the least any schedule needs,
and its batches against the most directed links a GPU is in (vLLM's rule gives a GPU one
directed link per batch, so no schedule with vLLM's sources has fewer).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from properties.engines import find_engine
from properties.rebalance import busiest_gpu_links, relabeling_optimum
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec import BalancingProblem, TransferCounts, count_transfers, same_gpu_loads

parser = argparse.ArgumentParser()
parser.add_argument("target", nargs="?", default="vllm@0.33.0")
parser.add_argument("--data")
args = parser.parse_args()
policy = find_engine(args.target)
scheduler = find_engine(args.target.partition(":")[0] + ":migration_scheduler")
assert policy is not None
assert scheduler is not None
rebalance, schedule = policy.load(), scheduler.load()
workloads, note = default_workloads(args.data)
print(f"{policy.name} and {scheduler.name} on {note} at {TRACE_CLUSTER}")
replicas, groups, nodes, gpus = TRACE_CLUSTER
per_node = gpus // nodes


def counts(old: np.ndarray, new: np.ndarray, experts: int) -> TransferCounts:
    return count_transfers(old, new, num_experts=experts, num_gpus=gpus, num_nodes=nodes)


placements = {
    w.name: rebalance(torch.from_numpy(w.loads.astype(np.int64)), *TRACE_CLUSTER).numpy()
    for w in workloads
}
rows = []
for new in workloads:
    weight = torch.from_numpy(new.loads.astype(np.int64))
    stateless = placements[new.name]
    problem = BalancingProblem(new.loads, *TRACE_CLUSTER)
    for old in workloads:
        if old is new:
            continue
        previous = placements[old.name]
        answer = rebalance(weight, *TRACE_CLUSTER, previous=torch.from_numpy(previous)).numpy()
        assert same_gpu_loads(problem.loads, answer, stateless, gpus).all()
        fewest = relabeling_optimum(problem, previous, stateless)
        transfers, batches = schedule(
            torch.from_numpy(previous), torch.from_numpy(answer), problem.num_experts, gpus, nodes
        )
        crossing = int((transfers[:, 3] // per_node != transfers[:, 4] // per_node).sum())
        mine_counts = counts(previous, answer, problem.num_experts)
        rows.append(
            {
                "vllm": mine_counts.total,
                "fewest": counts(previous, fewest, problem.num_experts).total,
                "crossing": crossing,
                "must_cross": int(mine_counts.inter_node.sum()),
                "batches": int(batches.sum()),
                "floor": sum(busiest_gpu_links(transfers, problem.num_layers, exchanges=False)),
            }
        )


def line(label: str, values: list[float], digits: int = 0) -> None:
    print(f"  {label:<58}{statistics.median(values):>10.{digits}f} / {max(values):.{digits}f}")


print(f"{len(rows)} ordered pairs x {workloads[0].loads.shape[0]} layers; median / worst:")
line("vLLM's transfers (stateless + slot preservation)", [r["vllm"] for r in rows])
line("relabeling optimum of its stateless answer", [r["fewest"] for r in rows])
line("vLLM's transfers above that", [r["vllm"] - r["fewest"] for r in rows])
line("relabeling optimum / vLLM's", [r["fewest"] / r["vllm"] for r in rows], 3)
line("vLLM's schedule: transfers that cross nodes", [r["crossing"] for r in rows])
line("  the least any schedule needs", [r["must_cross"] for r in rows])
line("vLLM's schedule: batches (58 layers)", [r["batches"] for r in rows])
line("  the most directed links a GPU is in, per layer, summed", [r["floor"] for r in rows])
sys.exit(0)
