"""`virtplane server`: embedded (or external) etcd, the API, and the controllers, in one process."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from controller.api.app import ApiContext, create_app
from controller.api.auth import StaticTokenAuthenticator
from controller.api.rbac import RbacAuthorizer, RbacIndex
from controller.api.sessions import SessionAuthenticator
from controller.client.config import ClientConfig, load_or_create_token, write_client_config
from controller.common.limits import DEFAULT_MAX_BODY_BYTES
from controller.common.metrics import Registry
from controller.controllers.adopt import adopt_preview
from controller.controllers.registry import default_registry
from controller.runtime.manager import Manager, ManagerOptions
from controller.server import tls as tls_mod
from controller.server.etcd import EmbeddedEtcd
from controller.server.identity import load_directory
from controller.store import Store, TlsFiles
from controller.ui.app import console_routes
from specs.confinement import HostPathPolicy

log = logging.getLogger("virtplane.server")


class _Uvicorn(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop (exit -15); we handle signals ourselves and exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# Started beside the API once the store is connected; returns when cancelled.
BackgroundTask = Callable[[Store, ApiContext], Coroutine[Any, Any, None]]


def controllers_task(options: ManagerOptions) -> BackgroundTask:
    """The controllers, wired to the API: its dry-run planning and the finalizers it puts on new objects."""

    async def run(store: Store, ctx: ApiContext) -> None:
        registry = default_registry()
        manager = Manager(store, registry, options, metrics=ctx.metrics)
        ctx.plan_hook = manager.plan_changes
        ctx.adopt_hook = functools.partial(adopt_preview, manager.rt)
        ctx.default_finalizers.update(registry.finalizers())
        await manager.run()

    return run


@dataclass(frozen=True)
class ServerOptions:
    listen: str
    data_dir: Path
    etcd_endpoints: tuple[str, ...] = ()
    write_config: bool = True
    max_txn_ops: int | None = None
    max_request_bytes: int | None = None
    policy: HostPathPolicy = field(default_factory=HostPathPolicy)
    metrics_public: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    etcd_tls: TlsFiles | None = None
    directory_config: Path | None = None  # YAML with a `directory:` section (controller/server/identity.py)
    session_ttl: int = 8 * 3600
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    audit_max_records: int | None = None


def tls_files(options: ServerOptions, host: str) -> tuple[Path, Path, Path | None] | None:
    """(cert, key, CA for the CLI config) or None for plain HTTP, which is refused off loopback."""
    if options.tls_self_signed:
        if options.tls_cert or options.tls_key:
            raise ValueError("give either --tls-cert/--tls-key or --tls-self-signed, not both")
        cert, key = tls_mod.self_signed(options.data_dir, [host])
        return cert, key, cert
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if options.tls_cert is not None and options.tls_key is not None:
        for path in (options.tls_cert, options.tls_key):
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
        return options.tls_cert, options.tls_key, None
    if not tls_mod.is_loopback(host):
        raise ValueError(
            f"--listen {host}: plain HTTP is only served on loopback; give --tls-cert/--tls-key or --tls-self-signed"
        )
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen expects HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


@contextlib.asynccontextmanager
async def open_store(options: ServerOptions) -> AsyncIterator[tuple[Store, str]]:
    """Connect to the configured etcd, or start the embedded one under the data dir."""
    if options.etcd_endpoints:
        store = await Store.connect(
            list(options.etcd_endpoints),
            max_txn_ops=options.max_txn_ops or 128,
            max_request_bytes=options.max_request_bytes or 1_500_000,
            tls=options.etcd_tls,
        )
        try:
            yield store, "external " + ",".join(options.etcd_endpoints)
        finally:
            await store.close()
        return
    etcd = EmbeddedEtcd(options.data_dir / "etcd")
    # Spawned from this (the main) thread: etcd's parent-death signal follows the thread that forked it,
    # and a worker thread of the pool would take etcd with it when it retires.
    await anyio.to_thread.run_sync(etcd.stop_stale)
    etcd.spawn()
    try:
        await anyio.to_thread.run_sync(etcd.wait_healthy)
        store = await Store.connect(
            [etcd.endpoint],
            max_txn_ops=options.max_txn_ops or etcd.max_txn_ops,
            max_request_bytes=options.max_request_bytes or etcd.max_request_bytes,
        )
        try:
            yield store, f"embedded at {etcd.endpoint} (data in {options.data_dir / 'etcd'})"
        finally:
            await store.close()
    finally:
        await anyio.to_thread.run_sync(etcd.stop)


async def serve(options: ServerOptions, background: tuple[BackgroundTask, ...] = ()) -> None:
    host, port = parse_listen(options.listen)
    options.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = tls_files(options, host)
    directory = load_directory(options.directory_config) if options.directory_config else None
    token = load_or_create_token(options.data_dir)
    async with open_store(options) as (store, etcd_text):
        if options.audit_max_records is not None:
            store.audit.max_records = options.audit_max_records
        index = RbacIndex()
        await index.load(store)  # before the first request: nobody is refused for want of a loaded binding
        ctx = ApiContext(
            store=store, authn=SessionAuthenticator(StaticTokenAuthenticator(token), store),
            authz=RbacAuthorizer(index), metrics=Registry(), directory=directory, session_ttl=options.session_ttl,
            upload_dir=options.data_dir / "uploads",
            policy=options.policy, metrics_public=options.metrics_public, max_body_bytes=options.max_body_bytes,
        )
        app = create_app(ctx)
        app.router.routes.extend(console_routes(app.state.api))  # the web console under /ui/
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
        )
        server = _Uvicorn(config)
        scheme = "https" if tls else "http"
        url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        ca = tls[2] if tls else None
        async with anyio.create_task_group() as tg:
            tg.start_soon(index.follow, store)
            for task in background:
                tg.start_soon(task, store, ctx)
            tg.start_soon(_announce, server, url, token, etcd_text, options, ca)
            tg.start_soon(_stop_on_signal, server)
            await server.serve()
            tg.cancel_scope.cancel()
    print("virtplane server stopped", file=sys.stderr, flush=True)


async def _stop_on_signal(server: uvicorn.Server) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True


async def _announce(
    server: uvicorn.Server, url: str, token: str, etcd_text: str, options: ServerOptions, ca: Path | None
) -> None:
    while not server.started:
        await anyio.sleep(0.02)
    lines = [f"virtplane server listening on {url}", f"etcd: {etcd_text}"]
    if ca is not None:
        lines.append(f"TLS: self-signed certificate {ca} (the CLI config names it as the CA)")
    if options.directory_config:
        lines.append(f"directory login: {options.directory_config}")
        lines.append(f"web console: {url}/ui/ (log in with a directory account)")
    if options.write_config:
        path = write_client_config(ClientConfig(server=url, token=token, ca=str(ca) if ca else None))
        lines.append(f"CLI config written to {path} (mode 0600)")
    print("\n".join(lines), file=sys.stderr, flush=True)
