"""The `virtplane` command line: one typer app wiring the command modules together."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import anyio
import typer

from controller.cli import apply as apply_cmd
from controller.cli import export as export_cmd
from controller.cli import migrate as migrate_cmd
from controller.cli import read as read_cmd
from controller.cli import snapshot as snapshot_cmd
from controller.cli.common import EXIT_INVALID, Globals, fail
from controller.config import DEFAULT_LISTEN, default_data_dir
from controller.lab.cli import app as lab_app
from controller.server import BackgroundTask

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
) -> None:
    Globals.server = server
    Globals.token = token


app.command()(apply_cmd.apply)
app.command()(apply_cmd.diff)
app.command()(read_cmd.get)
app.command()(read_cmd.describe)
app.command()(read_cmd.delete)
app.command()(read_cmd.events)
app.command()(read_cmd.wait)
app.command()(export_cmd.export)
app.command()(migrate_cmd.migrate)


@app.command()
def server(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve the API on.")] = DEFAULT_LISTEN,
    etcd: Annotated[str | None, typer.Option("--etcd", help="External etcd URL[,URL...]; default: embedded.")] = None,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="State directory (embedded etcd, token).")
    ] = default_data_dir(),
    controllers: Annotated[
        bool, typer.Option("--controllers/--no-controllers", help="Run the controllers too.")
    ] = True,
    write_config: Annotated[
        bool, typer.Option("--write-config/--no-write-config", help="Write the CLI config for this server.")
    ] = True,
) -> None:
    """Run the API server (and the controllers) on embedded or external etcd."""
    from controller.server import ServerOptions, serve

    logging.basicConfig(
        level=os.environ.get("VIRTPLANE_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    endpoints = tuple(e.strip() for e in etcd.split(",") if e.strip()) if etcd else ()
    try:
        options = ServerOptions(listen=listen, data_dir=data_dir, etcd_endpoints=endpoints, write_config=write_config)
        background = _background_tasks(data_dir) if controllers else ()
        anyio.run(serve, options, background)
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    except KeyboardInterrupt:
        pass


def _background_tasks(data_dir: Path) -> tuple[BackgroundTask, ...]:
    from controller.manager import ManagerOptions, controller_tasks

    identity = f"{socket.gethostname()}-{os.getpid()}"
    return controller_tasks(ManagerOptions(data_dir=data_dir, identity=identity))


app.add_typer(lab_app, name="lab", help="A multi-host libvirt lab on this machine (root).")
app.add_typer(snapshot_cmd.app, name="snapshot")


def main() -> None:
    app()
