"""vLLM's default policy drops an expert when one load is infinite (outside its caller's
domain: vLLM passes token counts, which are finite; listed for completeness).

    python docs/engines/repro_vllm_infinite_load.py [TARGET]  (default vllm)

The packing step marks full packs by setting their weight to infinity, so a pack that
holds an infinite load looks full; the argmin then overfills one pack. Exit status 1:
reproduced; 0: no longer.
"""

import sys

import torch

from properties.engines import find_engine

engine = find_engine(sys.argv[1] if len(sys.argv) > 1 else "vllm")
assert engine is not None
print(engine.description)
loads = torch.arange(1.0, 13.0).reshape(1, 12)
loads[0, 5] = float("inf")
phy2log = engine.load()(loads, 16, 4, 2, 8)
missing = sorted(set(range(12)) - set(phy2log[0].tolist()))
print(f"phy2log {phy2log.tolist()}: experts without a replica: {missing}")
sys.exit(1 if missing else 0)
