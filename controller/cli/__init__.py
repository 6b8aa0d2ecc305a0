"""The `virtplane` command line: one typer app wiring the command modules together.

Talks to the server only through ``controller.client``. The `server` and `lab` commands are added by
``controller.main`` (the entry point), so nothing here imports the server side.
"""

from __future__ import annotations

from typing import Annotated

import typer

from controller.cli import adopt as adopt_cmd
from controller.cli import apply as apply_cmd
from controller.cli import backup as backup_cmd
from controller.cli import disk as disk_cmd
from controller.cli import export as export_cmd
from controller.cli import identity as identity_cmd
from controller.cli import migrate as migrate_cmd
from controller.cli import read as read_cmd
from controller.cli import snapshot as snapshot_cmd
from controller.cli.common import Globals

app = typer.Typer(
    name="virtplane",
    help="GitOps control plane for KVM/libvirt clusters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global(
    server: Annotated[str | None, typer.Option("--server", envvar="VIRTPLANE_SERVER", help="API server URL.")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="VIRTPLANE_TOKEN", help="Bearer token.")] = None,
    ca: Annotated[
        str | None, typer.Option("--ca", envvar="VIRTPLANE_CA", help="PEM file the server's certificate must chain to.")
    ] = None,
) -> None:
    Globals.server = server
    Globals.token = token
    Globals.ca = ca


app.command()(apply_cmd.apply)
app.command()(apply_cmd.diff)
app.command()(read_cmd.get)
app.command()(read_cmd.describe)
app.command()(read_cmd.delete)
app.command()(read_cmd.events)
app.command()(read_cmd.wait)
app.command("api-resources")(read_cmd.api_resources)
app.command()(export_cmd.export)
app.command()(migrate_cmd.migrate)
app.command()(adopt_cmd.adopt)
app.command()(backup_cmd.backup)
app.command()(backup_cmd.restore)


app.add_typer(snapshot_cmd.app, name="snapshot")
app.add_typer(disk_cmd.app, name="disk")
app.command()(identity_cmd.login)
app.command()(identity_cmd.logout)
app.command()(identity_cmd.audit)
app.add_typer(identity_cmd.auth_app, name="auth")
app.add_typer(identity_cmd.token_app, name="token")

