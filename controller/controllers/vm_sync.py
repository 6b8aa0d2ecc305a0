"""Whether a VirtualMachine needs a reconcile, judged from the caches alone (no I/O): the periodic resync
queues only the VMs whose cached desired state and cached observation differ.

A VM is in sync when its status describes its current generation and correlation id without an error,
nothing is in flight for it (migration, HA restart, a request the guest must acknowledge), and its host's
domain cache — trusted only when the host is Ready, listed on this connection, and the domain not marked
dirty by an event — shows the domain of ours, stamped with this generation, in the state its run
strategy asks for and its phase reports. Any doubt answers False: the resync queues it, and the reconcile
decides.
"""

from __future__ import annotations

from controller.runtime.context import Runtime
from reconcilers.domain import HostName
from specs.vm import VirtualMachine, VirtualMachineStatus

_RUNNING_WANTED = {"Always": True, "RerunOnFailure": True, "Halted": False}  # Manual: either


def vm_in_sync(rt: Runtime, name: str) -> bool:
    vm = rt.cache.get("VirtualMachine", name, VirtualMachine)
    status = rt.cache.status["VirtualMachine"].get(name)
    if vm is None or vm.metadata.deletionTimestamp is not None or not isinstance(status, VirtualMachineStatus):
        return False
    if (status.observedGeneration != vm.metadata.generation or status.correlationId != vm.metadata.correlationId
            or not status.host or status.phase not in ("Running", "Stopped")
            or any(c.type == "Degraded" and c.status == "True" for c in status.conditions)):
        return False
    if name in rt.migrations.jobs or rt.pending.keys(name) or rt.ha.get(name) is not None:
        return False
    host = HostName(status.host)
    runtime = rt.hosts.hosts.get(host)
    if (runtime is None or not runtime.ready or not runtime.last_listed or runtime.domains.dirty(name)
            or runtime.domains.listed_generation != runtime.conn.generation):
        return False
    domain = runtime.domains.get(name)  # a copy elsewhere shows up in that host's listing as a change
    if domain is None or domain.owner is None:
        return False
    if domain.owner.uid != vm.metadata.uid or domain.owner.generation != vm.metadata.generation:
        return False
    running = domain.state == "running"
    wanted = _RUNNING_WANTED.get(vm.spec.runStrategy)
    if wanted is not None and running != wanted:
        return False
    return status.phase == ("Running" if running else "Stopped")
