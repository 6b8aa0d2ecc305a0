"""HA restart after fencing: where the highly available VMs of fenced hosts go. Pure.

Only once a host is fenced (powered off by its agent and verified off) do its HA VMs run anywhere else. They
are placed highest ``highAvailability.priority`` first (then by name), each placement counting against its
host before the next is decided, so that when capacity runs short the important VMs get it. A VM that fits
nowhere keeps waiting, and says why per host; it is placed as soon as capacity appears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reconcilers.domain import HostName
from reconcilers.scheduler import ClusterPolicy, HostView, Request, place


@dataclass(frozen=True)
class Displaced:
    """A highly available VM whose host was fenced and that runs nowhere."""

    vm: str
    priority: int
    request: Request


@dataclass(frozen=True)
class HaAssignment:
    vm: str
    host: HostName | None  # None: it fits nowhere now
    message: str  # "on h2", or why no host can take it


def plan_ha_restart(displaced: Sequence[Displaced], hosts: Sequence[HostView],
                    policy: ClusterPolicy) -> tuple[HaAssignment, ...]:
    views = {h.name: h for h in hosts}
    out: list[HaAssignment] = []
    for d in sorted(displaced, key=lambda d: (-d.priority, d.vm)):
        placement = place(d.request, list(views.values()), policy)
        if placement.host is None:
            out.append(HaAssignment(d.vm, None, f"no host can take it: {placement.explain()}"))
            continue
        view = views[placement.host]
        groups = {g for g in (d.request.affinity_group, d.request.anti_affinity_group) if g}
        views[placement.host] = replace(
            view,
            allocated_cpus=view.allocated_cpus + d.request.cpus,
            allocated_memory_bytes=view.allocated_memory_bytes + d.request.memory_bytes,
            vm_count=view.vm_count + 1,
            groups=view.groups | groups,
        )
        out.append(HaAssignment(d.vm, placement.host, f"on {placement.host} (priority {d.priority})"))
    return tuple(out)
