"""vLLM's rebalance from an old placement moves more expert weights than the same balance
needs: slot preservation without relabeling the GPUs.

    python docs/engines/repro_vllm_transfers_above_fewest.py [TARGET]  (default vllm)

The old placement is vLLM's own answer for the old loads; the new loads are the same
loads on other experts. vLLM rebalances with the old map as the sixth argument (as
``EplbState.rearrange`` does) and keeps the slots of experts that stay on a GPU, but
every GPU receives new experts: 8 transfers. Its stateless answer holds exactly the old
GPUs' contents in another GPU order, so relabeling its GPUs (``impl.migrate``) gives the
same GPU loads with no transfer at all. Exit status 1: reproduced; 0: no longer.
"""

import sys

import numpy as np
import torch

from properties.engines import find_engine
from properties.rebalance import relabeling_optimum
from spec import BalancingProblem, count_transfers, same_gpu_loads

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "vllm")
assert engine is not None
print(engine.description)
rebalance = engine.load()
cluster = (8, 1, 1, 4)  # 8 experts, 8 slots on 4 GPUs (2 each), one node
old_loads = torch.tensor([[71, 80, 34, 24, 65, 25, 93, 9]])
new_loads = torch.tensor([[65, 25, 93, 71, 9, 34, 80, 24]])
previous = rebalance(old_loads, *cluster)
answer = rebalance(new_loads, *cluster, previous=previous).numpy()
stateless = rebalance(new_loads, *cluster).numpy()
problem = BalancingProblem(new_loads.numpy(), *cluster)
fewest = relabeling_optimum(problem, previous.numpy(), stateless)
assert same_gpu_loads(problem.loads, answer, stateless, 4).all()
assert same_gpu_loads(problem.loads, fewest, stateless, 4).all()


def transfers(placement: np.ndarray) -> int:
    return count_transfers(previous.numpy(), placement, num_experts=8, num_gpus=4).total


print(f"old placement      {previous.tolist()}")
print(f"vLLM's rebalance   {answer.tolist()}: {transfers(answer)} transfers")
print(f"same GPU loads     {fewest.tolist()}: {transfers(fewest)} transfers")
sys.exit(1 if transfers(answer) > transfers(fewest) else 0)
