"""SGLang's vectorised algorithms give spare replicas to expert 0 when two scores tie.

    python docs/engines/repro_sglang_spare_replicas_to_expert_0.py [TARGET]
    (default sglang:deepseek_vec; also sglang:deepseek_vec_hierarchical)

Two equally hot experts of 2048 tokens each and two spare slots, one slot per GPU: the
best placement gives each hot expert a second replica (peak 1024). The replication step
separates ties by adding ``expert_id * 1e-4`` to the loads, which float32 rounds away at
2048 tokens; a tie makes its argmin fall back to expert 0, which gets both spare replicas
although it carries 1 token (peak 2048, twice the optimum). Exit status 1: reproduced.
"""

import sys

import torch

from properties.engines import find_engine

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "sglang:deepseek_vec")
assert engine is not None
print(engine.description)
tokens = torch.tensor([[1, 1, 2048, 2048]], dtype=torch.int32)  # as SGLang records them
phy2log, _, logcnt = engine.load()(tokens, 6, 1, 1, 6)  # 6 slots on 6 GPUs
peak = max(float(tokens[0, e]) / float(logcnt[0, e]) for e in phy2log[0].tolist())
print(f"phy2log {phy2log.tolist()}, logcnt {logcnt.tolist()}: peak {peak:g}, optimum 1024")
sys.exit(1 if peak > 1024 else 0)
