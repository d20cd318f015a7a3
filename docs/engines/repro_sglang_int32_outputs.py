"""SGLang's vectorised algorithms return int32 arrays where the contract says int64.

    python docs/engines/repro_sglang_int32_outputs.py [TARGET]  (default sglang:deepseek_vec)

deepseek_vec returns phy2log, log2phy and logcnt as int32; deepseek_vec_hierarchical
returns log2phy and logcnt as int32. Exit status 1: reproduced; 0: no longer.
"""

import sys

import torch

from properties.engines import find_engine

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "sglang:deepseek_vec")
assert engine is not None
print(engine.description)
tokens = torch.tensor([[5, 1, 7, 3]], dtype=torch.int32)  # SGLang records int32 counts
phy2log, log2phy, logcnt = engine.load()(tokens, 8, 1, 1, 4)
dtypes = {"phy2log": phy2log.dtype, "log2phy": log2phy.dtype, "logcnt": logcnt.dtype}
print(dtypes)
sys.exit(1 if any(dtype != torch.int64 for dtype in dtypes.values()) else 0)
