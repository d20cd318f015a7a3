"""Run a third-party function in a separate process, with a timeout per call.

A crash, a hang or a memory blow-up of the target becomes a ``CallFailure`` here; the
worker process is then replaced, and the caller goes on. Arguments and results travel
by pickle: tensors are rebuilt in the worker from NumPy arrays with the requested dtype
and memory layout, and results come back as NumPy arrays.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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
        raise TargetError(f"target {target!r} must look like module:function or file.py:function")
    location, _, name = target.rpartition(":")
    try:
        if location.endswith(".py") or "/" in location:
            path = Path(location)
            if not path.is_file():
                raise TargetError(f"no file {location!r}")
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
    except Exception as error:  # any import-time failure of third-party code
        raise TargetError(
            f"importing {location!r} failed: {type(error).__name__}: {error}"
        ) from None
    function: Any = module
    for part in name.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise TargetError(f"{location!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


@dataclass(frozen=True)
class TensorArg:
    """A weight tensor to rebuild in the worker."""

    values: np.ndarray
    dtype: str = "float64"
    contiguous: bool = True


def build_tensor(arg: TensorArg) -> Any:
    import torch

    tensor = torch.from_numpy(np.array(arg.values)).to(getattr(torch, arg.dtype))
    if not arg.contiguous and tensor.dim() == 2:
        spread = torch.empty(tensor.shape[1], tensor.shape[0], dtype=tensor.dtype).t()
        spread.copy_(tensor)
        tensor = spread
    return tensor


def kinds_of(value: Any) -> str:
    """What the target returned, in words (``tuple of 3 torch.Tensor``...)."""
    if isinstance(value, (tuple, list)):
        inner = sorted({type(v).__module__.split(".")[0] + "." + type(v).__name__ for v in value})
        return f"{type(value).__name__} of {len(value)} {'/'.join(inner)}"
    return type(value).__module__.split(".")[0] + "." + type(value).__name__


def to_numpy(value: Any) -> Any:
    """Tensors and arrays (also inside tuples and lists) as NumPy arrays."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    if isinstance(value, list):
        return [to_numpy(v) for v in value]
    return value


def serve(target: str, connection: multiprocessing.connection.Connection) -> None:
    """Worker loop: import the target, then answer calls until told to stop."""
    try:
        function = load_target(target)
    except TargetError as error:
        connection.send(("import-error", str(error)))
        return
    connection.send(("ready", None))
    while True:
        message = connection.recv()
        if message is None:
            return
        args, kwargs = message
        args = [build_tensor(a) if isinstance(a, TensorArg) else a for a in args]
        before = [a.clone() if hasattr(a, "clone") else None for a in args]
        start = time.perf_counter()
        try:
            result = function(*args, **kwargs)
            elapsed = time.perf_counter() - start
            modified = any(
                b is not None and not bool((a == b).all())
                for a, b in zip(args, before, strict=True)
            )
            connection.send(("ok", (to_numpy(result), elapsed, modified, kinds_of(result))))
        except Exception as error:
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            connection.send(("raised", (type(error).__name__, text)))


@dataclass(frozen=True)
class CallResult:
    value: Any
    seconds: float
    input_modified: bool
    returned: str


@dataclass(frozen=True)
class CallFailure:
    """``kind``: ``raised`` (an exception), ``timeout`` or ``crash``."""

    kind: str
    message: str
    exception_type: str = ""


class IsolatedTarget:
    """The target function, called in a worker process with a per-call timeout."""

    def __init__(self, target: str, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {timeout_s}")
        self.target = target
        self.timeout_s = timeout_s
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.connection: multiprocessing.connection.Connection | None = None
        self.restarts = 0
        self.failures = 0  # timeouts and crashes
        self.start()

    def start(self) -> None:
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=serve, args=(self.target, child), daemon=True)
        self.process.start()
        child.close()
        self.connection = parent
        if not parent.poll(120):
            self.stop()
            raise TargetError(f"the worker for {self.target!r} did not start")
        try:
            kind, payload = parent.recv()
        except EOFError:
            raise TargetError(f"the worker for {self.target!r} died while importing it") from None
        if kind == "import-error":
            self.stop()
            raise TargetError(str(payload))

    def stop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(OSError, ValueError):
                self.connection.send(None)
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=1)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process = None

    def restart(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.restarts += 1
        self.start()

    def call(self, *args: Any, **kwargs: Any) -> CallResult | CallFailure:
        assert self.connection is not None
        try:
            self.connection.send((args, kwargs))
        except (OSError, ValueError):
            self.restart()
            return CallFailure("crash", "the worker was gone before the call")
        if not self.connection.poll(self.timeout_s):
            self.failures += 1
            self.restart()
            return CallFailure("timeout", f"no answer within {self.timeout_s:g} s")
        try:
            kind, payload = self.connection.recv()
        except (EOFError, OSError):
            if self.process is not None:
                self.process.join(timeout=5)
            code = self.process.exitcode if self.process is not None else None
            self.failures += 1
            self.restart()
            return CallFailure("crash", f"the worker process died (exit code {code})")
        if kind == "raised":
            name, text = payload
            return CallFailure("raised", text, name)
        value, seconds, modified, returned = payload
        return CallResult(value, seconds, modified, returned)

    def __enter__(self) -> IsolatedTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
