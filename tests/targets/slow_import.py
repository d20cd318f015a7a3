"""A target whose import never finishes: the gate's time limit covers importing."""

from __future__ import annotations

import time

time.sleep(600)


def rebalance_experts(*args: object) -> None:
    raise AssertionError("never imported")
