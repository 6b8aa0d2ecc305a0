"""How the one executor runs the VirtualMachine controller's actions: domains and live migrations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import anyio

from controller.adapters.libvirt.codec import render_disk_device, render_nic_device
from controller.adapters.libvirt.connection import HostConnection
from controller.adapters.libvirt.observe import after_define, after_start
from controller.runtime.context import Runtime
from controller.runtime.domains import HostDomains
from controller.runtime.registry import Handler
from reconcilers.domain import DomainName, HostName
from reconcilers.migration.actions import AbortMigration, MigrateDomain, StartPostCopy
from reconcilers.vm.actions import (
    AttachDisk,
    AttachNic,
    DefineDomain,
    DestroyDomain,
    DetachDisk,
    DetachNic,
    SetMemory,
    SetVcpus,
    ShutdownDomain,
    StartDomain,
    UndefineDomain,
)

log = logging.getLogger("virtplane.vm")

SHUTDOWN_POLL = 0.2


async def shutdown_then_destroy(conn: HostConnection, domain: DomainName, timeout: float) -> None:
    """ACPI shutdown; if the guest is still running after ``timeout`` seconds, power it off."""
    await conn.shutdown_domain(domain)
    with anyio.move_on_after(timeout):
        while True:
            observed = await conn.observe_domain(domain)
            if observed is None or not observed.active:
                return
            await anyio.sleep(SHUTDOWN_POLL)
    log.info("%s did not shut down within %.0f s; destroying it", domain, timeout)
    await conn.destroy_domain(domain)


@contextlib.contextmanager
def _expecting(rt: Runtime, host: HostName, domain: str, event: str) -> Iterator[HostDomains]:
    """Our action will cause ``event``: swallow it when it comes (its outcome is recorded by the handler,
    so it must not queue the VM again). Forgotten if the action fails."""
    domains = rt.hosts.hosts[host].domains
    domains.expect(domain, event, rt.hosts.now())
    try:
        yield domains
    except BaseException:
        domains.unexpect(domain, event)
        raise


async def _define(a: DefineDomain, rt: Runtime) -> None:
    conn = rt.hosts.connection(a.host)
    with _expecting(rt, a.host, a.config.name, "defined") as domains:
        since = domains.stamp()
        stored = await conn.define_domain(a.config)
    domains.put(after_define(a.host, stored, domains.get(a.config.name)), since=since)


async def _start(a: StartDomain, rt: Runtime) -> None:
    conn = rt.hosts.connection(a.host)
    with _expecting(rt, a.host, a.domain, "started") as domains:
        since = domains.stamp()
        live = await conn.start_domain(a.domain)
    previous = domains.get(a.domain)
    if live is None or previous is None:
        domains.mark_dirty(a.domain)  # observed afresh by the re-plan
    else:
        domains.put(after_start(previous, live), since=since)


async def _shutdown(a: ShutdownDomain, rt: Runtime) -> None:
    await shutdown_then_destroy(rt.hosts.connection(a.host), a.domain, a.timeout_s)


async def _destroy(a: DestroyDomain, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).destroy_domain(a.domain)


async def _undefine(a: UndefineDomain, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).undefine_domain(a.domain)


async def _attach_disk(a: AttachDisk, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).attach_device(a.domain, render_disk_device(a.disk), live=True, config=False)


async def _detach_disk(a: DetachDisk, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).detach_device(a.domain, render_disk_device(a.disk), live=True, config=False)


async def _attach_nic(a: AttachNic, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).attach_device(a.domain, render_nic_device(a.nic), live=True, config=False)


async def _detach_nic(a: DetachNic, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).detach_device(a.domain, render_nic_device(a.nic), live=True, config=False)


async def _set_memory(a: SetMemory, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).set_memory(a.domain, a.memory_kib, live=True, config=True)


async def _set_vcpus(a: SetVcpus, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).set_vcpus(a.domain, a.vcpus, live=True, config=True)


async def _migrate(a: MigrateDomain, rt: Runtime) -> None:
    await rt.migrations.start(a, rt.hosts.connections())  # returns once started: observed, not awaited


async def _post_copy(a: StartPostCopy, rt: Runtime) -> None:
    await rt.migrations.start_post_copy(a, rt.hosts.connections())


async def _abort(a: AbortMigration, rt: Runtime) -> None:
    await rt.migrations.abort(a, rt.hosts.connections())


HANDLERS: dict[type, Handler] = {
    DefineDomain: _define,
    StartDomain: _start,
    ShutdownDomain: _shutdown,
    DestroyDomain: _destroy,
    UndefineDomain: _undefine,
    AttachDisk: _attach_disk,
    DetachDisk: _detach_disk,
    AttachNic: _attach_nic,
    DetachNic: _detach_nic,
    SetMemory: _set_memory,
    SetVcpus: _set_vcpus,
    MigrateDomain: _migrate,
    StartPostCopy: _post_copy,
    AbortMigration: _abort,
}
