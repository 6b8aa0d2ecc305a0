"""`virtplane migrate vm/NAME [--to HOST] [--wait]`: a Migration object (not for Git), and its progress.

Exit codes: 0 created (or, with --wait, Succeeded); 1 the migration Failed or --wait timed out; the common
codes of ``controller.cli.common`` otherwise (2 bad input, 4 server unreachable).
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import EXIT_DIFFERS, EXIT_INVALID, client, fail, reporting, split_ref
from controller.cli.output import err
from controller.client.errors import NotFound

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from controller.client.sdk import Client

EXIT_FAILED = EXIT_DIFFERS
TERMINAL = ("Succeeded", "Failed", "Aborted")
POLL_S = 0.2


def migrate(
    ref: Annotated[str, typer.Argument(help="vm/NAME: the VirtualMachine to live-migrate.")],
    to: Annotated[str | None, typer.Option("--to", help="Target host; default: chosen by the scheduler.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until it Succeeded or Failed.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to --wait.")] = 900.0,
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds the finished Migration is kept.")] = 3600,
) -> None:
    """Live-migrate a running VM: creates a Migration object (not part of Git); --wait follows it."""
    from specs.meta import API_VERSION

    info, name = split_ref(ref)
    if info.kind != "VirtualMachine" or not name:
        fail(f"migrate takes vm/NAME, got {ref!r}", EXIT_INVALID)
    with reporting(), client() as vp:
        try:
            vp.get("virtualmachines", name)
        except NotFound:
            fail(f"virtualmachine/{name} not found", EXIT_INVALID)
        migration = f"{name}-{secrets.token_hex(3)}"
        spec: dict[str, Any] = {"vm": name, "ttlSeconds": ttl}
        if to:
            spec["targetHost"] = to
        vp.put({"apiVersion": API_VERSION, "kind": "Migration", "metadata": {"name": migration}, "spec": spec})
        sys.stdout.write(f"migration/{migration} created: vm/{name} -> {to or 'a host chosen by the scheduler'}\n")
        if not wait:
            return
        status = _follow(vp, migration, timeout)
    phase = status.get("phase")
    message = _message(status)
    if phase == "Succeeded":
        downtime = status.get("downtimeMs")
        extra = f" (downtime {downtime} ms)" if downtime is not None and "downtime" not in message else ""
        sys.stdout.write(f"migration/{migration} Succeeded: {message}{extra}\n")
        return
    if phase in TERMINAL:
        err.print(f"[bold red]migration/{migration} {phase}:[/] {message}")
    else:
        err.print(f"[bold red]timed out[/] after {timeout:g} s; migration/{migration} is {phase or 'Pending'}: "
                  f"{message}")
    raise typer.Exit(EXIT_FAILED)


def _message(status: dict[str, Any]) -> str:
    conditions = status.get("conditions") or []
    complete = next((c for c in conditions if c.get("type") == "Complete"), None)
    return str(complete.get("message", "")) if complete else ""


def _follow(vp: Client, migration: str, timeout: float) -> dict[str, Any]:
    """A progress bar from the Migration's status until it is finished (or the timeout passes)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("Pending", total=None)
        while time.monotonic() < deadline:
            try:
                status = vp.get("migrations", migration).get("status") or {}
            except NotFound:  # deleted (TTL) before we looked: report what we saw last
                break
            phase = status.get("phase") or "Pending"
            total, done = status.get("dataTotal"), status.get("dataProcessed")
            route = f"{status.get('sourceHost') or '?'} -> {status.get('targetHost') or '?'}"
            if total:
                bar.update(task, description=f"{phase} {route}", total=total, completed=min(done or 0, total))
            else:
                bar.update(task, description=f"{phase} {route}")
            if phase in TERMINAL:
                if phase == "Succeeded" and total:
                    bar.update(task, completed=total)
                break
            time.sleep(POLL_S)
    return status
