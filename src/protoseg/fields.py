"""Config fields that say which values they accept, so that a bad value fails when the config is read.

A config dataclass declares ``momentum: float = setting(0.999, minimum=0.0, maximum=1.0)``; the config
loader (:mod:`protoseg.config`) checks every value against its field's limits and names the key, the
value and the allowed range in its error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

_LIMITS = ("choices", "minimum", "maximum", "greater_than", "less_than", "items", "length", "pattern")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    greater_than: float | None = None,
    less_than: float | None = None,
    items: dict[str, Any] | None = None,
    length: int | None = None,
    pattern: str | None = None,
) -> Any:
    """A dataclass field with limits: ``choices`` (allowed values), ``minimum`` / ``maximum`` (inclusive),
    ``greater_than`` / ``less_than`` (exclusive), ``pattern`` (a regular expression a string must match
    whole). Numbers must also be finite. For a list, ``items`` holds the limits of each element (same
    keywords), ``length`` its exact length and ``minimum`` its shortest allowed length."""
    metadata = {
        key: value
        for key, value in (
            ("choices", tuple(choices) if choices is not None else None),
            ("minimum", minimum),
            ("maximum", maximum),
            ("greater_than", greater_than),
            ("less_than", less_than),
            ("items", items),
            ("length", length),
            ("pattern", pattern),
        )
        if value is not None
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def describe_limits(limits: dict[str, Any]) -> str:
    """``"one of a, b"``, ``"in [0, 1]"``, ``"> 0"``, ... for an error message."""
    if "choices" in limits:
        return "one of " + ", ".join(str(choice) for choice in limits["choices"])
    low = (
        f"[{limits['minimum']}"
        if "minimum" in limits
        else f"({limits['greater_than']}"
        if "greater_than" in limits
        else None
    )
    high = (
        f"{limits['maximum']}]"
        if "maximum" in limits
        else f"{limits['less_than']})"
        if "less_than" in limits
        else None
    )
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low.startswith("[") else "> ") + low[1:]
    if high:
        return ("<= " if high.endswith("]") else "< ") + high[:-1]
    return "valid"


def check_value(value: Any, limits: dict[str, Any]) -> str | None:
    """Why ``value`` breaks ``limits`` (a phrase for an error message), or None when it is allowed."""
    if value is None or not limits:
        return None
    if isinstance(value, (list, tuple)):
        if "length" in limits and len(value) != limits["length"]:
            return f"needs exactly {limits['length']} values, got {len(value)}"
        if "minimum" in limits and len(value) < limits["minimum"]:
            return f"needs at least {limits['minimum']} value(s), got {len(value)}"
        for index, item in enumerate(value):
            problem = check_value(item, limits.get("items", {}))
            if problem:
                return f"item {index}: {problem}"
        return None
    if "choices" in limits:
        return None if value in limits["choices"] else f"must be {describe_limits(limits)}, got {value!r}"
    if "pattern" in limits and isinstance(value, str) and not re.fullmatch(limits["pattern"], value):
        return f"must match {limits['pattern']}, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        broken = (
            ("minimum" in limits and value < limits["minimum"])
            or ("maximum" in limits and value > limits["maximum"])
            or ("greater_than" in limits and value <= limits["greater_than"])
            or ("less_than" in limits and value >= limits["less_than"])
        )
        if broken:
            return f"must be {describe_limits(limits)}, got {value}"
    return None


def field_limits(field: dataclasses.Field) -> dict[str, Any]:
    """The limits recorded on a dataclass field by :func:`setting` (empty for a plain field)."""
    return {key: field.metadata[key] for key in _LIMITS if key in field.metadata}


def argument(kind: type, **limits: Any) -> Any:
    """An ``argparse`` ``type`` that converts a command-line value to ``kind`` and checks the limits of
    :func:`setting` (``minimum``, ``less_than``, ...): ``--threshold 1.5`` fails at parse time with
    ``argument --threshold: must be in [0.0, 1.0), got 1.5``."""
    import argparse

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        problem = check_value(value, limits)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = kind.__name__
    return convert
