"""The ``eplb-spec`` command's entry point: a signal during start-up (SIGINT, SIGTERM,
SIGHUP, before a command installs its own handling) ends the process at once with
status 130 and one line, never a traceback; then ``eplb_spec.cli.main`` runs."""

from __future__ import annotations

import os
import signal
from types import FrameType


def interrupted_at_start(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"eplb-spec: interrupted ({signal.Signals(signum).name})\n".encode())
    os._exit(130)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted_at_start)
    from eplb_spec.cli import main as cli_main

    return cli_main()
