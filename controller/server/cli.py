"""`virtplane server` as a command (added to the CLI by ``controller.main``)."""

from __future__ import annotations

import faulthandler
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import typer

from controller.adapters.secrets import DEFAULT_SECRETS_DIR
from controller.cli.common import EXIT_INVALID, fail
from controller.client.config import DEFAULT_LISTEN, default_data_dir
from controller.common import gcpolicy
from controller.common.limits import DEFAULT_MAX_BODY_BYTES

SWITCH_INTERVAL_S = 0.001

if TYPE_CHECKING:  # the server side is imported when the server starts, not for `virtplane --help`
    from controller.server.main import BackgroundTask
    from controller.store import TlsFiles
    from specs.confinement import HostPathPolicy


def server(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to serve the API on.")] = DEFAULT_LISTEN,
    etcd: Annotated[
        str | None,
        typer.Option("--etcd", help="External etcd URL[,URL...] (http://, https:// or unix://); default: embedded."),
    ] = None,
    etcd_cacert: Annotated[
        Path | None, typer.Option("--etcd-cacert", help="CA certificate (PEM) of an https:// etcd.")
    ] = None,
    etcd_cert: Annotated[
        Path | None, typer.Option("--etcd-cert", help="Client certificate (PEM) for an https:// etcd.")
    ] = None,
    etcd_key: Annotated[Path | None, typer.Option("--etcd-key", help="Client key (PEM) for an https:// etcd.")] = None,
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
        typer.Option("--lab-dir", help="A `virtplane lab` directory whose hosts the lab power agent may switch "
                     "(its sockets and images are allowed in specs too)."),
    ] = None,
    import_dirs: Annotated[
        list[Path] | None,
        typer.Option("--import-dir", help="Same as --allowed-image-dir (the name it had for Disk imports)."),
    ] = None,
    image_dirs: Annotated[
        list[Path] | None,
        typer.Option("--allowed-image-dir", help="Directory whose files specs may name as kernel, initrd, "
                     "image to clone or import (repeatable; storage domains are always allowed)."),
    ] = None,
    block_dirs: Annotated[
        list[Path] | None,
        typer.Option("--allowed-block-dir", help="Directory of block devices a Disk's lun.blockPath may name, "
                     "besides /dev/disk/by-*/ (repeatable)."),
    ] = None,
    socket_dirs: Annotated[
        list[Path] | None,
        typer.Option("--allowed-socket-dir", help="Directory of libvirt sockets a Host URI may name "
                     "(?socket=; repeatable; /run/libvirt and the --lab-dir are always allowed)."),
    ] = None,
    storage_dirs: Annotated[
        list[Path] | None,
        typer.Option("--allowed-storage-dir", help="Directory under which StorageDomains may keep images "
                     "(repeatable; /srv, /var/lib/libvirt/images, /var/lib/virtplane and --lab-dir always)."),
    ] = None,
    host_keys_dir: Annotated[
        Path | None,
        typer.Option("--host-keys-dir", help="Directory of ssh keys, known_hosts and TLS pki directories "
                     "that Host URIs may name (keyfile=, known_hosts=, pkipath=)."),
    ] = None,
    metrics_public: Annotated[
        bool, typer.Option("--metrics-public", help="Serve /metrics without the token (e.g. to a local Prometheus).")
    ] = False,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1024, help="Largest request body accepted (413 beyond).")
    ] = DEFAULT_MAX_BODY_BYTES,
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
    from specs.kinds import build_models

    # A crash inside a C extension (libvirt) leaves the stacks of every thread in the log, not nothing.
    faulthandler.enable()
    # Worker threads decode and encode big lists while the event loop answers everyone else: a shorter GIL
    # switch interval (default 5 ms) bounds how long the loop waits for the GIL at each of its syscalls.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    build_models()  # before any thread validates; then frozen with the rest of start-up
    gcpolicy.tune(freeze=True)
    logging.basicConfig(
        level=os.environ.get("VIRTPLANE_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    endpoints = tuple(e.strip() for e in etcd.split(",") if e.strip()) if etcd else ()
    try:
        image_dirs = [*(image_dirs or []), *(import_dirs or [])]
        policy = _policy(lab_dir, image_dirs, block_dirs or [], socket_dirs or [], host_keys_dir,
                         storage_dirs or [])
        tls = _etcd_tls(etcd_cacert, etcd_cert, etcd_key)
        options = ServerOptions(
            listen=listen, data_dir=data_dir, etcd_endpoints=endpoints, write_config=write_config,
            policy=policy, etcd_tls=tls, metrics_public=metrics_public, max_body_bytes=max_body_bytes,
            directory_config=directory, session_ttl=session_ttl, tls_cert=tls_cert, tls_key=tls_key,
            tls_self_signed=tls_self_signed, audit_max_records=audit_max_records,
        )
        background = _background_tasks(data_dir, secrets_dir, lab_dir, policy, glusterd_socket,
                                       tuple(image_dirs)) if controllers else ()
        anyio.run(serve, options, background)
    except ValueError as e:
        fail(str(e), EXIT_INVALID)
    except KeyboardInterrupt:
        pass


def _etcd_tls(cacert: Path | None, cert: Path | None, key: Path | None) -> TlsFiles | None:
    from controller.store import TlsFiles

    if cacert is None and cert is None and key is None:
        return None
    if cacert is None or (cert is None) != (key is None):
        raise ValueError("--etcd-cacert is needed for TLS, and --etcd-cert and --etcd-key go together")
    for path in (cacert, cert, key):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    return TlsFiles(cacert, cert, key)


def _policy(
    lab_dir: Path | None, image_dirs: list[Path], block_dirs: list[Path], socket_dirs: list[Path],
    host_keys_dir: Path | None, storage_dirs: list[Path],
) -> HostPathPolicy:
    """The host paths specs may name (specs.confinement); every directory absolute."""
    from specs.confinement import HostPathPolicy

    def absolute(dirs: list[Path]) -> tuple[str, ...]:
        return tuple(str(d.absolute()) for d in dirs)

    lab = [lab_dir] if lab_dir is not None else []
    return HostPathPolicy.of(
        image_dirs=absolute([*image_dirs, *lab]),
        block_dirs=absolute(block_dirs),
        socket_dirs=absolute([*socket_dirs, *lab]),
        key_dirs=absolute([host_keys_dir] if host_keys_dir is not None else []),
        storage_dirs=absolute([*storage_dirs, *lab]),
    )


def _background_tasks(
    data_dir: Path, secrets_dir: Path, lab_dir: Path | None, policy: HostPathPolicy,
    glusterd_socket: Path | None = None, import_dirs: tuple[Path, ...] = (),
) -> tuple[BackgroundTask, ...]:
    from controller.runtime.manager import ManagerOptions
    from controller.server.main import controllers_task

    identity = f"{socket.gethostname()}-{os.getpid()}"
    options = ManagerOptions(data_dir=data_dir, identity=identity, secrets_dir=secrets_dir, lab_dir=lab_dir,
                             policy=policy, glusterd_socket=glusterd_socket,
                             import_dirs=tuple(str(d.resolve()) for d in import_dirs))
    return (controllers_task(options),)


