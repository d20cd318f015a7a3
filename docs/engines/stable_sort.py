"""With stable sorts, vLLM's and SGLang's DeepSeek ports equal the baseline on the traces.

Run: python docs/engines/stable_sort.py [DATA_DIR]

Makes NumPy's argsort and torch's sort stable in this process, calls vLLM's policy and
SGLang's ``deepseek_hierarchical`` through the gate's adapters on the 12 traces at
(288, 8, 4, 32), and compares each placement with the baseline (``properties.fidelity``).
Exits 0 when both are identical on every layer, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from properties.engines import find_engine
from properties.fidelity import FidelityReport, compare
from properties.workloads import TRACE_CLUSTER, default_workloads
from spec.problem import BalancingProblem

unstable_argsort = np.argsort
unstable_sort = torch.sort
unstable_tensor_sort = torch.Tensor.sort


def stable_argsort(a: Any, axis: int = -1, kind: str | None = None, order: Any = None) -> Any:
    return unstable_argsort(a, axis=axis, kind="stable", order=order)


def sort_keywords(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``sort(dim, descending)`` as keywords: torch takes ``stable`` only with keywords."""
    return {**dict(zip(("dim", "descending"), args, strict=False)), **kwargs, "stable": True}


def stable_sort(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    return unstable_sort(tensor, **sort_keywords(args, kwargs))


def stable_tensor_sort(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    return unstable_tensor_sort(tensor, **sort_keywords(args, kwargs))


def main() -> int:
    workloads, note = default_workloads(sys.argv[1] if len(sys.argv) > 1 else None)
    print(note)
    np.argsort = stable_argsort  # type: ignore[assignment]
    torch.sort = stable_sort  # type: ignore[assignment]
    torch.Tensor.sort = stable_tensor_sort  # type: ignore[method-assign,assignment]
    identical = True
    for target, dtype in (("vllm", torch.int64), ("sglang:deepseek_hierarchical", torch.int32)):
        adapter = find_engine(target)
        assert adapter is not None
        function = adapter.load()
        layers = []
        for workload in workloads:
            problem = BalancingProblem(workload.loads, *TRACE_CLUSTER)
            weight = torch.from_numpy(workload.loads).to(dtype)
            answer = function(weight, *TRACE_CLUSTER)
            phy2log = answer if isinstance(answer, torch.Tensor) else answer[0]
            layers += compare(problem, phy2log.numpy().astype(np.int64), "baseline").layers
        report = FidelityReport("baseline", layers)
        print(f"{adapter.name} with stable sorts: {report.summary()}")
        identical = identical and report.identical
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
