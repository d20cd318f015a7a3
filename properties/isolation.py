"""Call a third-party function in a process of its own, and trust nothing it sends back.

The target runs in ``properties.worker``, started as a fresh interpreter in a session of
its own, with an address-space limit and no core dumps. This side, where every check and
the verdict are computed, never runs the target's code and never unpickles its data:

- results cross as plain data (``properties.wire``): numbers, strings, lists and NumPy
  arrays of numeric dtypes; anything else arrives as a marker naming its type, and a
  message that cannot be decoded is a failure of the call (``undecodable``);
- a weight tensor is a view of a file this side wrote; after the call this side reads
  the file back, so whether the target modified its input is decided here;
- every call has a deadline; a hang, a crash, an undecodable answer or a worker that
  cannot be restarted is a ``CallFailure``, and the worker is replaced;
- the worker's stdout and stderr are drained into a bounded buffer, never echoed;
- the worker and every process it started (found through ``/proc``) are ended when it
  is replaced and when the target is closed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from properties.wire import HEADER, MAX_FRAME_BYTES, WireError, decode_frame, write_frame
from properties.worker import TargetError

STARTUP_ALLOWANCE_S = 120.0
"""Time for a fresh interpreter to import NumPy and torch before the target is loaded."""

DEFAULT_MEMORY_MB = 4096
DEFAULT_IMPORT_TIMEOUT_S = 60.0
"""Importing a target may take this long (or the per-call timeout, when longer)."""
OUTPUT_KEPT_BYTES = 4096


@dataclass(frozen=True)
class TensorArg:
    """A tensor to hand to the target: values, dtype name and memory layout (the
    weights; an old placement is one with dtype ``int64``)."""

    values: np.ndarray
    dtype: str = "float64"
    contiguous: bool = True


@dataclass(frozen=True)
class CallResult:
    value: Any
    seconds: float
    input_modified: bool
    returned: str


@dataclass(frozen=True)
class CallFailure:
    """``kind``: ``raised`` (an exception), ``timeout``, ``crash`` or ``undecodable``."""

    kind: str
    message: str
    exception_type: str = ""


@dataclass
class FailureCount:
    """Hangs and crashes of the targets of one gate run, shared by its workers."""

    count: int = 0


class OutputSink:
    """Drains a pipe in a thread; keeps the first and last bytes and counts the rest."""

    def __init__(self, fd: int) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.drain, args=(fd,), daemon=True)
        self.thread.start()

    def drain(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 1 << 16):
                with self.lock:
                    self.total += len(chunk)
                    room = OUTPUT_KEPT_BYTES - len(self.head)
                    self.head += chunk[:room]
                    self.tail = (self.tail + chunk[room:])[-OUTPUT_KEPT_BYTES:]
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class Output:
    """What a target wrote to stdout and stderr, bounded."""

    total_bytes: int = 0
    excerpt: str = ""
    sinks: list[OutputSink] = field(default_factory=list)

    def summary(self) -> tuple[int, str]:
        total = 0
        parts = []
        for sink in self.sinks:
            with sink.lock:
                total += sink.total
                text = bytes(sink.head)
                if sink.total > len(sink.head):
                    skipped = sink.total - len(sink.head) - len(sink.tail)
                    text += f"\n[... {skipped} bytes ...]\n".encode() if skipped > 0 else b""
                    text += bytes(sink.tail)
            parts.append(text.decode(errors="replace"))
        return total, "".join(parts)


def process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (parent pid, session id)`` of every process (Linux ``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def descendants(root: int) -> set[int]:
    """``root``'s descendants, and every process in its session."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found = {pid for pid, (_, session) in table.items() if session == root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(root)
    found.discard(os.getpid())
    return found


def end_process_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop the worker and every process it started, then kill them all."""
    pid = process.pid
    if process.poll() is None and sys.platform.startswith("linux"):
        stopped: set[int] = set()
        for _ in range(20):  # stopped processes cannot start more; repeat until stable
            fresh = descendants(pid) - stopped
            if not fresh:
                break
            for child in fresh:
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGSTOP)
            stopped |= fresh
        for child in stopped:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def read_frame_until(fd: int, deadline: float) -> Any:
    """The next frame from ``fd``; TimeoutError past ``deadline``, EOFError when the
    writer is gone, WireError when what arrives is not a frame."""
    buffer = bytearray()
    needed = HEADER.size
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while len(buffer) < needed:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if not poller.poll(int(min(left, 1.0) * 1000) + 1):
            continue
        chunk = os.read(fd, min(needed - len(buffer), 1 << 20))
        if not chunk:
            raise EOFError
        buffer += chunk
        if len(buffer) == HEADER.size and needed == HEADER.size:
            total, _ = HEADER.unpack(bytes(buffer))
            if not HEADER.size <= total <= MAX_FRAME_BYTES:
                raise WireError(f"a frame of {total} bytes is outside the limits")
            needed = total
    return decode_frame(bytes(buffer))


def exit_description(process: subprocess.Popen[bytes]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    code = process.returncode
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


class IsolatedTarget:
    """The target function, called in a worker process with a per-call timeout."""

    def __init__(
        self,
        target: str,
        timeout_s: float,
        *,
        memory_mb: int = DEFAULT_MEMORY_MB,
        failures: FailureCount | None = None,
        import_timeout_s: float | None = None,
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
            raise ValueError(f"timeout must be a positive finite number, got {timeout_s!r}")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 256:
            raise ValueError(f"memory_mb must be an int of at least 256, got {memory_mb!r}")
        if import_timeout_s is not None and not (0 < import_timeout_s < float("inf")):
            raise ValueError(
                f"import timeout must be a positive finite number, got {import_timeout_s!r}"
            )
        self.target = target
        self.timeout_s = float(timeout_s)
        self.import_timeout_s = (
            max(self.timeout_s, DEFAULT_IMPORT_TIMEOUT_S)
            if import_timeout_s is None
            else float(import_timeout_s)
        )
        self.memory_mb = memory_mb
        self.shared_failures = failures if failures is not None else FailureCount()
        self.process: subprocess.Popen[bytes] | None = None
        self.request_fd = -1
        self.reply_fd = -1
        self.dead: str | None = None  # why calls can no longer be answered
        self.restarts = 0
        self.failures = 0  # timeouts and crashes of this target
        self.resolved_file = ""
        self.output = Output()
        remove_stale_scratch()
        self.scratch = Path(
            tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=shared_memory_dir())
        )
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """A fresh worker with the target imported; TargetError when that fails."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        output_read, output_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "properties.worker",
            str(request_read),
            str(reply_write),
            str(self.memory_mb),
            str(os.getpid()),
        ]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(request_read, reply_write),
                start_new_session=True,
                cwd=os.getcwd(),
            )
        finally:
            for fd in (request_read, reply_write, output_write):
                os.close(fd)
        self.request_fd, self.reply_fd = request_write, reply_read
        self.output.sinks.append(OutputSink(output_read))
        try:
            self.expect("started", STARTUP_ALLOWANCE_S, "start")
            write_frame(self.request_fd, {"target": self.target, "sys_path": list(sys.path)})
            reply = self.expect("ready", self.import_timeout_s, "import the target")
        except TargetError:
            self.discard_worker()
            raise
        self.resolved_file = str(reply.get("file", ""))[:1000]

    def expect(self, status: str, limit_s: float, doing: str) -> dict[str, Any]:
        assert self.process is not None
        try:
            reply = read_frame_until(self.reply_fd, time.monotonic() + limit_s)
        except TimeoutError:
            raise TargetError(
                f"the worker for {self.target!r} did not {doing} within {limit_s:g} s"
            ) from None
        except (EOFError, OSError, WireError):
            raise TargetError(
                f"the worker for {self.target!r} died before it could {doing} "
                f"(it {exit_description(self.process)})"
            ) from None
        if not isinstance(reply, dict):
            raise TargetError(f"the worker for {self.target!r} answered out of protocol")
        if reply.get("status") == "import-error":
            raise TargetError(str(reply.get("message", "import failed"))[:2000])
        if reply.get("status") != status:
            raise TargetError(f"the worker for {self.target!r} answered out of protocol")
        return reply

    def discard_worker(self) -> None:
        for fd in (self.request_fd, self.reply_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.request_fd = self.reply_fd = -1
        if self.process is not None:
            end_process_tree(self.process)
            self.process = None

    def restart(self) -> None:
        self.discard_worker()
        self.restarts += 1
        try:
            self.start()
        except TargetError as error:
            self.dead = f"the worker could not be restarted: {error}"

    def failed(self, kind: str, message: str) -> CallFailure:
        self.failures += 1
        self.shared_failures.count += 1
        self.restart()
        return CallFailure(kind, message)

    def write_tensor(self, arg: TensorArg, index: int) -> tuple[dict[str, Any], Path, bytes]:
        values = np.asarray(arg.values)
        if values.ndim != 2:
            raise ValueError("a tensor argument is 2-D")
        stored = values if arg.contiguous else values.T
        data = np.ascontiguousarray(stored.astype(np.dtype(arg.dtype))).tobytes()
        path = self.scratch / f"arg{index}.bin"
        path.write_bytes(data)
        spec = {
            "__tensor__": True,
            "path": str(path),
            "dtype": arg.dtype,
            "shape": list(values.shape),
            "contiguous": arg.contiguous,
        }
        return spec, path, data

    def call(self, *args: Any, **kwargs: Any) -> CallResult | CallFailure:
        """Call the target on ``args`` and keyword arguments ``kwargs`` (``TensorArg``
        for tensors, plain data else); every tensor is read back after the call, so
        ``input_modified`` covers them all."""
        if self.dead is not None:
            return CallFailure("crash", self.dead)
        assert self.process is not None
        for name in kwargs:
            if not name.isidentifier():
                raise ValueError(f"a keyword argument name must be an identifier, got {name!r}")
        tensors: list[tuple[Path, bytes]] = []

        def plain(arg: Any, index: int) -> Any:
            if not isinstance(arg, TensorArg):
                return arg
            spec, path, data = self.write_tensor(arg, index)
            tensors.append((path, data))
            return spec

        message = [plain(arg, index) for index, arg in enumerate(args)]
        keywords = {
            name: plain(arg, len(args) + index) for index, (name, arg) in enumerate(kwargs.items())
        }
        request: dict[str, Any] = {"args": message}
        if keywords:
            request["kwargs"] = keywords
        try:
            start = time.perf_counter()
            try:
                write_frame(self.request_fd, request)
            except OSError:
                return self.failed(
                    "crash", f"the worker was gone before the call: it {self.exit_text()}"
                )
            try:
                reply = read_frame_until(self.reply_fd, time.monotonic() + self.timeout_s)
            except TimeoutError:
                return self.failed("timeout", f"no answer within {self.timeout_s:g} s")
            except (EOFError, OSError):
                return self.failed("crash", f"the worker process died: it {self.exit_text()}")
            except WireError as error:
                return self.failed("undecodable", f"the answer cannot be decoded: {error}")
            seconds = time.perf_counter() - start
            modified = any(path.read_bytes() != data for path, data in tensors)
        finally:
            for path, _ in tensors:
                with contextlib.suppress(OSError):
                    path.unlink()
        return self.interpret(reply, seconds, modified)

    def interpret(self, reply: Any, seconds: float, modified: bool) -> CallResult | CallFailure:
        status = reply.get("status") if isinstance(reply, dict) else None
        if status == "raised":
            name = str(reply.get("type", ""))[:200]
            return CallFailure("raised", str(reply.get("message", ""))[:2000], name)
        if status == "unencodable":
            self.restart()
            return CallFailure(
                "undecodable", f"the answer is not plain data: {reply.get('message', '')}"[:500]
            )
        if status != "ok":
            return self.failed("undecodable", "the worker answered out of protocol")
        return CallResult(reply.get("value"), seconds, modified, str(reply.get("returned", "")))

    def exit_text(self) -> str:
        return "was gone" if self.process is None else exit_description(self.process)

    def close(self) -> None:
        self.discard_worker()
        with contextlib.suppress(OSError):
            for leftover in self.scratch.iterdir():
                leftover.unlink()
            self.scratch.rmdir()

    def __enter__(self) -> IsolatedTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SCRATCH_PREFIX = "eplb-gate-"


def remove_stale_scratch() -> None:
    """Remove the argument folders of gate processes that died without cleaning up
    (killed, say): each folder names its gate's process id."""
    base = Path(shared_memory_dir() or tempfile.gettempdir())
    for folder in base.glob(f"{SCRATCH_PREFIX}*-*"):
        owner = folder.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        with contextlib.suppress(OSError):
            for leftover in folder.iterdir():
                leftover.unlink()
            folder.rmdir()


def shared_memory_dir() -> str | None:
    """``/dev/shm`` where it exists (argument files stay in memory), else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


__all__ = [
    "CallFailure",
    "CallResult",
    "FailureCount",
    "IsolatedTarget",
    "TargetError",
    "TensorArg",
]
