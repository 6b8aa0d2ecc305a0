"""`virtplane disk upload NAME FILE`: send an image for a Disk whose source is `import: {upload: true}`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import EXIT_INVALID, client, fail, reporting
from controller.cli.output import err
from controller.client.errors import Conflict

app = typer.Typer(help="Disks: upload an image.", no_args_is_help=True)


@app.command()
def upload(
    name: Annotated[str, typer.Argument(help="The Disk (its spec.source.import.upload is true).")],
    file: Annotated[Path, typer.Argument(help="The image file (any format qemu-img reads; say it in the spec).")],
) -> None:
    """Upload FILE for Disk NAME, with a progress bar; the Disk controller then converts and checks it
    (`virtplane get disk NAME -o wide` shows the conversion's progress)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    if not file.is_file():
        fail(f"{file}: no such file", EXIT_INVALID)
    size = file.stat().st_size
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with reporting(), client() as vp, Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"{file.name} -> disk/{name}", total=size)
        try:
            sent = vp.upload(name, file, lambda done: bar.update(task, completed=done))
        except Conflict as exc:
            fail(exc.message, EXIT_INVALID)
    typer.echo(f"disk/{name}: uploaded {sent} bytes; the controller imports it now")
