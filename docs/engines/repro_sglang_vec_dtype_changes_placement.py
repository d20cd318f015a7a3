"""SGLang's deepseek_vec places the same loads differently for integer and float64 input.

    python docs/engines/repro_sglang_vec_dtype_changes_placement.py [TARGET]
    (default sglang:deepseek_vec)

Integer counts are scored in float32 and float64 loads in float64, so the
``expert_id * 1e-4`` tie-breaker survives in one and not the other. Here both answers
are equally balanced; the gate's dtype-invariance check reports the difference.
Exit status 1: reproduced; 0: no longer.
"""

import sys

import torch

from properties.engines import find_engine

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "sglang:deepseek_vec")
assert engine is not None
print(engine.description)
rebalance = engine.load()
placements = {}
for dtype in (torch.int32, torch.int64, torch.float64):
    tokens = torch.tensor([[609299, 609299]], dtype=dtype)
    placements[str(dtype)] = rebalance(tokens, 14, 1, 2, 7)[0].tolist()  # global: 1 group
    print(dtype, placements[str(dtype)])
sys.exit(1 if len({str(p) for p in placements.values()}) > 1 else 0)
