"""The process a gate target runs in:
``python -m properties.worker REQUEST_FD REPLY_FD ARENA_FD MEMORY_MB GATE_PID``.

It is the only place where a target's code runs. It imports the target, then answers
calls until its request pipe closes, each reply carrying its request's id. What it sends
back is plain data (``properties.wire``); it computes no verdict. Weight tensors are
views of the gate's argument memory file (``ARENA_FD``, held by descriptor, never by
path), so the gate reads any change the target makes to them itself. Before the target
is imported, the worker limits its data segment (``RLIMIT_DATA``: threads still start),
disables core dumps, drops every capability it has (so that, even run as root, it
cannot write the gate's memory), becomes a child subreaper and asks to be killed when
the gate dies, so that a target cannot outlive a gate it took down. A target given as
a file has that file's folder first on ``sys.path``, as ``python path/to/file.py`` has.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import mmap
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from properties.wire import bind_torch, read_frame, type_name, write_frame

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CAPABILITY_VERSION_3 = 0x20080522


class TargetError(Exception):
    """The target cannot be imported (the gate exits with status 2)."""


def load_target(target: str) -> Callable[..., Any]:
    """The function a target names: an engine adapter (``properties.engines``),
    ``package.module:function``, ``path/to/file.py:function``, or either with
    ``Class.method`` in place of ``function`` (class and static methods)."""
    from properties.engines import find_engine

    engine = find_engine(target)
    if engine is not None:
        return engine.load()
    if ":" not in target:
        from properties.engines import ENGINES

        raise TargetError(
            f"target {target!r} must look like module:function or file.py:function, or "
            f"name a built-in engine ({', '.join(ENGINES)}; e.g. vllm, sglang:deepseek)"
        )
    location, _, name = target.rpartition(":")
    try:
        if location.endswith(".py") or "/" in location:
            path = Path(location)
            if not path.is_file():
                raise TargetError(f"no file {location!r}")
            folder = str(path.resolve().parent)  # as `python path/to/file.py` would
            sys.path[:] = [folder] + [p for p in sys.path if p != folder]
            spec = importlib.util.spec_from_file_location(f"eplb_target_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise TargetError(f"cannot import {location!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(location)
    except TargetError:
        raise
    except BaseException as error:  # any import-time failure of third-party code
        raise TargetError(
            f"importing {location!r} failed: {type(error).__name__}: {error}"
        ) from None
    function: Any = module
    for part in name.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise TargetError(f"{location!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def kinds_of(value: Any) -> str:
    """What the target returned, in words (``tuple of 3 torch.Tensor``...)."""
    if isinstance(value, (tuple, list)):
        inner = sorted({type_name(v) for v in value})
        return f"{type(value).__name__} of {len(value)} {'/'.join(inner)}"
    return type_name(value)


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilityData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities(libc: ctypes.CDLL) -> None:
    """No capability left, none to regain (Linux): a worker started as root can no
    longer write the (non-dumpable) gate's memory or signal other users' processes."""
    for capability in range(64):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header = CapabilityHeader(CAPABILITY_VERSION_3, 0)
    data = (CapabilityData * 2)()
    libc.capset(ctypes.byref(header), data)


def confine(memory_mb: int, parent: int) -> None:
    """Limits set before any target code runs (``parent``: the gate's process id; 0 in
    the sandbox, where the gate is outside the worker's PID namespace)."""
    import resource

    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the gate
        drop_capabilities(libc)
        if parent and os.getppid() != parent:  # the gate was gone before the line above
            os._exit(1)


class ArgumentBuilder:
    """Builds call arguments with functions bound before the target was imported, so a
    target that patches torch or NumPy cannot change how its input is handed over."""

    def __init__(self, arena_fd: int) -> None:
        import torch

        bind_torch(torch)
        self.from_numpy = torch.from_numpy
        self.frombuffer = np.frombuffer
        self.torch = torch
        self.arena_fd = arena_fd
        self.mappings: list[mmap.mmap] = []

    def tensor(self, spec: dict[str, Any]) -> Any:
        dtype = np.dtype(str(spec["dtype"]))
        rows, cols = (int(n) for n in spec["shape"])
        stored = (rows, cols) if spec["contiguous"] else (cols, rows)
        size = rows * cols * dtype.itemsize
        if size == 0:
            return self.from_numpy(np.zeros((rows, cols), dtype=dtype))
        mapping = mmap.mmap(self.arena_fd, size, offset=int(spec["offset"]))
        self.mappings.append(mapping)
        array = self.frombuffer(mapping, dtype=dtype, count=rows * cols).reshape(stored)
        tensor = self.from_numpy(array)
        return tensor if spec["contiguous"] else tensor.t()

    def build(self, value: Any) -> Any:
        if isinstance(value, dict) and value.get("__tensor__") is True:
            return self.tensor(value)
        return value


def serve(request_fd: int, reply_fd: int, arena_fd: int) -> None:
    """Import the target named by the first request, then answer calls."""
    builder = ArgumentBuilder(arena_fd)
    write_frame(reply_fd, {"status": "started"})
    load = read_frame(request_fd)
    wanted = [str(p) for p in load["sys_path"]]
    sys.path[:] = wanted + [p for p in sys.path if p not in wanted]
    try:
        function = load_target(str(load["target"]))
    except TargetError as error:
        write_frame(reply_fd, {"status": "import-error", "message": str(error)})
        return
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    write_frame(reply_fd, {"status": "ready", "file": str(getattr(module, "__file__", "") or "")})
    while True:
        try:
            message = read_frame(request_fd)
        except EOFError:
            return
        request_id = message.get("id")
        args = [builder.build(a) for a in message["args"]]
        kwargs = {str(k): builder.build(v) for k, v in message.get("kwargs", {}).items()}
        start = time.perf_counter()
        try:
            value = function(*args, **kwargs)
        except BaseException as error:  # SystemExit and KeyboardInterrupt included
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            reply: dict[str, Any] = {
                "id": request_id,
                "status": "raised",
                "type": type(error).__name__,
                "message": text[-2000:],
            }
        else:
            elapsed = time.perf_counter() - start
            reply = {"id": request_id, "status": "ok", "value": value, "returned": ""}
            reply["seconds"] = elapsed
            try:
                reply["returned"] = kinds_of(value)
            except BaseException:
                reply["returned"] = "an object that cannot be described"
        del args, kwargs
        try:
            write_frame(reply_fd, reply)
        except BaseException as error:
            write_frame(
                reply_fd,
                {
                    "id": request_id,
                    "status": "unencodable",
                    "message": f"{type(error).__name__}: {error}"[:500],
                },
            )


def main() -> None:
    request_fd, reply_fd, arena_fd, memory_mb, parent = (int(a) for a in sys.argv[1:6])
    confine(memory_mb, parent)
    os.set_blocking(request_fd, True)
    serve(request_fd, reply_fd, arena_fd)


if __name__ == "__main__":
    main()
