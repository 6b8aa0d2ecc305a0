"""What the VirtualMachine planner needs, gathered from the cache and the host registry (no I/O).

Used by the VirtualMachine controller to reconcile and by its diff planner (``virtplane diff``), so both
plan from the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.controllers.migration_state import migration_context
from controller.runtime.allocations import Usage
from controller.runtime.context import Runtime
from reconcilers.disk.plan import volume_name
from reconcilers.domain import BlockSource, DiskSource, FileSource, HostName, NetworkSource, ObservedDomain
from reconcilers.migration.plan import MigrationContext
from reconcilers.scheduler import ClusterPolicy, HostView
from reconcilers.storage.backends import backend_for
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork
from reconcilers.vm.plan import VmInputs
from specs.cluster import Cluster
from specs.disk import Disk, DiskStatus
from specs.host import Host, HostStatus
from specs.network import Network, NetworkStatus
from specs.storage import StorageDomain
from specs.vm import VirtualMachine, VirtualMachineStatus


def _lun_source(disk: Disk) -> DiskSource:
    lun = disk.spec.lun
    assert lun is not None
    if lun.blockPath is not None:
        return BlockSource(lun.blockPath)
    assert lun.iscsi is not None
    portal = lun.iscsi.portal
    host, _, port = portal.rpartition(":") if ":" in portal else (portal, "", "3260")
    return NetworkSource("iscsi", host.strip("[]"), f"{lun.iscsi.iqn}/{lun.iscsi.lun}", int(port or 3260))


def resolve_disks(rt: Runtime, vm: VirtualMachine) -> dict[str, ResolvedDisk]:
    found = {}
    for attachment in vm.spec.disks:
        disk = rt.cache.get("Disk", attachment.disk, Disk)
        if disk is None:
            continue
        if disk.spec.lun is not None:
            found[attachment.disk] = ResolvedDisk(attachment.disk, _lun_source(disk), "raw", disk.spec.shareable,
                                                  True, None)
            continue
        status = rt.cache.status["Disk"].get(attachment.disk)
        path = status.path if isinstance(status, DiskStatus) else None
        ready = isinstance(status, DiskStatus) and status.phase == "Ready" and path is not None
        sd = rt.cache.get("StorageDomain", disk.spec.storageDomain or "", StorageDomain)
        where = path or f"<pending>/{volume_name(disk)}"
        source = backend_for(sd).disk_source(sd, where) if sd is not None else FileSource(where)
        found[attachment.disk] = ResolvedDisk(
            attachment.disk, source, disk.spec.effective_format or "qcow2", disk.spec.shareable, ready,
            disk.spec.storageDomain,
        )
    return found


def resolve_networks(rt: Runtime, vm: VirtualMachine) -> dict[str, ResolvedNetwork]:
    found = {}
    for nic in vm.spec.nics:
        net = rt.cache.get("Network", nic.network, Network)
        if net is None:
            continue
        status = rt.cache.status["Network"].get(nic.network)
        t = net.spec.type
        if t == "user":
            found[nic.network] = ResolvedNetwork(nic.network, "user", None, True)
        elif t == "bridge":
            found[nic.network] = ResolvedNetwork(nic.network, "bridge", net.spec.bridge, True)
        else:
            ready = isinstance(status, NetworkStatus) and status.phase in ("Ready", "Degraded")
            found[nic.network] = ResolvedNetwork(nic.network, "network", f"vp-{nic.network}", ready)
    return found


def cluster_policy(rt: Runtime, cluster: str) -> ClusterPolicy:
    obj = rt.cache.get("Cluster", cluster, Cluster)
    if obj is None:
        return ClusterPolicy()
    s = obj.spec.scheduling
    return ClusterPolicy(policy=s.policy, cpu_overcommit=s.cpuOvercommit, memory_overcommit=s.memoryOvercommit)


def host_views(rt: Runtime, cluster: str, exclude_vm: str, override: Host | None = None) -> tuple[HostView, ...]:
    """Hosts with allocation from what is placed there (not from libvirt), leaving out the VM itself.
    Capacity is what libvirt reports minus the host's spec.reserved. ``override``: plan with this version of
    one Host instead of the stored one (diff)."""
    views = []
    for stored in rt.cache.all("Host", Host):
        host = override if override is not None and override.metadata.name == stored.metadata.name else stored
        if host.spec.cluster != cluster:
            continue
        name = host.metadata.name
        runtime = rt.hosts.hosts.get(HostName(name))
        observed = runtime.observed if runtime else None
        cpus, memory, count, groups = rt.allocations.host(name, excluding=exclude_vm)
        views.append(
            HostView(
                name=HostName(name),
                cluster=host.spec.cluster,
                ready=bool(runtime and runtime.ready),
                maintenance=host.spec.maintenance,
                labels=dict(host.metadata.labels),
                cpus=max(0, (observed.cpus or 0) - host.spec.reserved.cpus) if observed else 0,
                memory_bytes=max(0, (observed.memory_bytes or 0) - host.spec.reserved.memory_bytes) if observed else 0,
                allocated_cpus=cpus,
                allocated_memory_bytes=memory,
                vm_count=count,
                groups=groups,
            )
        )
    return tuple(views)


def record_placement(rt: Runtime, vm: VirtualMachine, host: str | None) -> None:
    if host is None:
        rt.allocations.remove(vm.metadata.name)
        return
    groups = tuple(g for g in (vm.spec.placement.affinityGroup, vm.spec.placement.antiAffinityGroup) if g)
    rt.allocations.set(vm.metadata.name, Usage(host, vm.spec.cpu.cores, vm.spec.memory.size_bytes, groups))


def vm_inputs(
    rt: Runtime, name: str, vm: VirtualMachine | None, domains: Mapping[HostName, ObservedDomain] | None = None,
    host_override: Host | None = None,
) -> VmInputs:
    status = rt.cache.status["VirtualMachine"].get(name)
    vm_status = status if isinstance(status, VirtualMachineStatus) else None
    cluster = vm.spec.cluster if vm is not None else ""
    cluster_hosts = {HostName(h.metadata.name) for h in rt.cache.all("Host", Host) if h.spec.cluster == cluster}
    runtimes = rt.hosts.hosts
    unreachable = frozenset(h for h, r in runtimes.items() if not r.ready) | frozenset(
        h for h in cluster_hosts if h not in runtimes
    )
    # Hosts whose domains this controller has not listed since it started (no connection yet, connected
    # but not listed, or silent ever since): a VM must not be placed while one of them might already run it.
    # A host its agent verified off (Fenced, or PoweredOff by power saving) runs nothing: not waited for.
    fenced, notes = host_health(rt, cluster_hosts)
    unlisted = frozenset(h for h in cluster_hosts if (h not in runtimes or not runtimes[h].last_listed)
                         and h not in fenced and _phase(rt, h) != "PoweredOff")
    disks = resolve_disks(rt, vm) if vm else {}
    migration = migration_context(rt, vm, [d.storage_domain for d in disks.values()]) if vm else MigrationContext()
    ha = rt.ha.get(name)
    return VmInputs(
        name=name,
        vm=vm,
        status=vm_status,
        disks=disks,
        networks=resolve_networks(rt, vm) if vm else {},
        hosts=host_views(rt, cluster, name, host_override) if vm else (),
        policy=cluster_policy(rt, cluster),
        domains=dict(domains) if domains is not None else rt.hosts.locate(name),
        unreachable=unreachable,
        unlisted=unlisted,
        pending=rt.pending.ages(name),
        domain_types={h: r.domain_type for h, r in rt.hosts.hosts.items()},
        migration=migration,
        fenced=fenced,
        host_notes=notes,
        ha_target=ha.host if ha is not None else None,
        ha_note=ha.message if ha is not None and ha.host is None else None,
        powering_on=powering_on(rt, cluster_hosts),
    )


def powering_on(rt: Runtime, hosts: set[HostName]) -> HostName | None:
    """A host of the cluster that power saving is powering on (asked, or on its way)."""
    for name in sorted(hosts):
        status = rt.cache.status["Host"].get(name)
        if rt.power.get(name) == "on" or getattr(status, "phase", None) == "PoweringOn":
            return name
    return None


def _phase(rt: Runtime, host: str) -> str | None:
    return getattr(rt.cache.status["Host"].get(host), "phase", None)


def host_health(rt: Runtime, hosts: set[HostName]) -> tuple[frozenset[HostName], dict[HostName, str]]:
    """(hosts fenced, what each silent host's status says about it), from the Hosts' status."""
    fenced: set[HostName] = set()
    notes: dict[HostName, str] = {}
    for name in hosts:
        status = rt.cache.status["Host"].get(name)
        if not isinstance(status, HostStatus):
            continue
        if status.phase == "Fenced":
            fenced.add(name)
        elif status.phase in ("Unreachable", "NotResponding", "Fencing"):
            by_type = {c.type: c for c in status.conditions}
            note = by_type.get("Fenced") or by_type.get("Ready")
            notes[name] = f"{status.phase}: {note.message}" if note is not None else status.phase
    return frozenset(fenced), notes
