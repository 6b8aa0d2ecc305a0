"""What a page shows of an object: cells of a table row, bars, YAML. Plain functions of wire JSON.

A cell names the dotted path it comes from (``data-path``) so that ``static/console.js`` can update it in
place from a watch event; a bar names its numerator and denominator paths the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from specs.kinds import KINDS, Column, KindInfo

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)
# The kinds in the navigation bar, in the order an operator looks at them.
NAV = ("Cluster", "Host", "VirtualMachine", "Migration", "StorageDomain", "Snapshot", "Disk", "Network",
       "VirtualMachinePool", "Role", "RoleBinding")
env.globals["nav"] = [(kind, KINDS[kind].plural) for kind in NAV[1:]]


@dataclass(frozen=True)
class Bar:
    """A bar of ``num / den`` (both dotted paths); ``den`` None: ``num`` is a percentage. ``free``: the
    numerator is what is left, the bar shows what is used (den - num)."""

    header: str
    num: str
    den: str | None = None
    free: bool = False
    unit: str = ""


# Columns the console adds to `virtplane get`'s: load and capacity as bars.
EXTRA: dict[str, tuple[Column | Bar, ...]] = {
    "Host": (Bar("CPU allocated", "status.allocation.cpus", "status.capacity.cpus"),
             Bar("Memory allocated", "status.allocation.memory", "status.capacity.memory", unit="bytes"),
             Column("POWER", "status.power.operation"), Column("POWER STATE", "status.power.state")),
    "StorageDomain": (Bar("Used", "status.available", "status.capacity", free=True, unit="bytes"),
                      Column("ACTIVE ON", "status.readyHosts"), Column("FAILED ON", "status.failedHosts")),
}


def lookup(obj: dict[str, Any] | None, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)  # pragma: no cover - the loop always returns


def bar_value(obj: dict[str, Any], bar: Bar) -> dict[str, Any]:
    """``{"percent": 0-100 or None, "label": text}`` for a bar of ``obj``."""
    num = lookup(obj, bar.num)
    if bar.den is None:
        percent = int(num) if isinstance(num, int | float) else None
        return {"percent": percent, "label": f"{percent}%" if percent is not None else "—"}
    den = lookup(obj, bar.den)
    if not isinstance(num, int | float) or not isinstance(den, int | float) or den <= 0:
        return {"percent": None, "label": "—"}
    used = den - num if bar.free else num
    percent = max(0, min(100, round(100 * used / den)))
    if bar.unit == "bytes":
        return {"percent": percent, "label": f"{human_bytes(used)} / {human_bytes(den)} ({percent}%)"}
    return {"percent": percent, "label": f"{used:g} / {den:g} ({percent}%)"}


def columns(info: KindInfo) -> list[Column | Bar]:
    """The table of a kind: `virtplane get -o wide`'s columns (percent columns as bars), then EXTRA."""
    out: list[Column | Bar] = [Bar(c.header, c.path) if c.bar else c for c in info.columns
                               if c.header != "AGE"]
    return out + list(EXTRA.get(info.kind, ()))


# Columns that hold a number of bytes, shown as KiB/MiB/GiB (here and by console.js).
BYTE_PATHS = frozenset({"status.capacity.memory", "status.capacity", "status.available", "status.allocation",
                        "status.dataRemaining", "status.memory"})


def cell(obj: dict[str, Any], column: Column | Bar) -> dict[str, Any]:
    if isinstance(column, Bar):
        return {"bar": True, "num": column.num, "den": column.den or "", "free": column.free,
                "unit": column.unit, **bar_value(obj, column)}
    value = lookup(obj, column.path)
    if column.path in BYTE_PATHS and isinstance(value, int):
        return {"bar": False, "path": column.path, "text": human_bytes(value), "unit": "bytes"}
    return {"bar": False, "path": column.path, "text": text(value), "unit": ""}


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def kind_of_plural(plural: str) -> KindInfo | None:
    return next((i for i in KINDS.values() if i.plural == plural), None)


