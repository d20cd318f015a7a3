"""Targets that take down the process evaluating them (the gate's process, i.e. an
evaluator worker): the batch must neither lose nor duplicate a result.

``EPLB_LOST_WORKER_MARKER`` (set by the test) names a file: ``kills_its_evaluator_once``
kills only while that file does not exist yet, and creates it first.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from impl import rebalance_experts

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
MARKER = os.environ.get("EPLB_LOST_WORKER_MARKER", "")


def kills_its_evaluator_once(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    if MARKER and not Path(MARKER).exists():
        Path(MARKER).write_text("killed once")
        os.kill(os.getppid(), signal.SIGKILL)
    return rebalance_experts(weight, r, g, n, p)
