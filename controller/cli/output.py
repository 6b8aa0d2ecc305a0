"""Rendering for the CLI: tables, YAML, unified diffs, plans. No network, no files."""

from __future__ import annotations

import difflib
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from ruamel.yaml import YAML

if TYPE_CHECKING:
    from specs.kinds import KindInfo

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def to_yaml(data: Any) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def dig(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, Sequence) and not isinstance(cur, str) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


BAR_WIDTH = 20


def progress_bar(value: Any, width: int = BAR_WIDTH) -> str:
    """``[=========>          ]  45%`` for a percentage; ``-`` when there is none."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    percent = max(0.0, min(100.0, float(value)))
    filled = int(width * percent / 100)  # never full before 100%
    body = "=" * filled if filled >= width else "=" * max(filled - 1, 0) + (">" if filled else "")
    return f"[{body.ljust(width)}] {percent:3.0f}%"


def table_rows(info: KindInfo, items: Iterable[Mapping[str, Any]], wide: bool) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in info.columns if wide or not c.wide_only]
    headers = [c.header for c in columns]
    rows = []
    for item in items:
        row = []
        for column in columns:
            if column.path == "metadata.creationTimestamp":
                row.append(age(dig(item, column.path)))
            elif column.bar:
                row.append(progress_bar(dig(item, column.path)))
            else:
                row.append(cell(dig(item, column.path)))
        rows.append(row)
    return headers, rows


def rich_table(headers: list[str], rows: list[list[str]], *, show_headers: bool = True) -> Table:
    table = Table(box=None, show_header=show_headers, header_style="bold", pad_edge=False)
    for h in headers:
        table.add_column(h, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    return table


def plain_lines(headers: list[str] | None, rows: list[list[str]], widths: list[int]) -> list[str]:
    """Aligned plain text (``headers`` None: rows only). ``widths`` is updated in place and only grows, so
    the later lines of a watch stay aligned with the earlier ones wherever they fit."""
    for i, h in enumerate(headers or ()):
        widths[i] = max(widths[i], len(h))
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = [] if headers is None else ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.extend("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return [line.rstrip() for line in lines]


def print_table(headers: list[str], rows: list[list[str]], *, show_headers: bool = True) -> None:
    if not sys.stdout.isatty():
        # Plain, aligned text: stable for scripts and for the README.
        lines = plain_lines(headers if show_headers else None, rows, [0] * len(headers))
        sys.stdout.write("\n".join(lines) + "\n")
        return
    out.print(rich_table(headers, rows, show_headers=show_headers))


def unified_diff(kind: str, name: str, before: Any, after: Any) -> list[Text]:
    a = to_yaml(before).splitlines(keepends=False) if before is not None else []
    b = to_yaml(after).splitlines(keepends=False) if after is not None else []
    lines = []
    for line in difflib.unified_diff(a, b, f"live/{kind}/{name}", f"desired/{kind}/{name}", lineterm="", n=3):
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        lines.append(Text(line, style=style))
    return lines


IMPACT_STYLE = {
    "live": "green",
    "next-boot": "yellow",
    "restart": "bold yellow",
    "migration": "magenta",
    "destructive": "bold red",
    "none": "dim",
}


def plan_lines(plan: Sequence[Mapping[str, Any]], note: str | None = None) -> list[Text]:
    """One line per action; the actions that follow a move under a "then, on the target" line."""
    lines = []
    if not plan:
        lines.append(Text(f"    ({note})" if note else "    (nothing to do)", style="dim"))
    moved = False
    for action in plan:
        if action.get("after") == "move" and not moved:
            moved = True
            lines.append(Text("    then, once it runs on the target:", style="italic"))
        impact = action.get("impact", "")
        text = Text("    ")
        text.append(f"{action.get('action', '?'):<16}", style="bold")
        text.append(f" [{impact}]", style=IMPACT_STYLE.get(impact, ""))
        target = action.get("target")
        if target:
            text.append(f" {target}")
        reason = action.get("reason")
        if reason:
            text.append(f"  — {reason}", style="dim")
        lines.append(text)
    return lines
