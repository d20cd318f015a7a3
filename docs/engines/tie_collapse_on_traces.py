"""How often SGLang's vectorised replication wastes replicas on the real traces.

    python docs/engines/tie_collapse_on_traces.py [--data DIR]

For every (layer, node) row of deepseek_vec (GPUs as one node) and
deepseek_vec_hierarchical (288, 8, 4, 32), with the int32 counts SGLang records and with
float64 loads: does the row's peak replica load ``max(w / c)`` exceed that of the plain
greedy (one replica at a time to the expert with the highest ``w / c``) on the same
experts and slots? The greedy's peak is the least possible for those slots, so any excess
is a replica given to an expert that did not need it.
"""

import argparse

import numpy as np
import torch

from properties.engines import find_engine
from properties.workloads import default_workloads
from spec.placement import placement_from_phy2log


def greedy_peak(loads: np.ndarray, slots: int) -> float:
    counts = np.ones(len(loads))
    for _ in range(slots - len(loads)):
        counts[int(np.argmax(loads / counts))] += 1
    return float((loads / counts).max())


parser = argparse.ArgumentParser()
parser.add_argument("--data")
workloads, note = default_workloads(parser.parse_args().data)
print(note)
for target, cluster in (
    ("sglang:deepseek_vec", (288, 8, 1, 32)),
    ("sglang:deepseek_vec_hierarchical", (288, 8, 4, 32)),
):
    engine = find_engine(target)
    assert engine is not None
    rebalance = engine.load()
    replicas, _, nodes, _ = cluster
    for dtype in (torch.int32, torch.float64):
        rows = wasted = 0
        worst = 1.0
        for workload in workloads:
            phy2log = rebalance(torch.tensor(workload.loads).to(dtype), *cluster)[0]
            phy2log = phy2log.long().numpy()
            _, counts = placement_from_phy2log(phy2log, workload.loads.shape[1])
            for layer in range(phy2log.shape[0]):
                for node in range(nodes):
                    span = phy2log[layer, node * replicas // nodes : (node + 1) * replicas // nodes]
                    experts = np.unique(span)
                    loads = workload.loads[layer, experts]
                    peak = float((loads / counts[layer, experts]).max())
                    best = greedy_peak(loads, len(span))
                    rows += 1
                    if peak > best * (1 + 1e-12):
                        wasted += 1
                        worst = max(worst, peak / best)
        print(
            f"{engine.name} {cluster} {dtype!s:<14} rows above the greedy: "
            f"{wasted}/{rows}, worst peak replica load {worst:.4f} x the greedy's"
        )
