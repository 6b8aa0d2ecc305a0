"""Building status conditions in planners. Pure."""

from __future__ import annotations

from specs.meta import Condition


def cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
    """A condition of ``type_`` that is True when ``ok``; ``reason`` is a CamelCase code, ``message`` for people."""
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=message)
