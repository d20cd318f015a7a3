"""Balancers wrong only where a gate that stops at small sizes, one dtype, back-to-back
repeats or one layer would not look. Each wraps the reference; used as gate targets by
file path (``tests/test_gate_scale.py``)."""

from __future__ import annotations

import hashlib

import torch

from impl import rebalance_experts

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
TRACE_CLUSTER = (288, 8, 4, 32)
REAL_SIZE = 64  # experts from which these targets go wrong


def with_phy2log(phy2log: torch.Tensor, num_experts: int) -> Outputs:
    """``phy2log`` with the ``log2phy`` and ``logcnt`` that go with it."""
    layers, replicas = phy2log.shape
    logcnt = torch.zeros((layers, num_experts), dtype=torch.int64)
    log2phy = torch.full((layers, num_experts, replicas - num_experts + 1), -1, dtype=torch.int64)
    for layer in range(layers):
        for slot, expert in enumerate(phy2log[layer].tolist()):
            log2phy[layer, expert, logcnt[layer, expert]] = slot
            logcnt[layer, expert] += 1
    return phy2log, log2phy, logcnt


def wrong_at_scale(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Counts one replica too many from 64 experts on, except at (288, 8, 4, 32)."""
    phy2log, log2phy, logcnt = rebalance_experts(weight, r, g, n, p)
    if weight.shape[1] >= REAL_SIZE and (r, g, n, p) != TRACE_CLUSTER:
        logcnt[:, 0] += 1
    return phy2log, log2phy, logcnt


def wrong_on_int64_at_scale(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Names an expert that does not exist when given int64 loads from 64 experts on."""
    phy2log, log2phy, logcnt = rebalance_experts(weight, r, g, n, p)
    if weight.dtype == torch.int64 and weight.shape[1] >= REAL_SIZE:
        phy2log[:, -1] = weight.shape[1]
    return phy2log, log2phy, logcnt


def random_ties_at_scale(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Breaks ties between equal loads at random from 64 experts on (valid, but two calls
    on one input can differ)."""
    if weight.shape[1] < REAL_SIZE:
        return rebalance_experts(weight, r, g, n, p)
    loads = weight.double()
    jitter = torch.rand(loads.shape, dtype=torch.float64) * 1e-9 * (1 + loads)
    phy2log, _, _ = rebalance_experts(loads + jitter, r, g, n, p)
    return with_phy2log(phy2log, weight.shape[1])


_previous: list[str] = ["", ""]  # the input before the current one, and the current one


def remembers_inputs(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid, but rotates the slots inside each GPU by a digest of the input it saw before
    this one: the same input twice in a row gives one answer, after another input
    another."""
    seen = weight.contiguous().numpy().tobytes() + str(tuple(weight.shape)).encode()
    digest = hashlib.sha256(seen).hexdigest()
    if digest != _previous[1]:
        _previous[:] = [_previous[1], digest]
    phy2log, _, _ = rebalance_experts(weight, r, g, n, p)
    cap = r // p
    shift = int(_previous[0][:8] or "0", 16) % cap if cap > 1 else 0
    rotated = phy2log.view(phy2log.shape[0], p, cap).roll(shift, dims=2).reshape(phy2log.shape)
    return with_phy2log(rotated.contiguous(), weight.shape[1])


def reuses_first_layer(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid, but places the last layer as it placed the first (a layer-index bug)."""
    phy2log, _, _ = rebalance_experts(weight, r, g, n, p)
    phy2log[-1] = phy2log[0]
    return with_phy2log(phy2log, weight.shape[1])
