"""Call a third-party function in a process of its own, and trust nothing it sends back.

The target runs in ``properties.worker``, started as a fresh interpreter in a session of
its own, with a data-segment limit, no capabilities and no core dumps, and, where the
system allows it, in new user, PID, mount and network namespaces (``SANDBOX_COMMAND``).
This side, where every check and the verdict are computed, never runs the target's code
and never unpickles its data:

- this process is not dumpable and is the child subreaper (``protect_gate_process``);
- results cross as plain data (``properties.wire``), every request carries an id that
  its answer must repeat, every write and read has the call's deadline, and an answer
  larger than the call's sizes allow (``reply_limits``) is refused unread; a message
  that cannot be decoded is a failure of the call (``undecodable``);
- tensors are handed over in a memory file held here by descriptor only (``Arena``);
  after each answer, and once the worker is ended, it is compared with what was
  written, so whether the target modified its input is decided here;
- every call has a deadline; a hang, a crash, an undecodable answer or a worker that
  cannot be restarted is a ``CallFailure``, and the worker is replaced;
- the worker's stdout and stderr are drained into a bounded buffer, never echoed;
- the worker is stopped, then it and every process it started (its tree, its session
  and what was left to this subreaper) are stopped and killed through pidfds when it is
  replaced and when the target is closed, whether it is still running or not;
- ``interruptible`` makes SIGINT, SIGTERM and SIGHUP end a run within seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from properties.wire import HEADER, MAX_FRAME_BYTES, WireError, decode_frame, encode
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


PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
F_ADD_SEALS = 1033
F_SEAL_SHRINK = 0x0002
PAGE = mmap.ALLOCATIONGRANULARITY

LIVE_WORKERS: dict[int, int | None] = {}
"""Process ids of the workers this process started and has not yet ended."""
FIRST_WORKER_START: list[int] = []
"""When (in clock ticks since boot) this process started its first worker."""


def protect_gate_process() -> None:
    """Before any target starts (Linux): this process is not dumpable, so a process of
    the same user cannot read or write its memory (``/proc/PID/mem``, ptrace); and it is
    a child subreaper, so that every process a target leaves behind stays in its
    subtree, where it is found and ended. Idempotent."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def process_table() -> dict[int, tuple[int, int, int]]:
    """``pid -> (parent pid, session id, start time)`` of every process (``/proc``)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def descendants(root: int, table: dict[int, tuple[int, int, int]] | None = None) -> set[int]:
    """``root``'s descendants, every process in its session, and the processes left to
    this process (a subreaper) since ``root`` started that are not its workers."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    me = os.getpid()
    since = table.get(root, (0, 0, FIRST_WORKER_START[0] if FIRST_WORKER_START else 0))[2]
    found = {pid for pid, (_, session, _) in table.items() if session == root}
    found |= {
        pid
        for pid in children.get(me, [])
        if pid not in LIVE_WORKERS and table[pid][2] >= since and pid != root
    }
    stack = [root, *found]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(root)
    found.discard(me)
    return found


def send_signal(pid: int, started: int | None, sig: int) -> None:
    """``sig`` to ``pid`` if it is still the process that started at ``started``: through
    a pidfd where the kernel has them, so that a reused pid is never signalled."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None or started is None:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        return
    try:
        handle = opener(pid)
    except OSError:
        return
    try:
        if start_time(pid) == started:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(handle, sig)
    finally:
        os.close(handle)


def end_processes(root: int, root_started: int | None, spare: Set[int] = frozenset()) -> None:
    """Stop ``root`` (SIGSTOP), then stop every process of its tree until no new one
    appears (stopped processes cannot start more), then kill them all and reap those
    left to this process. Done whether ``root`` is still running or not."""
    if not sys.platform.startswith("linux"):
        return
    if root != os.getpid():
        send_signal(root, root_started, signal.SIGSTOP)
    stopped: dict[int, int | None] = {}
    quiet = 0  # a fork-and-exit chain can hide between two scans: three quiet ones end it
    for _ in range(200):
        table = process_table()
        fresh = descendants(root, table) - set(stopped) - spare
        if not fresh:
            quiet += 1
            if quiet == 3:
                break
            time.sleep(0.005)
            continue
        quiet = 0
        for pid in fresh:
            started = table[pid][2] if pid in table else None
            send_signal(pid, started, signal.SIGSTOP)
            stopped[pid] = started
    for pid, started in stopped.items():
        send_signal(pid, started, signal.SIGKILL)
    ADOPTED.update(stopped)
    reap_adopted(2.0)


ADOPTED: set[int] = set()
"""Processes of targets that were ended here and may be left to this process to reap."""


def reap_adopted(patience_s: float = 0.0) -> None:
    """Reap the ended processes that are now this process's children (a subreaper's
    zombies); one whose parent is still another process is kept for a later call."""
    deadline = time.monotonic() + patience_s
    while ADOPTED:
        waiting = False
        for pid in list(ADOPTED):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # gone, or (still) another process's child
                if not Path(f"/proc/{pid}").exists():
                    ADOPTED.discard(pid)
                continue
            if done:
                ADOPTED.discard(pid)
            else:
                waiting = True
        if not waiting or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def end_process_tree(process: subprocess.Popen[bytes], started: int | None = None) -> None:
    """Stop the worker and every process it started, then kill them all."""
    pid = process.pid
    end_processes(pid, started if process.returncode is None else None)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    if process.returncode is None:
        send_signal(pid, started, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    LIVE_WORKERS.pop(pid, None)
    reap_adopted()


def end_leftovers() -> None:
    """Kill every process left in this process's subtree since its first worker started
    (a gate's final report is written after this, so that nothing a target left behind
    can rewrite it)."""
    if FIRST_WORKER_START and sys.platform.startswith("linux"):
        end_processes(os.getpid(), None)


def end_subtree() -> None:
    """Kill every process below this one (an interrupted evaluator's pool or Dask
    workers, their gates' workers and every process of their targets), but for
    multiprocessing's resource tracker, which this process still talks to as it exits."""
    if sys.platform.startswith("linux"):
        from multiprocessing import resource_tracker

        tracker = getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)
        end_processes(os.getpid(), None, frozenset([tracker] if tracker else []))


def write_until(fd: int, data: bytes, deadline: float) -> None:
    """All of ``data`` to the non-blocking ``fd``; TimeoutError past ``deadline``,
    BrokenPipeError when the reader is gone."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT | select.POLLERR | select.POLLHUP)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if not poller.poll(int(min(left, 1.0) * 1000) + 1):
            continue
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]


def read_frame_until(
    fd: int, deadline: float, limit: int = MAX_FRAME_BYTES, header_limit: int = MAX_FRAME_BYTES
) -> Any:
    """The next frame from ``fd``; TimeoutError past ``deadline``, EOFError when the
    writer is gone, WireError when what arrives is not a frame or is larger than
    ``limit`` bytes (``header_limit`` for its JSON header)."""
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
        try:
            chunk = os.read(fd, min(needed - len(buffer), 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError
        buffer += chunk
        if len(buffer) == HEADER.size and needed == HEADER.size:
            total, _ = HEADER.unpack(bytes(buffer))
            if not HEADER.size <= total <= min(limit, MAX_FRAME_BYTES):
                raise WireError(
                    f"a frame of {total} bytes is outside the limits "
                    f"({min(limit, MAX_FRAME_BYTES)} for this call)"
                )
            needed = total
    return decode_frame(bytes(buffer), header_limit)


def reply_limits(args: Sequence[Any]) -> tuple[int, int]:
    """The largest answer (frame, JSON header) the sizes in a call's arguments allow:
    per layer, ``n`` slots, ``cols * (n + 1)`` log2phy entries and ``cols`` counts, where
    ``n`` is the largest integer argument and ``cols`` the widest tensor, in 8 bytes each
    (twice over), or as JSON numbers of up to 8 characters."""
    rows, cols = 1, 1
    largest = 1
    for arg in args:
        if isinstance(arg, TensorArg):
            shape = np.shape(arg.values)
            if len(shape) == 2:
                rows, cols = max(rows, int(shape[0])), max(cols, int(shape[1]))
        elif isinstance(arg, int) and not isinstance(arg, bool) and arg > 0:
            largest = max(largest, min(arg, 1 << 24))
    elements = rows * (largest + cols * (largest + 1) + cols)
    frame = min(MAX_FRAME_BYTES, 16 * elements + (1 << 20))
    header = min(frame, 8 * elements + (1 << 16))
    return frame, header


class Arena:
    """The call arguments of one worker, in one memory file both processes map, held
    here by descriptor only (a memfd sealed against shrinking, or an unlinked file):
    nothing the target does to paths can change what this side reads back, and a
    change to any argument is seen whenever the arena is compared."""

    def __init__(self) -> None:
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None:
            self.fd = memfd_create("eplb-arguments", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, F_ADD_SEALS, F_SEAL_SHRINK)
        else:
            self.fd, name = tempfile.mkstemp(prefix=SCRATCH_PREFIX)
            os.unlink(name)
        self.copy = bytearray()
        self.regions: list[tuple[int, int, str]] = []  # offset, length, which call
        self.reported: set[int] = set()

    def add(self, data: bytes, label: str) -> int:
        offset = -(-len(self.copy) // PAGE) * PAGE
        end = -(-(offset + len(data)) // PAGE) * PAGE
        os.ftruncate(self.fd, max(end, os.fstat(self.fd).st_size))
        os.pwrite(self.fd, data, offset)
        self.copy += bytes(end - len(self.copy))
        self.copy[offset : offset + len(data)] = data
        self.regions.append((offset, len(data), label))
        return offset

    def region_changed(self, index: int) -> bool:
        offset, length, _ = self.regions[index]
        try:
            now = os.pread(self.fd, length, offset)
        except OSError:
            return True
        return now != self.copy[offset : offset + length]

    def changed_since(self, first: int) -> bool:
        """Whether any argument from region ``first`` on differs from what was written."""
        return any(self.region_changed(i) for i in range(first, len(self.regions)))

    def late_changes(self) -> list[str]:
        """The calls whose arguments changed after their answer and were not reported
        yet (each reported once)."""
        found = []
        for index, (_, _, label) in enumerate(self.regions):
            if index not in self.reported and self.region_changed(index):
                self.reported.add(index)
                found.append(label)
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


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


SANDBOX_COMMAND = (
    "unshare",
    "--user",
    "--map-root-user",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount",
    "--mount-proc",
    "--net",
)
"""The worker in new user, PID, mount and network namespaces (util-linux ``unshare``,
unprivileged): it sees no process but its own tree, which dies with it; it has no
network; and it holds no capability over this process, so it cannot reach its memory."""
SANDBOX_PROBE: list[tuple[bool, str]] = []


def sandbox_available() -> tuple[bool, str]:
    """Whether this system lets an unprivileged process make the sandbox, and what the
    report says about it (probed once per process)."""
    if not SANDBOX_PROBE:
        if os.environ.get("EPLB_SANDBOX") == "0":
            SANDBOX_PROBE.append((False, "off: turned off by EPLB_SANDBOX=0"))
        elif not sys.platform.startswith("linux"):
            SANDBOX_PROBE.append((False, "off: namespaces are Linux's"))
        elif shutil.which("unshare") is None:
            SANDBOX_PROBE.append((False, "off: util-linux unshare is not installed"))
        else:
            try:
                probe = subprocess.run(
                    [*SANDBOX_COMMAND, sys.executable, "-c", "import os; print(os.getpid())"],
                    capture_output=True,
                    timeout=30,
                )
                works = probe.returncode == 0 and probe.stdout.strip() == b"1"
                why = probe.stderr.decode(errors="replace").strip()[:200]
            except (OSError, subprocess.TimeoutExpired) as error:
                works, why = False, str(error)[:200]
            SANDBOX_PROBE.append(
                (True, "on: user, PID, mount and network namespaces (unshare)")
                if works
                else (False, f"off: this system refuses unprivileged namespaces ({why})")
            )
    return SANDBOX_PROBE[0]


def die_with_this_process() -> None:
    """In the sandbox launcher, before it runs: killed when the gate dies."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


ARENA_LIMIT_BYTES = 256 << 20
"""A worker whose arguments fill more is replaced (after its arena is compared)."""
COMPARE_ALL_BELOW_BYTES = 16 << 20
"""Below this, every argument of the worker is compared after every reply."""


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
        timeouts_allowed: int | None = None,
        sandbox: bool | None = None,
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
        self.timeouts_allowed = timeouts_allowed
        available, self.sandbox_note = sandbox_available()
        if sandbox and not available:
            raise ValueError(f"the sandbox was asked for, but it is {self.sandbox_note}")
        self.sandboxed = available if sandbox is None else sandbox
        if sandbox is False:
            self.sandbox_note = "off: not asked for"
        self.timeouts = 0
        self.shared_failures = failures if failures is not None else FailureCount()
        self.process: subprocess.Popen[bytes] | None = None
        self.started: int | None = None
        self.arena: Arena | None = None
        self.request_fd = -1
        self.reply_fd = -1
        self.next_id = 0
        self.dead: str | None = None  # why calls can no longer be answered
        self.restarts = 0
        self.failures = 0  # timeouts and crashes of this target
        self.resolved_file = ""
        self.path_note = ""
        self.late_changes: list[str] = []  # calls whose arguments changed after the answer
        self.output = Output()
        self.lock = threading.RLock()
        protect_gate_process()
        remove_stale_scratch()
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """A fresh worker with the target imported; TargetError when that fails."""
        self.arena = Arena()
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        output_read, output_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "properties.worker",
            str(request_read),
            str(reply_write),
            str(self.arena.fd),
            str(self.memory_mb),
            "0" if self.sandboxed else str(os.getpid()),  # no parent id seen inside
        ]
        try:
            self.process = subprocess.Popen(
                [*SANDBOX_COMMAND, *command] if self.sandboxed else command,
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(request_read, reply_write, self.arena.fd),
                start_new_session=True,
                cwd=os.getcwd(),
                preexec_fn=die_with_this_process if self.sandboxed else None,
            )
        finally:
            for fd in (request_read, reply_write, output_write):
                os.close(fd)
        self.started = start_time(self.process.pid)
        LIVE_WORKERS[self.process.pid] = self.started
        if not FIRST_WORKER_START and self.started is not None:
            FIRST_WORKER_START.append(self.started)
        os.set_blocking(request_write, False)
        self.request_fd, self.reply_fd = request_write, reply_read
        self.output.sinks.append(OutputSink(output_read))
        try:
            self.expect("started", STARTUP_ALLOWANCE_S, "start")
            load = {"target": self.target, "sys_path": list(sys.path)}
            try:
                write_until(self.request_fd, encode(load), time.monotonic() + 10)
            except (TimeoutError, OSError):
                raise TargetError(
                    f"the worker for {self.target!r} did not take its target"
                ) from None
            reply = self.expect("ready", self.import_timeout_s, "import the target")
        except TargetError:
            self.discard_worker()
            raise
        self.resolved_file = str(reply.get("file", ""))[:1000]

    def expect(self, status: str, limit_s: float, doing: str) -> dict[str, Any]:
        assert self.process is not None
        try:
            reply = read_frame_until(self.reply_fd, time.monotonic() + limit_s, 1 << 20, 1 << 20)
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
        """End the worker and its whole tree, then compare every argument it was given
        once more (a change found now was made after its call's answer)."""
        with self.lock:
            for fd in (self.request_fd, self.reply_fd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.request_fd = self.reply_fd = -1
            if self.process is not None:
                end_process_tree(self.process, self.started)
                self.process = None
            if self.arena is not None:
                self.late_changes += self.arena.late_changes()
                self.arena.close()
                self.arena = None

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
        self.timeouts += kind == "timeout"
        if self.timeouts_allowed is not None and self.timeouts >= self.timeouts_allowed:
            self.discard_worker()
            self.dead = f"not called again after {self.timeouts} hang(s): {message}"
        else:
            self.restart()
        return CallFailure(kind, message)

    def hand_over(self, arg: TensorArg, label: str) -> dict[str, Any]:
        """Write a tensor into the arena; its description for the worker."""
        assert self.arena is not None
        values = np.asarray(arg.values)
        if values.ndim != 2:
            raise ValueError("a tensor argument is 2-D")
        stored = values if arg.contiguous else values.T
        data = np.ascontiguousarray(stored.astype(np.dtype(arg.dtype))).tobytes()
        shape = "x".join(str(n) for n in values.shape)
        offset = self.arena.add(data, f"{label} ({arg.dtype} [{shape}])")
        return {
            "__tensor__": True,
            "offset": offset,
            "dtype": arg.dtype,
            "shape": list(values.shape),
            "contiguous": arg.contiguous,
        }

    def call(self, *args: Any, **kwargs: Any) -> CallResult | CallFailure:
        """Call the target on ``args`` and keyword arguments ``kwargs`` (``TensorArg``
        for tensors, plain data else); every tensor is compared after the answer, so
        ``input_modified`` covers them all (and ``late_changes`` any later change)."""
        if self.arena is not None and len(self.arena.copy) > ARENA_LIMIT_BYTES:
            self.restart()
        if self.dead is not None:
            return CallFailure("crash", self.dead)
        assert self.process is not None
        assert self.arena is not None
        for name in kwargs:
            if not name.isidentifier():
                raise ValueError(f"a keyword argument name must be an identifier, got {name!r}")
        self.next_id += 1
        request_id = self.next_id
        first_region = len(self.arena.regions)
        label = f"the argument of call {request_id}"
        message = [self.hand_over(a, label) if isinstance(a, TensorArg) else a for a in args]
        keywords = {
            name: self.hand_over(a, label) if isinstance(a, TensorArg) else a
            for name, a in kwargs.items()
        }
        request: dict[str, Any] = {"id": request_id, "args": message}
        if keywords:
            request["kwargs"] = keywords
        limit, header_limit = reply_limits([*args, *kwargs.values()])
        start = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        try:
            write_until(self.request_fd, encode(request), deadline)
        except TimeoutError:
            return self.failed("timeout", f"the request was not taken within {self.timeout_s:g} s")
        except OSError:
            return self.failed(
                "crash", f"the worker was gone before the call: it {self.exit_text()}"
            )
        try:
            reply = read_frame_until(self.reply_fd, deadline, limit, header_limit)
        except TimeoutError:
            return self.failed("timeout", f"no answer within {self.timeout_s:g} s")
        except (EOFError, OSError):
            return self.failed("crash", f"the worker process died: it {self.exit_text()}")
        except WireError as error:
            return self.failed("undecodable", f"the answer cannot be decoded: {error}")
        seconds = time.perf_counter() - start
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            answered = reply.get("id") if isinstance(reply, dict) else None
            return self.failed(
                "undecodable",
                f"the answer is to request {str(answered)[:40]}, not to request {request_id}",
            )
        modified = self.arena.changed_since(first_region)
        if modified:  # reported with this answer, not again as a late change
            self.arena.reported.update(range(first_region, len(self.arena.regions)))
        if len(self.arena.copy) <= COMPARE_ALL_BELOW_BYTES:
            self.late_changes += self.arena.late_changes()
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

    def __enter__(self) -> IsolatedTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def end_every_worker() -> None:
    """End every worker of this process and their trees, from any thread (an
    interrupted run whose main thread does not unwind in time)."""
    for pid, started in list(LIVE_WORKERS.items()):
        end_processes(pid, started)
        send_signal(pid, started, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    end_leftovers()


INTERRUPTED: list[str] = []
"""The signal that interrupted this process's run, once one has."""
INTERRUPT_GRACE_S = 3.0
"""How long an interrupted run may take to unwind before it is ended from outside."""


def say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace"))


@contextlib.contextmanager
def interruptible(
    emergency: Callable[[], None] | None = None, program: str = "eplb-spec"
) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the run: the first raises KeyboardInterrupt in the
    main thread (later ones are ignored, so clean-up is not cut short), and is recorded
    in ``INTERRUPTED``. The signal also wakes a watcher thread at once (through the
    wake-up descriptor, even when the main thread is inside C code that holds on to it):
    if the run has not unwound ``INTERRUPT_GRACE_S`` seconds later, the watcher ends
    every worker and its tree, calls ``emergency`` (to write an "interrupted" report),
    prints one line and exits with status 130. Only in the main thread; elsewhere the
    body just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    INTERRUPTED.clear()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    finished = threading.Event()
    raised: list[bool] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not INTERRUPTED:
            INTERRUPTED.append(name)
        if not raised:
            raised.append(True)
            raise KeyboardInterrupt(name)

    def watch() -> None:
        while True:
            try:
                data = os.read(wake_read, 64)
            except OSError:
                return
            if not data or 0 in data:
                return
            if not INTERRUPTED:
                INTERRUPTED.append(signal.Signals(data[0]).name)
            if finished.wait(INTERRUPT_GRACE_S):
                return
            end_every_worker()
            if emergency is not None:
                with contextlib.suppress(Exception):
                    emergency()
            say(f"{program}: interrupted ({INTERRUPTED[0]}); no verdict\n")
            os._exit(130)

    previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, stop) for sig in WATCHED_SIGNALS}
    watcher = threading.Thread(target=watch, name="eplb-interrupt-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        with contextlib.suppress(OSError):
            os.write(wake_write, b"\0")
        watcher.join(timeout=1)
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for fd in (wake_read, wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)


WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
