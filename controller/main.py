"""The `virtplane` entry point: the client-side CLI plus the commands that run things on this machine
(`server`, `lab`). The one place that wires the CLI to the server side."""

from __future__ import annotations

from controller.cli import app
from controller.dev.lab.cli import app as lab_app
from controller.server.cli import server

app.command()(server)
app.add_typer(lab_app, name="lab", help="A multi-host libvirt lab on this machine (root).")


def main() -> None:
    app()
