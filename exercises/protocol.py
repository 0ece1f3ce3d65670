"""Messages between the checker and the learner's process: JSON and raw arrays, never pickle.

Unpickling runs code that the sender chose, so a message from the learner's process must not be
a pickle: a learner's file could make one that patches the checker as it is read. A message
here is a dict of plain JSON values (str, int, float, bool, None, lists, dicts with str keys)
and NumPy arrays of plain numeric dtypes. On the wire it is one frame:

    b"EXF1"  sender pid (u32)  JSON length (u32)  JSON   then for each array: its bytes

where the JSON stands each array in as {"__array__": index, "dtype": "float64", "shape": [...]}.
Reading refuses anything else (another magic, an unknown dtype, sizes that disagree, a frame
over ``LIMIT`` bytes) with ``BadMessage``. Floats that JSON cannot hold (inf, nan) travel as
{"__float__": "inf"}.

This module imports only the standard library and NumPy: the learner's process uses it.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time

import numpy as np

MAGIC = b"EXF1"
HEADER = struct.Struct("<4sII")  # magic, sender pid, JSON length
LIMIT = 256 * 2**20  # bytes in one frame, at most (the checked arrays are a few kilobytes)
DTYPES = {
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
}


class BadMessage(Exception):
    """What arrived is not a message of this protocol (or is larger than ``LIMIT``)."""


class Silence(Exception):
    """No (whole) message arrived before the deadline."""


class Closed(Exception):
    """The other end closed its side: the process is gone or shut its pipe."""


def encode(message) -> bytes:
    arrays = []

    def plain(value):
        if isinstance(value, np.ndarray):
            if value.dtype.name not in DTYPES:
                raise TypeError(f"arrays of dtype {value.dtype} are not sent")
            arrays.append(np.ascontiguousarray(value))
            return {
                "__array__": len(arrays) - 1,
                "dtype": value.dtype.name,
                "shape": list(value.shape),
            }
        if isinstance(value, np.generic):
            return plain(value.item())
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        raise TypeError(f"a {type(value).__name__} is not sent")

    text = json.dumps(plain(message), allow_nan=False).encode()
    parts = [HEADER.pack(MAGIC, os.getpid(), len(text)), text] + [a.tobytes() for a in arrays]
    return b"".join(parts)


def decode(text: bytes, blobs: list):
    """The message from its JSON and its arrays' bytes (already read, each checked against its
    header)."""

    def restore(value):
        if isinstance(value, dict):
            if set(value) == {"__array__", "dtype", "shape"}:
                return blobs[value["__array__"]]
            if set(value) == {"__float__"}:
                if value["__float__"] not in ("inf", "-inf", "nan"):
                    raise BadMessage("a float that is not inf, -inf or nan")
                return float(value["__float__"])
            return {key: restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [restore(item) for item in value]
        return value

    try:
        return restore(json.loads(text))
    except (ValueError, RecursionError) as error:
        raise BadMessage(f"its JSON does not read: {error}") from None


def array_specs(text: bytes):
    """[(dtype, shape)] of the arrays a frame's JSON announces, in order, checked."""
    specs = {}

    def walk(value):
        if isinstance(value, dict):
            if "__array__" in value:
                index, dtype, shape = value.get("__array__"), value.get("dtype"), value.get("shape")
                if (
                    not isinstance(index, int)
                    or dtype not in DTYPES
                    or not isinstance(shape, list)
                    or not all(isinstance(n, int) and n >= 0 for n in shape)
                ):
                    raise BadMessage("an array header that does not read")
                specs[index] = (dtype, tuple(shape))
            else:
                for item in value.values():
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    try:
        walk(json.loads(text))
    except (ValueError, RecursionError) as error:
        raise BadMessage(f"its JSON does not read: {error}") from None
    if sorted(specs) != list(range(len(specs))):
        raise BadMessage("array indices that are not 0, 1, 2, ...")
    return [specs[index] for index in range(len(specs))]


def send(fd, message):
    """Write one message to ``fd`` (blocking until all of it is written)."""
    data = memoryview(encode(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class Reader:
    """Reads whole messages from ``fd`` with a deadline; what arrived past a message waits for the
    next read."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = bytearray()

    def _fill(self, count, deadline):
        while len(self.buffer) < count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Silence()
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                raise Silence()
            chunk = os.read(self.fd, max(65536, count - len(self.buffer)))
            if not chunk:
                raise Closed()
            self.buffer += chunk

    def read(self, deadline=None):
        """(sender pid, message); ``deadline`` is a time.monotonic() value, or None to wait for
        ever."""
        self._fill(HEADER.size, deadline)
        magic, pid, length = HEADER.unpack(bytes(self.buffer[: HEADER.size]))
        if magic != MAGIC:
            raise BadMessage("a frame that does not start with the protocol's magic bytes")
        if length > LIMIT:
            raise BadMessage(f"a frame of {length} bytes (at most {LIMIT})")
        self._fill(HEADER.size + length, deadline)
        text = bytes(self.buffer[HEADER.size : HEADER.size + length])
        specs = array_specs(text)
        sizes = [
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for dtype, shape in specs
        ]
        total = HEADER.size + length + sum(sizes)
        if total > LIMIT:
            raise BadMessage(f"a frame of {total} bytes (at most {LIMIT})")
        self._fill(total, deadline)
        blobs, offset = [], HEADER.size + length
        for (dtype, shape), size in zip(specs, sizes):
            blob = (
                np.frombuffer(bytes(self.buffer[offset : offset + size]), dtype=dtype)
                .reshape(shape)
                .copy()
            )
            blobs.append(blob)
            offset += size
        del self.buffer[:total]
        return pid, decode(text, blobs)
