"""Progress bars for the long commands: a ``tqdm`` bar on standard error when it is a
terminal, nothing otherwise (what a command prints on standard output, and everything
piped or redirected, is unchanged)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[Item], description: str, total: int | None = None) -> Iterator[Item]:
    """``items`` as they come, with a bar ``description [done/total]`` on a terminal.

    Without ``total``, tqdm takes ``len(items)`` where there is one. The bar is cleared
    when the items are done, so the command's own lines stay as they would be without it."""
    if not on_terminal():
        yield from items
        return
    from tqdm import tqdm

    with tqdm(
        items, desc=description, total=total, file=sys.stderr, leave=False, dynamic_ncols=True
    ) as bar:
        yield from bar


def process_started() -> float:
    """``time.perf_counter()``'s value when this process started (Linux: from
    ``/proc``, so the interpreter's start and every import count); elsewhere, now."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # the fields after the command's name, which is in parentheses
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            since_boot = float(uptime.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        started_after_boot = int(fields[19]) / ticks  # field 22 of stat
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, since_boot - started_after_boot)
