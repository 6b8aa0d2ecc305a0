"""Runs a Plan against libvirt hosts: actions in order, stop at the first failure.

The executor never decides anything: after it returns (done or failed), the key is observed and planned
again. Errors are classified once, in ``controller.libvirt.errors``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio

from controller.libvirt.codec import render_disk_device, render_nic_device
from controller.libvirt.connection import HostConnection
from controller.libvirt.errors import ReconcileError, TransientError
from controller.libvirt.migration import Migrations
from reconcilers import actions as a
from reconcilers.domain import DomainName, HostName
from reconcilers.plan import Action, Plan

log = logging.getLogger("virtplane.executor")


@dataclass
class ExecutionResult:
    done: list[Action] = field(default_factory=list)
    failed: Action | None = None
    error: ReconcileError | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None


class HostUnavailable(TransientError):
    pass


async def execute(
    plan: Plan,
    hosts: Mapping[HostName, HostConnection],
    *,
    on_action: Callable[[Action, float], None] | None = None,
    migrations: Migrations | None = None,
) -> ExecutionResult:
    result = ExecutionResult()
    for action in plan:
        started = time.perf_counter()
        try:
            await execute_action(action, hosts, migrations)
        except ReconcileError as e:
            result.failed, result.error = action, e
            log.info("action %s %s failed: %s", action.name, action.target(), e)
            return result
        result.done.append(action)
        if on_action is not None:
            on_action(action, time.perf_counter() - started)
    return result


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


def _host(hosts: Mapping[HostName, HostConnection], name: HostName) -> HostConnection:
    conn = hosts.get(name)
    if conn is None:
        raise HostUnavailable(f"no connection to host {name}", retry_after=1.0)
    return conn


def _migrations(migrations: Migrations | None) -> Migrations:
    if migrations is None:
        raise TypeError("a migration action needs the controller's Migrations registry (execute(migrations=...))")
    return migrations


async def execute_action(
    action: Action, hosts: Mapping[HostName, HostConnection], migrations: Migrations | None = None
) -> None:
    match action:
        case a.DefineDomain(host=h, config=config):
            await _host(hosts, h).define_domain(config)
        case a.StartDomain(host=h, domain=d):
            await _host(hosts, h).start_domain(d)
        case a.ShutdownDomain(host=h, domain=d, timeout_s=t):
            await shutdown_then_destroy(_host(hosts, h), d, t)
        case a.DestroyDomain(host=h, domain=d):
            await _host(hosts, h).destroy_domain(d)
        case a.UndefineDomain(host=h, domain=d):
            await _host(hosts, h).undefine_domain(d)
        case a.AttachDisk(host=h, domain=d, disk=disk):
            await _host(hosts, h).attach_device(d, render_disk_device(disk), live=True, config=False)
        case a.DetachDisk(host=h, domain=d, disk=disk):
            await _host(hosts, h).detach_device(d, render_disk_device(disk), live=True, config=False)
        case a.AttachNic(host=h, domain=d, nic=nic):
            await _host(hosts, h).attach_device(d, render_nic_device(nic), live=True, config=False)
        case a.DetachNic(host=h, domain=d, nic=nic):
            await _host(hosts, h).detach_device(d, render_nic_device(nic), live=True, config=False)
        case a.SetMemory(host=h, domain=d, memory_kib=kib):
            await _host(hosts, h).set_memory(d, kib, live=True, config=True)
        case a.SetVcpus(host=h, domain=d, vcpus=n):
            await _host(hosts, h).set_vcpus(d, n, live=True, config=True)
        case a.EnsurePool(host=h, pool=pool):
            await _host(hosts, h).ensure_pool(pool)
        case a.CreateVolume(host=h, pool=pool, volume=volume, source_path=None):
            await _host(hosts, h).create_volume(pool, volume)
        case a.CreateVolume(host=h, pool=pool, volume=volume, source_path=str(src), source_format=fmt):
            conn = _host(hosts, h)
            if conn.is_test:
                # libvirt's test driver has no files to copy: a simulated copy is a new volume of that size.
                await conn.create_volume(pool, volume)
            else:
                await conn.copy_volume(pool, volume, src, fmt)
        case a.ResizeVolume(host=h, pool=pool, volume=volume, capacity_bytes=size):
            await _host(hosts, h).resize_volume(pool, volume, size)
        case a.DeleteVolume(host=h, pool=pool, volume=volume):
            await _host(hosts, h).delete_volume(pool, volume)
        case a.EnsureNetwork(host=h, network=network):
            await _host(hosts, h).ensure_network(network)
        case a.DeleteNetwork(host=h, network=network):
            await _host(hosts, h).delete_network(network)
        case a.MigrateDomain():
            await _migrations(migrations).start(action, hosts)  # returns once started: observed, not awaited
        case a.StartPostCopy():
            await _migrations(migrations).start_post_copy(action, hosts)
        case a.AbortMigration():
            await _migrations(migrations).abort(action, hosts)
        case _:
            raise TypeError(f"the executor has no handler for {action.name}")
