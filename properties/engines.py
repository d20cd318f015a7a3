"""Built-in adapters for the balancers that inference engines ship.

An adapter names an engine's EPLB entry point (``--impl vllm``,
``--impl sglang:deepseek_hierarchical``), imports its module from an installed or cached
release without running the engine's package ``__init__`` files, and calls it the way
the engine's own caller does. Adapters adapt calls only; they never change behaviour.

The split of work between the two processes of the gate:

- ``EngineAdapter.load()`` runs in the worker: it imports the engine's module and
  returns a function with DeepSeek's signature
  ``f(weight, num_replicas, num_groups, num_nodes, num_gpus)``.
- ``EngineAdapter.outside_domain(...)`` runs on the checking side: it says why the
  engine's caller would never make a call (its preconditions), so the gate does not
  report what the engine never allows. It never runs engine code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineAdapter:
    """One engine algorithm as a gate target."""

    name: str
    description: str

    def load(self) -> Callable[..., Any]:
        raise NotImplementedError

    def outside_domain(self, num_experts: int, cluster: tuple[int, int, int, int]) -> str | None:
        """Why the engine's caller never makes this call, or None when it may."""
        return None


def find_engine(target: str) -> EngineAdapter | None:
    """The adapter that ``target`` names, or None when it names no engine."""
    return None
