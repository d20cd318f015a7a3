"""The plain-data wire format between the gate and the process that runs a target.

Nothing that crosses from the target's process is ever unpickled: a message is a JSON
header followed by raw array bytes. Decoding can only yield ``None``, booleans,
numbers, strings, lists, tuples, string-keyed dicts and NumPy arrays of a fixed set of
numeric dtypes; anything else the target returns arrives as an ``Unsupported`` marker
naming its type. Whatever cannot be decoded raises ``WireError``.

Frame: 8-byte big-endian total length, 8-byte big-endian header length, the UTF-8 JSON
header, then the array buffers back to back. In the header an array is
``{"__array__": [dtype, shape, offset, nbytes]}``, a tuple ``{"__tuple__": [...]}``,
an unsupported object ``{"__unsupported__": "module.Type"}`` and a dict
``{"__dict__": [[key, value], ...]}``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_FRAME_BYTES = 1 << 30
"""A larger answer is refused: no balancer output of a sane problem comes near it."""

MAX_DEPTH = 32
"""Nesting deeper than this is not a balancer's output."""

ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]
)

HEADER = struct.Struct(">QQ")


class WireError(Exception):
    """A message that is not in the wire format (or breaks its limits)."""


@dataclass(frozen=True)
class Unsupported:
    """Something the target returned that is not plain data: only its type's name."""

    type_name: str


def type_name(value: object) -> str:
    kind = type(value)
    module = kind.__module__.split(".")[0]
    return kind.__name__ if module == "builtins" else f"{module}.{kind.__name__}"


NDARRAY = np.ndarray
NDARRAY_VIEW = np.ndarray.view
IS_SUBCLASS = type.__subclasscheck__


class TensorReader:
    """Reads a torch tensor's own values with torch's C functions, bound before any
    target code runs: a subclass's Python methods (``detach``, ``numpy``...) and its
    ``__torch_function__`` are never called, so what it says it holds cannot replace
    what it holds."""

    def __init__(self, torch: Any) -> None:
        base = torch._C.TensorBase
        self.tensor_type = torch.Tensor
        self.disable = torch._C.DisableTorchFunction
        self.as_subclass = base.as_subclass
        self.detach = base.detach
        self.cpu = base.cpu
        self.resolve_conj = base.resolve_conj
        self.resolve_neg = base.resolve_neg
        self.numpy = base.numpy

    def owns(self, kind: type) -> bool:
        return bool(IS_SUBCLASS(self.tensor_type, kind))

    def read(self, value: Any) -> np.ndarray:
        with self.disable():
            plain = self.as_subclass(value, self.tensor_type)
            plain = self.resolve_neg(self.resolve_conj(self.cpu(self.detach(plain))))
            return np.array(self.numpy(plain), copy=True)


TENSORS: list[TensorReader] = []


def bind_torch(torch: Any) -> None:
    """Read torch tensors from now on (the worker calls this before importing a target)."""
    TENSORS[:] = [TensorReader(torch)]


def as_array(value: Any) -> np.ndarray | None:
    """A NumPy array of a value's own contents when it is an array or a tensor (decided
    from its type's real ancestry, never from what it says its module is); None
    otherwise. Raises TypeError for a tensor NumPy cannot hold (bfloat16, say)."""
    kind = type(value)
    if IS_SUBCLASS(NDARRAY, kind):
        return NDARRAY_VIEW(value, NDARRAY)
    if not TENSORS and "torch" in sys.modules:  # in-process use; the worker binds first
        bind_torch(sys.modules["torch"])
    if TENSORS and TENSORS[0].owns(kind):
        return TENSORS[0].read(value)
    return None


def encode(value: Any) -> bytes:
    """One frame holding ``value`` (objects that are not plain data become markers)."""
    buffers: list[bytes] = []
    offset = 0

    def convert(item: Any, depth: int) -> Any:
        nonlocal offset
        if depth > MAX_DEPTH:
            raise WireError(f"nesting deeper than {MAX_DEPTH}")
        if item is None or isinstance(item, (bool, str)):
            return item
        if isinstance(item, int):
            return int(item)
        if isinstance(item, float):
            return item if math.isfinite(item) else {"__float__": repr(item)}
        if isinstance(item, (np.integer, np.floating, np.bool_)):
            return convert(item.item(), depth)
        try:
            array = as_array(item)
        except TypeError as error:
            return {"__unsupported__": f"tensor that NumPy cannot hold ({error})"[:200]}
        if array is not None:
            array = np.ascontiguousarray(array)
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            if dtype.str not in ALLOWED_DTYPES:
                return {"__unsupported__": f"array of dtype {array.dtype}"}
            data = array.astype(dtype, copy=False).tobytes()
            buffers.append(data)
            entry = [dtype.str, list(array.shape), offset, len(data)]
            offset += len(data)
            return {"__array__": entry}
        if isinstance(item, tuple):
            return {"__tuple__": [convert(v, depth + 1) for v in item]}
        if isinstance(item, list):
            return [convert(v, depth + 1) for v in item]
        if isinstance(item, dict):
            return {"__dict__": [[str(k), convert(v, depth + 1)] for k, v in item.items()]}
        return {"__unsupported__": type_name(item)}

    header = json.dumps(convert(value, 0), allow_nan=False).encode()
    body = b"".join(buffers)
    total = HEADER.size + len(header) + len(body)
    if total > MAX_FRAME_BYTES:
        raise WireError(f"a message of {total} bytes exceeds the limit of {MAX_FRAME_BYTES}")
    return HEADER.pack(total, len(header)) + header + body


def decode_frame(frame: bytes, header_limit: int = MAX_FRAME_BYTES) -> Any:
    """The value of a complete frame (without its first 8 length bytes checked again);
    a JSON header longer than ``header_limit`` bytes, and running out of memory while
    decoding, are WireErrors."""
    try:
        return decode_checked(frame, header_limit)
    except MemoryError:
        raise WireError("decoding the answer ran out of memory") from None


def decode_checked(frame: bytes, header_limit: int) -> Any:
    if len(frame) < HEADER.size:
        raise WireError("truncated frame")
    total, header_length = HEADER.unpack_from(frame)
    if total != len(frame) or header_length > total - HEADER.size:
        raise WireError("inconsistent frame lengths")
    if header_length > header_limit:
        raise WireError(
            f"a header of {header_length} bytes is larger than the problem allows ({header_limit})"
        )
    body = memoryview(frame)[HEADER.size + header_length :]
    try:
        tree = json.loads(frame[HEADER.size : HEADER.size + header_length].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise WireError(f"header is not JSON: {type(error).__name__}") from None

    def build(item: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"nesting deeper than {MAX_DEPTH}")
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        if isinstance(item, list):
            return [build(v, depth + 1) for v in item]
        if not isinstance(item, dict) or len(item) != 1:
            raise WireError("unknown node in header")
        ((tag, content),) = item.items()
        if tag == "__tuple__" and isinstance(content, list):
            return tuple(build(v, depth + 1) for v in content)
        if tag == "__dict__" and isinstance(content, list):
            pairs = [p for p in content if isinstance(p, list) and len(p) == 2]
            if len(pairs) != len(content) or not all(isinstance(k, str) for k, _ in pairs):
                raise WireError("malformed dict")
            return {k: build(v, depth + 1) for k, v in pairs}
        if tag == "__unsupported__" and isinstance(content, str):
            return Unsupported(content[:200])
        if tag == "__float__" and content in ("nan", "inf", "-inf"):
            return float(content)
        if tag == "__array__":
            return build_array(content, body)
        raise WireError(f"unknown tag {tag[:40]!r}")

    return build(tree, 0)


def build_array(entry: Any, body: memoryview) -> np.ndarray:
    if not (isinstance(entry, list) and len(entry) == 4):
        raise WireError("malformed array entry")
    dtype, shape, offset, nbytes = entry
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {str(dtype)[:20]!r} is not allowed")
    if not (
        isinstance(shape, list)
        and len(shape) <= 8
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise WireError("malformed array shape")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (offset, nbytes)):
        raise WireError("malformed array offset")
    kind = np.dtype(dtype)
    if math.prod(shape) * kind.itemsize != nbytes or not 0 <= offset <= len(body) - nbytes:
        raise WireError("array bytes do not match its shape")
    data = np.frombuffer(body[offset : offset + nbytes], dtype=kind).reshape(shape)
    return data.copy()


def write_frame(fd: int, value: Any) -> None:
    """Encode ``value`` and write the whole frame to ``fd``."""
    view = memoryview(encode(value))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, count: int) -> bytes:
    """``count`` bytes from ``fd``; EOFError when the writer is gone first."""
    parts = []
    left = count
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(fd: int) -> Any:
    """The next frame's value from ``fd`` (blocking)."""
    head = read_exact(fd, HEADER.size)
    total, _ = HEADER.unpack(head)
    if not HEADER.size <= total <= MAX_FRAME_BYTES:
        raise WireError(f"a frame of {total} bytes is outside the limits")
    return decode_frame(head + read_exact(fd, total - HEADER.size))
