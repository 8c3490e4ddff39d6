"""What a config value of each field type must look like (TOML has no tuples, and bools are not numbers)."""
from __future__ import annotations

import typing
from typing import Any

from trainer.errors import ConfigError

# What a value of each scalar type must look like, for the error message.
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_EXPECTED_LIST = {int: "an integer or a list of integers", float: "a number or a list of numbers"}


def coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as a value of type ``kind`` (a field's resolved type); ints are accepted for floats, a
    scalar for a tuple (``dropout = 0.5``), a list for a tuple (TOML has no tuples)."""
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(_fits(x, item) for x in items):
            raise ConfigError(f"{key} must be {_EXPECTED_LIST[item]}, got {value!r}")
        return tuple(item(x) for x in items)
    if kind not in _EXPECTED:
        raise ConfigError(f"{key}: unsupported field type {kind}")  # a programming error, named anyway
    if not _fits(value, kind):
        raise ConfigError(f"{key} must be {_EXPECTED[kind]}, got {value!r}")
    return kind(value)


def _fits(value: Any, kind: type) -> bool:
    """True if ``value`` is a ``kind`` as TOML writes it: bools are not numbers, ints are floats."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
