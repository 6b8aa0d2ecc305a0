"""HA restart after fencing, run by the Host controller once a host is Fenced (``reconcilers.vm.ha`` plans it).

Each highly available VM of the fenced host that runs nowhere is placed, highest priority first, and the
VirtualMachine controller starts it there (``Runtime.ha`` carries the placement). VMs that are not highly
available are reported down by the VirtualMachine controller and not started anywhere. While a silent host
is not fenced (fencing disabled, no agent, a failed attempt), its HA VMs stay Unknown and an event on the
host and on each of them says exactly why.
"""

from __future__ import annotations

from controller.controllers.vm_inputs import (
    cluster_policy,
    host_views,
    record_placement,
    resolve_disks,
    resolve_networks,
)
from controller.runtime.context import Runtime
from reconcilers.vm.ha import Displaced, plan_ha_restart
from reconcilers.vm.plan import placement_request
from specs.host import Host
from specs.vm import VirtualMachine, VirtualMachineStatus


def _vms_of(rt: Runtime, host: str) -> list[VirtualMachine]:
    """VMs whose status places them on ``host`` (not being deleted)."""
    found = []
    for vm in rt.cache.all("VirtualMachine", VirtualMachine):
        status = rt.cache.status["VirtualMachine"].get(vm.metadata.name)
        if isinstance(status, VirtualMachineStatus) and status.host == host and vm.metadata.deletionTimestamp is None:
            found.append(vm)
    return found


def _runs_elsewhere(rt: Runtime, vm: VirtualMachine, host: str) -> bool:
    return any(h != host and d.active and d.owner is not None and d.owner.uid == vm.metadata.uid
               for h, d in rt.hosts.locate(vm.metadata.name).items())


async def restart_ha_vms(rt: Runtime, host: Host) -> None:
    name = host.metadata.name
    displaced: list[Displaced] = []
    for vm in _vms_of(rt, name):
        vm_name = vm.metadata.name
        if _runs_elsewhere(rt, vm, name):
            rt.ha.forget(vm_name)
            continue
        if not vm.spec.highAvailability.enabled:
            status = rt.cache.status["VirtualMachine"].get(vm_name)
            if not any(c.type == "Down" for c in (status.conditions if status else ())):
                rt.queue.add(("VirtualMachine", vm_name))  # it reports itself down
            continue
        placed = rt.ha.get(vm_name)
        if placed is not None and placed.host is not None and rt.hosts.ready(placed.host):
            continue  # placed already; the VM controller starts it
        request = placement_request(vm, resolve_disks(rt, vm), resolve_networks(rt, vm))
        displaced.append(Displaced(vm_name, vm.spec.highAvailability.priority, request))
    if not displaced:
        return
    views = host_views(rt, host.spec.cluster, exclude_vm="")
    for assignment in plan_ha_restart(displaced, views, cluster_policy(rt, host.spec.cluster)):
        before = rt.ha.get(assignment.vm)
        rt.ha.assign(assignment)
        target = rt.cache.get("VirtualMachine", assignment.vm, VirtualMachine)
        if target is None:
            continue
        if assignment.host is not None:
            record_placement(rt, target, assignment.host)  # counted now: the next placement sees it
            await rt.emit(target, "HARestart", f"{name} was fenced; restarting it {assignment.message}",
                          source="host-controller")
        elif before is None or before.message != assignment.message:
            await rt.emit(target, "HARestartPending", f"{name} was fenced; {assignment.message}", warning=True,
                          source="host-controller")
        rt.queue.add(("VirtualMachine", assignment.vm))


async def announce_blocked(rt: Runtime, host: Host, why: str) -> None:
    """Say once (per reason) on the host and on each of its HA VMs why they are not restarted."""
    name = host.metadata.name
    if rt.ha.announced.get(name) == why:
        return
    rt.ha.announced[name] = why
    vms = [vm for vm in _vms_of(rt, name) if vm.spec.highAvailability.enabled]
    names = ", ".join(vm.metadata.name for vm in vms) or "none"
    await rt.emit(host, "HARestartBlocked", f"NotResponding and not fenced: {why}; HA VMs not restarted "
                                           f"elsewhere (a VM never runs on two hosts): {names}",
                  warning=True, source="host-controller")
    for vm in vms:
        await rt.emit(vm, "HARestartBlocked", f"{name} does not answer and is not fenced: {why}; not restarted "
                                              "elsewhere (a VM never runs on two hosts)",
                      warning=True, source="host-controller")
        rt.queue.add(("VirtualMachine", vm.metadata.name))
