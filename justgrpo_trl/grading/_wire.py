"""The wire between the judge and the candidate process: framed JSON carrying only plain values.

Standard library only, because the candidate process imports it inside the sandbox (where nothing else is readable).

Plain values are exactly: `None`, `bool`, `int`, `float`, `complex`, `str`, `bytes`, and `list`, `tuple`, `dict`,
`set`, `frozenset` of plain values. The encoder checks `type(value) is T` (never `isinstance`), so a subclass, or any
object with its own `__eq__`, `__hash__`, `__len__`..., is refused instead of sent. It calls no method that the
candidate's code could customise on the values it walks. The decoder only ever builds those builtin types, so whatever
bytes arrive, the judge compares builtin values with builtin equality. Never pickle.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

__all__ = ["NotPlain", "WireError", "decode", "encode", "read_frame", "write_frame"]

MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100
_HEADER = struct.Struct("!I")


class NotPlain(TypeError):
    """A value that is not a plain builtin value (see the module docstring)."""


class WireError(Exception):
    """A malformed, oversized or truncated frame."""


def encode(value: Any, depth: int = 0) -> Any:
    """`value` as a JSON-able tagged structure, or `NotPlain`.

    JSON lists stand for Python lists; every other container is a one-key object: `{"t": [...]}` tuple,
    `{"s": [...]}` set, `{"f": [...]}` frozenset, `{"d": [[k, v], ...]}` dict, `{"b": "hex"}` bytes,
    `{"c": [re, im]}` complex, `{"i": "digits"}` int (so that big integers survive any JSON reader).
    """
    if depth > MAX_DEPTH:
        raise NotPlain("value nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": int.__repr__(value)}
    if kind is float:
        return value
    if kind is list:
        return [encode(item, depth + 1) for item in list.__iter__(value)]
    if kind is tuple:
        return {"t": [encode(item, depth + 1) for item in tuple.__iter__(value)]}
    if kind is set:
        return {"s": [encode(item, depth + 1) for item in set.__iter__(value)]}
    if kind is frozenset:
        return {"f": [encode(item, depth + 1) for item in frozenset.__iter__(value)]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    if kind is bytes:
        return {"b": bytes.hex(value)}
    if kind is complex:
        return {"c": [complex.real.__get__(value), complex.imag.__get__(value)]}
    raise NotPlain(f"not a plain value: an object of type {kind.__name__!r}")


def decode(data: Any, depth: int = 0) -> Any:
    """The plain value that `encode` produced `data` from; `WireError` if `data` is not such a structure."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    kind = type(data)
    if data is None or kind is bool or kind is str or kind is float:
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is dict and len(data) == 1:
        ((tag, body),) = data.items()
        try:
            if tag == "i" and type(body) is str:
                return int(body)
            if tag == "b" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "c" and type(body) is list and len(body) == 2:
                real, imag = (decode(part, depth + 1) for part in body)
                if type(real) is float and type(imag) is float:
                    return complex(real, imag)
            if type(body) is list:
                items = [decode(item, depth + 1) for item in body]
                if tag == "t":
                    return tuple(items)
                if tag == "s":
                    return set(items)
                if tag == "f":
                    return frozenset(items)
                if tag == "d" and all(type(pair) is list and len(pair) == 2 for pair in items):
                    return {key: value for key, value in items}
        except (ValueError, TypeError) as error:  # unhashable key, bad hex, huge int...
            raise WireError(f"malformed value: {error}") from None
    raise WireError(f"malformed value of JSON type {kind.__name__}")


def write_frame(fd: int, message: dict[str, Any]) -> None:
    """Send one JSON message, length-prefixed."""
    body = json.dumps(message, allow_nan=True).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise WireError("message too large")
    data = _HEADER.pack(len(body)) + body
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise WireError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    """Receive one message sent by `write_frame`; `WireError` on EOF, oversize or anything but a JSON object."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise WireError("message too large")
    try:
        message = json.loads(_read_exactly(fd, size))
    except (ValueError, RecursionError) as error:
        raise WireError(f"malformed message: {error}") from None
    if type(message) is not dict:
        raise WireError("a message must be a JSON object")
    return message
