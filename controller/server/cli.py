"""`virtplane server` as a command (added to the CLI by ``controller.main``)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated

import anyio
import typer

from controller.adapters.secrets import DEFAULT_SECRETS_DIR
from controller.cli.common import EXIT_INVALID, fail
from controller.client.config import DEFAULT_LISTEN, default_data_dir
from controller.runtime.manager import ManagerOptions
from controller.server.main import BackgroundTask, controllers_task


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
    secrets_dir: Annotated[
        Path, typer.Option("--secrets-dir", help="Directory of the secret files that specs name (mode 0600 each).")
    ] = DEFAULT_SECRETS_DIR,
    lab_dir: Annotated[
        Path | None,
        typer.Option("--lab-dir", help="A `virtplane lab` directory whose hosts the lab power agent may switch."),
    ] = None,
    import_dirs: Annotated[
        list[Path] | None,
        typer.Option("--import-dir", help="A directory Disk imports may read images from (repeatable); "
                     "storage domains are always allowed."),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option("--directory", help="YAML with a `directory:` section: LDAP login (see docs/identity.md)."),
    ] = None,
    session_ttl: Annotated[int, typer.Option("--session-ttl", help="Seconds a login session lasts.")] = 8 * 3600,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate (chain) for HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    tls_self_signed: Annotated[
        bool, typer.Option("--tls-self-signed", help="HTTPS with a certificate generated under the data dir.")
    ] = False,
    audit_max_records: Annotated[
        int, typer.Option("--audit-max-records", help="Audit records kept (oldest deleted beyond).")
    ] = 100_000,
    glusterd_socket: Annotated[
        Path | None,
        typer.Option("--glusterd-socket", help="CLI socket of a glusterd of the trusted pool: GlusterVolumes are "
                     "created and changed through it (glusterd refuses changes over --remote-host)."),
    ] = None,
) -> None:
    """Run the API server (and the controllers) on embedded or external etcd."""
    from controller.server.main import ServerOptions, serve

    logging.basicConfig(
        level=os.environ.get("VIRTPLANE_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    endpoints = tuple(e.strip() for e in etcd.split(",") if e.strip()) if etcd else ()
    try:
        options = ServerOptions(
            listen=listen, data_dir=data_dir, etcd_endpoints=endpoints, write_config=write_config,
            directory_config=directory, session_ttl=session_ttl, tls_cert=tls_cert, tls_key=tls_key,
            tls_self_signed=tls_self_signed, audit_max_records=audit_max_records,
        )
        background = _background_tasks(data_dir, secrets_dir, lab_dir, glusterd_socket,
                                       tuple(import_dirs or ())) if controllers else ()
        anyio.run(serve, options, background)
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    except KeyboardInterrupt:
        pass


def _background_tasks(
    data_dir: Path, secrets_dir: Path, lab_dir: Path | None, glusterd_socket: Path | None = None,
    import_dirs: tuple[Path, ...] = (),
) -> tuple[BackgroundTask, ...]:
    identity = f"{socket.gethostname()}-{os.getpid()}"
    options = ManagerOptions(data_dir=data_dir, identity=identity, secrets_dir=secrets_dir, lab_dir=lab_dir,
                             glusterd_socket=glusterd_socket, import_dirs=tuple(str(d.resolve()) for d in import_dirs))
    return (controllers_task(options),)


