"""vLLM 0.33.0's policy wrapped as a user writes a ``file.py:function`` target: the loads
the gate gives (float64) go unchanged to ``DefaultEplbPolicy.rebalance_experts``.

    eplb-spec gate --impl docs/engines/vllm_plain_target.py:rebalance_experts \\
        --same-as baseline --same-balance

``vllm/__init__.py`` imports the serving stack, so the policy module is imported from the
engine cache the way ``properties.engines`` imports it (fetch it first:
``python -m properties.engines fetch``).
"""

from typing import Any

from properties.engines import VLLM_PACKAGES, VLLM_POLICY, find_engine

engine = find_engine("vllm@0.33.0:default")
assert engine is not None
DefaultEplbPolicy = engine.import_module(VLLM_POLICY, VLLM_PACKAGES).DefaultEplbPolicy


def rebalance_experts(
    weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> Any:
    return DefaultEplbPolicy.rebalance_experts(
        weight, num_replicas, num_groups, num_nodes, num_gpus
    )
