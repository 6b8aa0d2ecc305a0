"""`virtplane lab directory ...`: a private slapd with example users and groups, for login tests and the demo.

Not yet mounted under `virtplane lab` (that is a one-line ``app.add_typer(directory_cli.app, name="directory")``
in controller/dev/lab/cli.py); until then: ``python -m controller.dev.lab.directory_cli up``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from controller.dev.lab.paths import DEFAULT_DIRECTORY_DIR

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from controller.dev.lab.directory import LabDirectoryInfo

app = typer.Typer(no_args_is_help=True, help="A private OpenLDAP directory (slapd) on loopback, for login tests.")

DirOption = Annotated[Path, typer.Option("--dir", help="Directory state: TLS files, secrets, slapd.d, database.")]


def render_server_config(info: LabDirectoryInfo, *, ldaps: bool = False) -> str:
    """The ``directory:`` section a virtplane server would be configured with, as YAML."""
    config = info.client_config(ldaps=ldaps).model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    return yaml.safe_dump({"directory": config}, sort_keys=False, default_flow_style=False)


def _describe(info: LabDirectoryInfo) -> str:
    lines = [
        f"# slapd pid {info.pid or '-'} under {info.dir} (log {info.log_file})",
        f"# StartTLS: {info.url}   ldaps: {info.ldaps_url}   admin (root, SASL EXTERNAL): {info.ldapi_url}",
        f"# CA file: {info.ca_file}",
        f"# base DN: {info.base_dn}   bind DN: {info.bind_dn}   bind password file: {info.bind_password_file}",
        f"# {'USER':<8} {'LOCKED':<6} {'GROUPS (nested included)':<52} PASSWORD FILE",
    ]
    for user in info.users:
        groups = ",".join(sorted(user.groups)) or "-"
        lines.append(f"# {user.name:<8} {'yes' if user.locked else 'no':<6} {groups:<52} {user.password_file}")
    return "\n".join(lines)


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(1)


@app.command()
def up(
    directory: DirOption = DEFAULT_DIRECTORY_DIR,
    port: Annotated[int | None, typer.Option(help="ldap:// (StartTLS) port; free one on first start.")] = None,
    ldaps_port: Annotated[int | None, typer.Option(help="ldaps:// port; free one on first start.")] = None,
    ldaps: Annotated[bool, typer.Option(help="Print a config that uses ldaps:// instead of StartTLS.")] = False,
) -> None:
    """Set up (first time) and start slapd if it is not running; print the server's directory config."""
    from controller.dev.lab.directory import LabDirectory
    from controller.dev.lab.hosts import LabError

    if os.geteuid() != 0:
        raise typer.BadParameter("slapd here runs as root (it binds its ldapi socket and reads its key); run as root")
    try:
        info = LabDirectory(directory).up(port=port, ldaps_port=ldaps_port)
    except LabError as err:
        raise _fail(err) from err
    typer.echo(_describe(info), err=True)
    sys.stdout.write(render_server_config(info, ldaps=ldaps))


@app.command()
def down(
    directory: DirOption = DEFAULT_DIRECTORY_DIR,
    purge: Annotated[bool, typer.Option(help="Also delete the CA, secrets and database.")] = False,
) -> None:
    """Stop slapd (by the PID in its pidfile, after checking its command line)."""
    from controller.dev.lab.directory import LabDirectory
    from controller.dev.lab.hosts import LabError

    try:
        LabDirectory(directory).down(purge=purge)
    except LabError as err:
        raise _fail(err) from err


@app.command()
def status(directory: DirOption = DEFAULT_DIRECTORY_DIR) -> None:
    """Whether slapd runs, where, and the example users."""
    from controller.dev.lab.directory import LabDirectory

    lab = LabDirectory(directory)
    if not lab.initialised:
        typer.echo(f"no lab directory under {directory}")
        raise typer.Exit(1)
    info = lab.status()
    typer.echo(f"{'running' if info.running else 'stopped'}")
    typer.echo(_describe(info))


if __name__ == "__main__":
    app()
