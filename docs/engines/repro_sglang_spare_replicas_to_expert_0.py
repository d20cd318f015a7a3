"""SGLang's vectorised algorithms give spare replicas to expert 0 when two scores tie.

    python docs/engines/repro_sglang_spare_replicas_to_expert_0.py [TARGET]
    (default sglang:deepseek_vec; also sglang:deepseek_vec_hierarchical)

One slot per GPU, so the peak is the largest ``tokens / replicas``. The replication step
separates ties by adding ``expert_id * 1e-4`` to the loads. Float32 cannot tell such
offsets apart at 2048 tokens (int32 counts, as SGLang records them, are scored in
float32), and loads in the ratio of their ids (1500 and 3000 on experts 1 and 2) tie
even in float64. On a tie its argmin falls back to expert 0, which then gets every
remaining spare replica although it carries 1 token. Exit status 1: reproduced.
"""

import sys

import torch

from properties.engines import find_engine

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "sglang:deepseek_vec")
assert engine is not None
print(engine.description)
rebalance = engine.load()
reproduced = False
for tokens, optimum in (
    (torch.tensor([[1, 1, 2048, 2048]], dtype=torch.int32), 1024.0),  # 2 replicas per hot one
    (torch.tensor([[1.0, 1500.0, 3000.0]], dtype=torch.float64), 1000.0),  # counts 1, 2, 3
):
    phy2log, _, logcnt = rebalance(tokens, 6, 1, 1, 6)  # 6 slots on 6 GPUs, one node
    peak = max(float(tokens[0, e]) / float(logcnt[0, e]) for e in phy2log[0].tolist())
    print(f"{tokens.tolist()} {tokens.dtype}: phy2log {phy2log.tolist()}, peak {peak:g}", end="")
    print(f", optimum {optimum:g}")
    reproduced = reproduced or peak > optimum
sys.exit(1 if reproduced else 0)
