"""The wire between the judge and the candidate process: length-prefixed frames carrying only plain values.

Standard library only, and light to import (no `json`, `re` or `ctypes`), because every candidate process imports
it inside the sandbox before it runs anything.

Plain values are exactly: `None`, `bool`, `int`, `float`, `complex`, `str`, `bytes`, and `list`, `tuple`, `dict`,
`set`, `frozenset` of plain values.

- Judge -> candidate (trusted data: setup, code, call arguments): `marshal`, which knows only those builtin types.
- Candidate -> judge (untrusted): JSON text written by `to_json`, which checks `type(value) is T` (never
  `isinstance`), so a subclass, or any object with its own `__eq__`, `__hash__`, `__iter__`..., is refused instead of
  sent, and calls no method the candidate's code could customise. The judge parses it with `json` and `decode`, which
  only ever builds those builtin types. Whatever bytes arrive, the judge compares builtin values with builtin
  equality. Never pickle; never `marshal` in that direction.
"""

from __future__ import annotations

import marshal
import os
from typing import Any

__all__ = [
    "NotPlain",
    "WireError",
    "decode",
    "read_json",
    "read_trusted",
    "to_json",
    "write_json",
    "write_trusted",
]

MAX_FRAME_BYTES = 64 * 1024 * 1024
# What one frame from the candidate may cost the judge to decode: bytes, JSON values (so that memory stays near the
# frame's size: one 32 MiB frame of `[]` would otherwise build 11 million lists) and, in one set, frozenset or dict,
# elements sharing a hash (building a set of n colliding integers is n^2 / 2 comparisons in one C call, which no
# alarm interrupts).
MAX_REPLY_BYTES = 32 * 1024 * 1024
MAX_REPLY_VALUES = 1_000_000
MAX_HASH_COLLISIONS = 1000
MAX_DEPTH = 100
_FLOAT_WORDS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


class NotPlain(TypeError):
    """A value that is not a plain builtin value (see the module docstring)."""


class WireError(Exception):
    """A malformed, oversized or truncated frame."""


def _float(value: float) -> str:
    text = float.__repr__(value)
    return _FLOAT_WORDS.get(text, text)


def to_json(value: Any, depth: int = 0) -> str:
    """`value` as tagged JSON text, or `NotPlain`.

    JSON `null`, `true`, `false`, numbers and arrays stand for `None`, booleans, floats and lists; everything else
    is a one-key object: `{"u": hex}` str (UTF-8, hex: no escaping to get wrong), `{"i": "digits"}` int, `{"b": hex}`
    bytes, `{"c": [re, im]}` complex, `{"t": [...]}` tuple, `{"s": [...]}` set, `{"f": [...]}` frozenset,
    `{"d": [[k, v], ...]}` dict.
    """
    if depth > MAX_DEPTH:
        raise NotPlain("value nested too deeply")
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return '{"u":"' + bytes.hex(str.encode(value, "utf-8", "surrogatepass")) + '"}'
    if kind is int:
        return '{"i":"' + int.__repr__(value) + '"}'
    if kind is float:
        return _float(value)
    if kind is list:
        return "[" + ",".join([to_json(item, depth + 1) for item in list.__iter__(value)]) + "]"
    if kind is tuple or kind is set or kind is frozenset:
        tag = "t" if kind is tuple else "s" if kind is set else "f"
        return '{"' + tag + '":[' + ",".join([to_json(item, depth + 1) for item in kind.__iter__(value)]) + "]}"
    if kind is dict:
        pairs = [
            "[" + to_json(key, depth + 1) + "," + to_json(item, depth + 1) + "]" for key, item in dict.items(value)
        ]
        return '{"d":[' + ",".join(pairs) + "]}"
    if kind is bytes:
        return '{"b":"' + bytes.hex(value) + '"}'
    if kind is complex:
        return '{"c":[' + _float(complex.real.__get__(value)) + "," + _float(complex.imag.__get__(value)) + "]}"
    raise NotPlain(f"not a plain value: an object of type {kind.__name__!r}")


def decode(data: Any, depth: int = 0) -> Any:
    """The plain value whose `to_json` text parsed to `data`; `WireError` if `data` is not such a structure."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    kind = type(data)
    if data is None or kind is bool or kind is float:
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is dict and len(data) == 1:
        ((tag, body),) = data.items()
        try:
            if type(body) is str:
                if tag == "u":
                    return bytes.fromhex(body).decode("utf-8", "surrogatepass")
                if tag == "i" and body.lstrip("-").isdigit() and body.isascii():
                    return int(body)
                if tag == "b":
                    return bytes.fromhex(body)
            if type(body) is list:
                if tag == "c" and len(body) == 2 and all(type(part) is float for part in body):
                    return complex(body[0], body[1])
                items = [decode(item, depth + 1) for item in body]
                if tag == "t":
                    return tuple(items)
                if tag == "s":
                    return set(_hashable(items))
                if tag == "f":
                    return frozenset(_hashable(items))
                if tag == "d" and all(type(pair) is list and len(pair) == 2 for pair in items):
                    keys = _hashable([pair[0] for pair in items])
                    return {key: pair[1] for key, pair in zip(keys, items)}
        except (ValueError, TypeError) as error:  # unhashable key, bad hex, huge int...
            raise WireError(f"malformed value: {error}") from None
    raise WireError(f"malformed value of JSON type {kind.__name__}")


def _hashable(items: list[Any]) -> list[Any]:
    """`items`, checked to make a set or dict cheaply: `WireError` if too many share a hash (their hashes are
    computed one by one here, where the judge's alarm can still interrupt)."""
    distinct = len({hash(item) for item in items})  # TypeError for an unhashable item
    if len(items) - distinct > MAX_HASH_COLLISIONS:
        raise WireError(f"{len(items) - distinct} elements of one set share their hashes")
    return items


def _write(fd: int, body: bytes, limit: int = MAX_FRAME_BYTES) -> None:
    if len(body) > limit:
        raise WireError("message too large")
    view = memoryview(len(body).to_bytes(4, "big") + body)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise WireError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read(fd: int, limit: int = MAX_FRAME_BYTES) -> bytes:
    size = int.from_bytes(_read_exactly(fd, 4), "big")
    if size > limit:
        raise WireError("message too large")
    return _read_exactly(fd, size)


def write_trusted(fd: int, message: Any) -> None:
    """Judge -> candidate: one message of plain values (`marshal`); `NotPlain` for anything else."""
    try:
        body = marshal.dumps(message)
    except ValueError as error:
        raise NotPlain(str(error)) from None
    _write(fd, body)


def read_trusted(fd: int) -> Any:
    """Candidate side: one message from the judge (trusted, so `marshal` may read it)."""
    return marshal.loads(_read(fd))


def write_json(fd: int, text: str) -> None:
    """Candidate -> judge: one JSON text (an object built with `to_json`)."""
    _write(fd, str.encode(text, "utf-8", "surrogatepass"), MAX_REPLY_BYTES)


def read_json(fd: int) -> dict[str, Any]:
    """Judge side: one message from the candidate, parsed as JSON; `WireError` unless it is a JSON object."""
    import json

    body = _read(fd, MAX_REPLY_BYTES)
    if body.count(b",") + body.count(b"[") + body.count(b"{") >= MAX_REPLY_VALUES:  # each value but one needs one
        raise WireError(f"a message of more than {MAX_REPLY_VALUES} values")
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise WireError(f"malformed message: {error}") from None
    if type(message) is not dict:
        raise WireError("a message must be a JSON object")
    return message
