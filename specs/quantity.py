"""Byte quantities as users write them: ``512Mi``, ``20Gi``, ``1G``, ``1.5Gi`` or a plain number of bytes.

Specs keep the user's spelling (so that a GitOps diff stays quiet: ``1024Mi`` is never rewritten to
``1Gi``); code that needs a number calls :func:`parse_quantity`. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema

BINARY_UNITS: dict[str, int] = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
}
DECIMAL_UNITS: dict[str, int] = {
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_UNITS = {**BINARY_UNITS, **DECIMAL_UNITS}
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
EXPECTED = "a size like 512Mi, 20Gi, 1G or a plain number of bytes"
# Spellings people type from habit, mapped to what they most likely meant.
_HINTS = {
    "KiB": "Ki",
    "MiB": "Mi",
    "GiB": "Gi",
    "TiB": "Ti",
    "KB": "k",
    "MB": "M",
    "GB": "G",
    "TB": "T",
    "B": "",
}


def parse_quantity(value: int | str) -> int:
    """Bytes in ``value``; raise ValueError saying what is expected when it is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {EXPECTED}, got a negative number {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {EXPECTED}, got {type(value).__name__} {value!r}")
    return _parse_text(value)


@functools.lru_cache(maxsize=1024)
def _parse_text(value: str) -> int:
    text = value.strip()
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"expected {EXPECTED}, got {value!r}{_hint(text)}")
    unit = match.group(2) or ""
    number_text = text[: len(text) - len(unit)]
    try:
        number = Decimal(number_text)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"expected {EXPECTED}, got {value!r}") from None
    result = number * _UNITS.get(unit, 1)
    if result != result.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes (expected {EXPECTED})")
    return int(result)


def _hint(text: str) -> str:
    for suffix, unit in _HINTS.items():
        number = text[: -len(suffix)].strip()
        if text.endswith(suffix) and number and _QUANTITY.match(number + unit):
            return f" (did you mean {number + unit!r}?)"
    return ""


def format_quantity(size: int) -> str:
    """Shortest exact spelling of ``size`` bytes: binary units first (``512Mi``), then decimal (``1G``)."""
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {size}")
    if size == 0:
        return "0"
    for units in (BINARY_UNITS, DECIMAL_UNITS):
        for unit, factor in sorted(units.items(), key=lambda item: -item[1]):
            if unit == "K":
                continue
            if size % factor == 0:
                return f"{size // factor}{unit}"
    return str(size)


def _validate(value: Any) -> int | str:
    parse_quantity(value)
    return value  # type: ignore[no-any-return]


Quantity = Annotated[
    int | str,
    PlainValidator(_validate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": QUANTITY_PATTERN},
            ],
            "examples": ["512Mi", "20Gi", "1G"],
        }
    ),
]
"""A size in bytes as the user wrote it (``"512Mi"`` or ``1073741824``); see :func:`parse_quantity`."""
