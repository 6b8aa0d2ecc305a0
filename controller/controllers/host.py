"""Host controller: connect to the host's libvirt, observe it, list its domains, write its status, and
subscribe to its lifecycle events (they reach the manager through ``Runtime.on_domain_event``)."""

from __future__ import annotations

import logging
from datetime import timedelta

from controller.adapters.libvirt.observe import DomainEvent
from controller.common.errors import ReconcileError
from controller.controllers.common import own_cluster
from controller.runtime.context import Runtime
from controller.runtime.hosts import HostRuntime
from controller.runtime.registry import Controller
from controller.runtime.workqueue import Result
from reconcilers.host.plan import host_status
from specs.host import Host, HostStatus

log = logging.getLogger("virtplane.host")

HOST_RESYNC = 10.0  # seconds between observations of a host
HEARTBEAT_WRITE = timedelta(seconds=60)
ACCEL_ANNOTATION = "virtplane.io/accelerator"


async def reconcile_host(rt: Runtime, name: str) -> Result | None:
    host = rt.cache.get("Host", name, Host)
    if host is None:
        await rt.hosts.remove(name)
        return None
    runtime = rt.hosts.ensure(name, host.spec.uri)
    if not runtime.conn.is_test:
        # A host whose KVM cannot run guests (the lab's kvm_pvm) says so: virtplane.io/accelerator: tcg.
        runtime.domain_type = "qemu" if host.metadata.annotations.get(ACCEL_ANNOTATION) == "tcg" else "kvm"
    was_ready = runtime.ready
    runtime.observed = await runtime.conn.observe_host()
    if runtime.ready and (not runtime.last_listed or rt.hosts.now() - runtime.last_listed >= HOST_RESYNC * 0.8):
        # A full listing every resync period; in between (a VM controller asked for a fresh count) the
        # domains its reconciles observed are current enough.
        domains = await runtime.conn.list_domains()
        runtime.domains = {d.name: d for d in domains}
        runtime.last_listed = rt.hosts.now()
    else:
        runtime.pools.clear()
        runtime.networks.clear()
    running = [d for d in runtime.domains.values() if d.active]
    cpus = sum((d.live.vcpus if d.live else 0) for d in running)
    memory = sum((d.live.memory_kib * 1024 if d.live else 0) for d in running)
    previous = rt.cache.status["Host"].get(name)
    prev = previous if isinstance(previous, HostStatus) else None
    now = rt.clock()
    status = host_status(host, runtime.observed, cpus, memory, len(running), now, prev)
    status = status.model_copy(update={"conditions": rt.with_times(status.conditions, prev)})
    stale = prev is None or prev.lastHeartbeat is None or now - prev.lastHeartbeat > HEARTBEAT_WRITE
    await rt.write_status("Host", name, status, force=stale and runtime.ready)
    if was_ready != runtime.ready:
        rt.notify("Host", name, "ready", was_ready, runtime.ready)
        if not runtime.ready:
            await rt.emit(
                host, "HostNotResponding", runtime.observed.error or "no answer", warning=True, source="host-controller"
            )
        else:
            await rt.emit(host, "HostReady", f"libvirt {runtime.observed.libvirt_version}", source="host-controller")
    await _subscribe(rt, runtime)
    return Result(requeue_after=HOST_RESYNC)


async def _subscribe(rt: Runtime, runtime: HostRuntime) -> None:
    """Lifecycle events of a Ready host, once per connection."""
    if not runtime.ready or runtime.events_subscribed:
        return

    def forward(event: DomainEvent) -> None:
        if event.event == "undefined":
            runtime.domains.pop(event.domain, None)
        rt.on_domain_event(event)

    runtime.events_subscribed = True
    try:
        await runtime.conn.watch_events(forward)
    except ReconcileError as e:
        runtime.events_subscribed = False
        log.warning("host %s: no lifecycle events: %s", runtime.name, e)


CONTROLLER = Controller(kind="Host", reconcile=reconcile_host, scope=own_cluster)
