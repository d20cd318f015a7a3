"""A second round of targets that attack the gate, aimed at its worker/wire design: each
class of attack of issue 19 has one here, and each must leave the verdict right.

Used as gate targets by file path. ``EPLB_HOSTILE_EVIDENCE`` names a file a target may
write what it saw into; ``EPLB_HOSTILE_REPORT`` the gate's ``--json`` file.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from impl import rebalance_experts

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
EVIDENCE = os.environ.get("EPLB_HOSTILE_EVIDENCE", "")
REPORT = os.environ.get("EPLB_HOSTILE_REPORT", "")
F_SETPIPE_SZ = 1031


def reference(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    return rebalance_experts(weight.clone(), r, g, n, p)


def argument_paths() -> list[str]:
    """Every file the worker maps or holds open (where the gate's argument could be)."""
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and "eplb" in parts[5]:
            found.add(parts[5].removesuffix(" (deleted)"))
    for base in ("/dev/shm", "/tmp"):
        for folder in Path(base).glob("eplb-gate-*"):
            found.update(str(p) for p in folder.iterdir())
    return sorted(found)


def mutates_then_restores_the_path(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Changes its input, then puts a file with the original bytes at every path the
    argument could be read back from, and replaces others by FIFOs or deletes them."""
    original = weight.numpy().tobytes()
    result = reference(weight, r, g, n, p)
    weight.add_(1)
    for index, path in enumerate(argument_paths()):
        try:
            if index % 3 == 0:
                Path(path + ".new").write_bytes(original)
                os.replace(path + ".new", path)
            elif index % 3 == 1:
                os.unlink(path)
                os.mkfifo(path)
            else:
                os.unlink(path)
        except OSError:
            pass
    return result


def mutates_after_answering(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Answers right, then changes its input 50 ms later in a thread."""
    result = reference(weight, r, g, n, p)

    def later() -> None:
        time.sleep(0.05)
        weight.add_(1)

    threading.Thread(target=later, daemon=True).start()
    return result


def wrong(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    logcnt[:, 0] += 1
    return phy2log, log2phy, logcnt


def writes_the_gate_memory(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Tries to open the gate's memory for writing (what rewriting "fail" into "pass"
    needs), records what happened, and answers wrong."""
    try:
        with open(f"/proc/{os.getppid()}/mem", "r+b"):
            seen = "opened"
    except OSError as error:
        seen = f"refused: {type(error).__name__}"
    if EVIDENCE:
        Path(EVIDENCE).write_text(seen)
    return wrong(weight, r, g, n, p)


class LyingTensor(torch.Tensor):
    """Holds a wrong placement; ``detach``, ``numpy`` and every torch function claim a
    valid one."""

    claimed: torch.Tensor

    def detach(self) -> torch.Tensor:
        return self.claimed

    def numpy(self, *, force: bool = False) -> np.ndarray:
        return self.claimed.numpy()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        args = tuple(a.claimed if isinstance(a, LyingTensor) else a for a in args)
        return func(*args, **(kwargs or {}))


def lies_about_its_outputs(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    held = logcnt.clone()
    held[:, 0] += 1
    liar = held.as_subclass(LyingTensor)
    liar.claimed = logcnt
    return phy2log, log2phy, liar


class Impostor:
    """Says it is a torch tensor (module and class name) and hands out valid data."""

    __module__ = "torch"

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def detach(self) -> torch.Tensor:
        return self.value


def impostor_outputs(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> object:
    return tuple(Impostor(t) for t in reference(weight, r, g, n, p))


def leaves_a_report_rewriter(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Answers wrong; first leaves behind, past a chain of forks that exit at once and
    with the worker's subreaper flag cleared, a process that rewrites the gate's --json
    report to "pass" 3 s later."""
    ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)  # no longer a child subreaper
    if os.fork() == 0:
        os.setsid()
        for _ in range(20):  # fork-and-exit: each generation is an orphan at once
            if os.fork() != 0:
                os._exit(0)
        time.sleep(3)
        if REPORT:
            document = json.loads(Path(REPORT).read_text())
            Path(REPORT).write_text(json.dumps({**document, "verdict": "pass", "findings": []}))
        os._exit(0)
    return wrong(weight, r, g, n, p)


def fills_the_request_pipe(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Answers, after shrinking and filling its request pipe (opened again for writing
    through /proc) and making the worker wait on another pipe, so that the gate's next
    request can never be written."""
    request_fd = int(__import__("sys").argv[1])
    writer = os.open(f"/proc/self/fd/{request_fd}", os.O_WRONLY | os.O_NONBLOCK)
    fcntl.fcntl(writer, F_SETPIPE_SZ, 4096)
    try:
        while True:
            os.write(writer, b"\0" * 4096)
    except BlockingIOError:
        pass
    silent_read, silent_write = os.pipe()
    KEPT.extend([os.dup(request_fd), writer, silent_write])  # the full pipe stays open
    os.dup2(silent_read, request_fd)
    return reference(weight, r, g, n, p)


KEPT: list[int] = []


def answers_another_request(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Writes an answer of its own, to the next request, ahead of the real one."""
    import sys

    from properties.wire import write_frame

    phy2log, log2phy, logcnt = reference(weight, r, g, n, p)
    write_frame(
        int(sys.argv[2]),
        {"id": -1, "status": "ok", "value": (phy2log.numpy(), log2phy.numpy(), logcnt.numpy())},
    )
    return phy2log, log2phy, logcnt


def huge_header(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Writes a frame whose JSON header is 600 MB long on the reply pipe."""
    import sys

    length = 600 << 20
    os.write(int(sys.argv[2]), struct.pack(">QQ", 16 + length, length))
    chunk = b" " * (1 << 20)
    for _ in range(600):
        os.write(int(sys.argv[2]), chunk)
    time.sleep(600)
    return reference(weight, r, g, n, p)


def wide_phy2log(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> np.ndarray:
    """``phy2log`` alone, a million slots wide (int8, so that it stays small on the
    wire): expanding it before checking its shape would take the gate's time."""
    return np.zeros((weight.shape[0], 1_000_000), dtype=np.int8)


def thread_per_call(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Valid; computes in a fresh thread each call, which lingers for a second after."""
    result: list[Outputs] = []

    def compute() -> None:
        result.append(reference(weight, r, g, n, p))
        time.sleep(1)

    worker = threading.Thread(target=compute)
    worker.start()
    while not result:
        time.sleep(0.0005)
    return result[0]


def probes_the_sandbox(weight: torch.Tensor, r: int, g: int, n: int, p: int) -> Outputs:
    """Records how many processes it can see and whether it can reach the network."""
    import errno
    import socket

    seen: dict[str, Any] = {"processes": sum(e.isdigit() for e in os.listdir("/proc"))}
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=2).close()
        seen["network"] = "reached"
    except OSError as error:
        seen["network"] = errno.errorcode.get(error.errno or 0, str(error))
    if EVIDENCE:
        Path(EVIDENCE).write_text(json.dumps(seen))
    return reference(weight, r, g, n, p)
