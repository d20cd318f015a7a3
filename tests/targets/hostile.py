"""Targets that attack the gate instead of balancing: each must leave the verdict right.

Used as gate targets by file path. Where a target needs a place to leave evidence, it
reads the path from ``EPLB_HOSTILE_EVIDENCE`` (set by the test).
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from impl import rebalance_experts

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
EVIDENCE = os.environ.get("EPLB_HOSTILE_EVIDENCE", "")


def reference(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    return rebalance_experts(weight.clone(), r, g, n, p)


class Payload:
    """Runs code wherever it is unpickled."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"echo unpickled > {EVIDENCE}",))


def pickled_payload(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    return Payload()


class Placement(tuple[Any, ...]):
    """A valid answer whose class lives in this module."""


class LoudArray(np.ndarray):
    """An array subclass of this module."""


def classes_of_its_own(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    return Placement((phy2log.numpy().view(LoudArray), log2phy, logcnt))


def patches_then_mutates(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Disables every comparison a check in this process could use, then changes its
    input in place."""
    result = reference(weight, r, g, n, p)
    torch.Tensor.clone = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.equal = lambda input, other: True
    builtins.any = lambda iterable: False
    builtins.all = lambda iterable: True
    weight.add_(1)
    return result


def nested_too_deep(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    value: list[Any] = []
    for _ in range(200):
        value = [value]
    return value


class FakeTensor:
    """Claims to be a torch tensor and explodes when read."""

    __module__ = "torch"

    def detach(self) -> FakeTensor:
        raise RuntimeError("boom")


def explodes_when_read(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    return (FakeTensor(), FakeTensor(), FakeTensor())


def garbage_on_the_wire(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Writes a frame header and junk on the worker's reply pipe, then answers."""
    reply_fd = int(sys.argv[2])
    os.write(reply_fd, (40).to_bytes(8, "big") + (30).to_bytes(8, "big") + b"{not json" * 3)
    return reference(weight, r, g, n, p)


FAKE_VERDICT = "eplb-spec gate: impl:rebalance_experts: PASS"


def floods_output(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid, but prints megabytes, a fake verdict and terminal escapes."""
    sys.stdout.write(("\x1b[2J" + FAKE_VERDICT + "\n") * 20_000)
    sys.stdout.flush()
    print("x" * 1_000_000, file=sys.stderr)
    return reference(weight, r, g, n, p)


def raises_a_spoof(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    raise ValueError(f"\x1b[2J\n{FAKE_VERDICT}\n")


SPAWNED = [False]


def spawns_a_daemon(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Leaves a detached grandchild behind (double fork, new session), once."""
    if not SPAWNED[0] and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            Path(EVIDENCE).write_text(str(os.getpid()))
            time.sleep(600)
        os._exit(0)
    if not SPAWNED[0]:
        SPAWNED[0] = True
        while not Path(EVIDENCE).exists():
            time.sleep(0.01)
    return reference(weight, r, g, n, p)


HOARD: list[bytearray] = []


def leaks_memory(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    HOARD.append(bytearray(200 << 20))
    return reference(weight, r, g, n, p)


def exits(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    sys.exit(0)


def kills_the_gate(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    if weight.shape[1] > 1:
        os.kill(os.getppid(), signal.SIGKILL)
    return reference(weight, r, g, n, p)


def crashes_then_cannot_be_imported_again(
    weight: torch.Tensor, r: int, g: int, n: int, p: int
) -> Outputs:
    os._exit(5)


CALLS = [0]


def fails_only_once(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """One wrong answer, the first time an input has more than two experts: a replay of
    the same input passes."""
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    if weight.shape[1] > 2 and CALLS[0] == 0:
        CALLS[0] += 1
        logcnt[:, 0] += 1
    return phy2log, log2phy, logcnt


def returns_int32(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid placements in int32, as some engines return them."""
    return tuple(t.to(torch.int32) for t in reference(weight, r, g, n, p))  # type: ignore[return-value]


if EVIDENCE and os.environ.get("EPLB_HOSTILE_IMPORT_ONCE"):
    marker = Path(EVIDENCE)
    if marker.exists():
        raise ImportError("this module refuses to be imported twice")
    marker.write_text("imported")
