"""`backup` and `restore`: the whole store to a JSON file and back (into an empty store)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import EXIT_CONFLICT, EXIT_INVALID, client, fail, reporting
from controller.cli.output import err
from controller.client.errors import Conflict


def backup(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write (default: stdout).")] = None,
) -> None:
    """Save every spec (with uid, generation, finalizers...) and status; events and leases are left out."""
    with reporting(), client() as vp:
        data = vp.backup()
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        output.chmod(0o600)  # specs may name secrets; keep the file private
    err.print(f"[dim]{len(data['objects'])} object(s), {len(data['statuses'])} status(es) at revision "
              f"{data['revision']}[/]")


def restore(path: Annotated[Path, typer.Argument(help="A file written by `virtplane backup`.")]) -> None:
    """Load a backup into an empty store. Running VMs are taken over as they are (their uids are kept)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"{path}: {exc}", EXIT_INVALID)
    with reporting(), client() as vp:
        try:
            written = vp.restore(data)
        except Conflict as exc:
            fail(f"nothing restored: {exc.message}", EXIT_CONFLICT)
    typer.echo(f"restored {written} object(s) from {path}")
