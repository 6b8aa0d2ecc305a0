"""Host status from one observation of its libvirt. Pure: the clock is injected."""

from __future__ import annotations

from datetime import datetime

from reconcilers.conditions import cond as _cond
from reconcilers.domain import ObservedHost
from specs.host import Host, HostResources, HostStatus


def host_status(host: Host, observed: ObservedHost | None, allocated_cpus: int, allocated_memory: int,
                vms: int, now: datetime, previous: HostStatus | None) -> HostStatus:
    """Status from one observation. ``now`` is injected; lastHeartbeat moves only when the host answered."""
    if host.spec.maintenance and observed is not None and observed.ready:
        phase, cond = "Maintenance", _cond("Ready", False, "Maintenance", "spec.maintenance is true")
    elif observed is not None and observed.ready:
        phase, cond = "Ready", _cond("Ready", True, "Connected", f"libvirt {observed.libvirt_version}")
    else:
        error = observed.error if observed is not None else "not connected yet"
        phase, cond = "NotResponding", _cond("Ready", False, "NotResponding", error or "")
    answered = observed is not None and observed.ready
    prev = previous or HostStatus()
    return HostStatus(
        observedGeneration=host.metadata.generation,
        phase=phase,
        conditions=(cond,),
        capacity=HostResources(cpus=observed.cpus or 0, memory=observed.memory_bytes or 0)
        if answered and observed is not None else prev.capacity,
        allocation=HostResources(cpus=allocated_cpus, memory=allocated_memory),
        libvirtVersion=observed.libvirt_version if answered and observed is not None else prev.libvirtVersion,
        qemuVersion=observed.hypervisor_version if answered and observed is not None else prev.qemuVersion,
        hostname=observed.hostname if answered and observed is not None else prev.hostname,
        lastHeartbeat=now if answered else prev.lastHeartbeat,
        vms=vms,
    )
