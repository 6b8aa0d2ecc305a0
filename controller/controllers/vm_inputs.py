"""What the VirtualMachine planner needs, gathered from the cache and the host registry (no I/O).

Used by the VirtualMachine controller to reconcile and by its diff planner (``virtplane diff``), so both
plan from the same inputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from controller.controllers.migration_state import migration_context
from controller.runtime.allocations import Allocations, Usage
from controller.runtime.context import Runtime
from controller.runtime.hosts import HostRegistry
from reconcilers.disk.plan import chap_usage, volume_name
from reconcilers.domain import (
    BlockSource,
    DiskSource,
    DomainType,
    FileSource,
    HostName,
    NetworkSource,
    ObservedDomain,
)
from reconcilers.migration.plan import MigrationContext
from reconcilers.scheduler import ClusterPolicy, HostView, HostViews
from reconcilers.storage.backends import backend_for
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork
from reconcilers.vm.plan import VmInputs
from specs.cluster import Cluster
from specs.disk import Disk, DiskStatus
from specs.host import Host, HostStatus
from specs.network import Network, NetworkStatus
from specs.storage import StorageDomain, StorageDomainStatus
from specs.vm import VirtualMachine, VirtualMachineStatus


def _lun_source(disk: Disk) -> DiskSource:
    lun = disk.spec.lun
    assert lun is not None
    if lun.blockPath is not None:
        return BlockSource(lun.blockPath)
    iscsi = lun.iscsi
    assert iscsi is not None
    usage = chap_usage(iscsi.chapSecret) if iscsi.chapSecret is not None else None
    return NetworkSource("iscsi", iscsi.host, f"{iscsi.iqn}/{iscsi.lun}", iscsi.port, iscsi.chapUsername, usage)


def resolve_disks(rt: Runtime, vm: VirtualMachine) -> dict[str, ResolvedDisk]:
    found = {}
    for attachment in vm.spec.disks:
        disk = rt.cache.get("Disk", attachment.disk, Disk)
        if disk is None:
            continue
        status = rt.cache.status["Disk"].get(attachment.disk)
        if disk.spec.lun is not None:  # an iSCSI LUN is ready once probed and its CHAP secret is on the hosts
            lun_ready = isinstance(status, DiskStatus) and status.phase == "Ready"
            found[attachment.disk] = ResolvedDisk(attachment.disk, _lun_source(disk), "raw", disk.spec.shareable,
                                                  lun_ready, None)
            continue
        path = status.path if isinstance(status, DiskStatus) else None
        ready = isinstance(status, DiskStatus) and status.phase == "Ready" and path is not None
        sd = rt.cache.get("StorageDomain", disk.spec.storageDomain or "", StorageDomain)
        where = path or f"<pending>/{volume_name(disk)}"
        source = backend_for(sd).disk_source(sd, where) if sd is not None else FileSource(where)
        found[attachment.disk] = ResolvedDisk(
            attachment.disk, source, disk.spec.effective_format or "qcow2", disk.spec.shareable, ready,
            disk.spec.storageDomain, disk.spec.template,
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
            found[nic.network] = ResolvedNetwork(nic.network, "bridge", net.spec.bridge, True,
                                                 net.spec.virtualport, net.spec.vlan)
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


class ClusterHostViews(HostViews):
    """The Hosts of one cluster as the scheduler sees them, built from the caches on demand: a plan for a VM
    that stays where it runs looks up one host (its own); only placing or moving one builds them all."""

    def __init__(self, rt: Runtime, cluster: str, exclude_vm: str, override: Host | None = None) -> None:
        super().__init__()
        self._rt, self._cluster, self._exclude, self._override = rt, cluster, exclude_vm, override
        self._built: tuple[HostView, ...] | None = None
        self._reach: tuple[dict[str, frozenset[str]], dict[str, dict[str, str]]] | None = None

    def _storage(self) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, str]]]:
        if self._reach is None:
            self._reach = storage_reach(self._rt, self._cluster)
        return self._reach

    def _host(self, name: str) -> Host | None:
        if self._override is not None and self._override.metadata.name == name:
            return self._override
        host = self._rt.cache.get("Host", name, Host)
        return host if host is not None and host.spec.cluster == self._cluster else None

    def names(self) -> frozenset[HostName]:
        return frozenset(HostName(h.metadata.name) for h in self._rt.cache.all("Host", Host)
                         if h.spec.cluster == self._cluster)

    def get(self, name: HostName) -> HostView | None:
        host = self._host(name)
        return _view(self._rt, host, self._exclude, *self._storage()) if host is not None else None

    def all(self) -> tuple[HostView, ...]:
        if self._built is None:
            reach, notes = self._storage()
            memo = _VIEWS.setdefault(self._rt.allocations, {})
            own = self._rt.allocations.host_of(self._exclude)
            views = []
            for stored in self._rt.cache.all("Host", Host):
                host = self._host(stored.metadata.name)
                if host is None:
                    continue
                if host.metadata.name == own or host is self._override:
                    views.append(_view(self._rt, host, self._exclude, reach, notes))  # not shared: not memoized
                else:
                    views.append(_memoized_view(self._rt, memo, host, reach, notes))
            self._built = tuple(views)
        return self._built


# Placing a VM scores every host of its cluster; between two placements most hosts' views are unchanged.
# Per Allocations (one per runtime): host name -> (what the view was built from, the view). A view is
# reused only while each input is the very same object (a Host spec, the host's observation) or equal
# (readiness, storage reach, the host's allocation version).
_VIEWS: weakref.WeakKeyDictionary[Allocations, dict[str, tuple[tuple[Any, ...], HostView]]] = (
    weakref.WeakKeyDictionary()
)


def _memoized_view(rt: Runtime, memo: dict[str, tuple[tuple[Any, ...], HostView]], host: Host,
                   reach: Mapping[str, frozenset[str]], notes: Mapping[str, Mapping[str, str]]) -> HostView:
    name = host.metadata.name
    runtime = rt.hosts.hosts.get(HostName(name))
    inputs = (host, runtime.observed if runtime else None, bool(runtime and runtime.ready),
              reach.get(name, frozenset()), notes.get(name, {}), rt.allocations.version(name))
    cached = memo.get(name)
    if cached is not None:
        was = cached[0]
        if was[0] is inputs[0] and was[1] is inputs[1] and was[2:] == inputs[2:]:
            return cached[1]
    view = _view(rt, host, "", reach, notes)
    memo[name] = (inputs, view)
    return view


def _view(rt: Runtime, host: Host, exclude_vm: str, reach: Mapping[str, frozenset[str]],
          notes: Mapping[str, Mapping[str, str]]) -> HostView:
    """Allocation from what is placed there (not from libvirt), leaving out the VM itself. Capacity is
    what libvirt reports minus the host's spec.reserved; the storage domains it reaches from their status."""
    name = host.metadata.name
    runtime = rt.hosts.hosts.get(HostName(name))
    observed = runtime.observed if runtime else None
    cpus, memory, count, groups = rt.allocations.host(name, excluding=exclude_vm or None)
    return HostView(
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
        storage_domains=reach.get(name, frozenset()),
        storage_notes=dict(notes.get(name, {})),
    )


def host_views(rt: Runtime, cluster: str, exclude_vm: str, override: Host | None = None) -> tuple[HostView, ...]:
    """Every host of the cluster as the scheduler sees it (``override``: plan with this version of one Host
    instead of the stored one — diff)."""
    return ClusterHostViews(rt, cluster, exclude_vm, override).all()


def storage_reach(rt: Runtime, cluster: str) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, str]]]:
    """Per host: the storage domains of ``cluster`` it reaches (from their status), and why not the others."""
    reach: dict[str, set[str]] = {}
    notes: dict[str, dict[str, str]] = {}
    for sd in rt.cache.all("StorageDomain", StorageDomain):
        if sd.spec.cluster != cluster:
            continue
        name = sd.metadata.name
        status = rt.cache.status["StorageDomain"].get(name)
        if not isinstance(status, StorageDomainStatus):
            continue
        for host in status.readyHosts:
            reach.setdefault(host, set()).add(name)
        for state in status.hosts:
            if not state.reachable:
                notes.setdefault(state.host, {})[name] = f"{state.reason}: {state.message}"
    return {h: frozenset(v) for h, v in reach.items()}, notes


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
    facts = _host_facts(rt, cluster)
    disks = resolve_disks(rt, vm) if vm else {}
    migration = migration_context(rt, vm, [d.storage_domain for d in disks.values()]) if vm else MigrationContext()
    ha = rt.ha.get(name)
    return VmInputs(
        name=name,
        vm=vm,
        status=vm_status,
        disks=disks,
        networks=resolve_networks(rt, vm) if vm else {},
        hosts=ClusterHostViews(rt, cluster, name, host_override) if vm else HostViews(),
        policy=cluster_policy(rt, cluster),
        domains=dict(domains) if domains is not None else rt.hosts.locate(name),
        unreachable=facts.unreachable,
        unlisted=facts.unlisted,
        pending=rt.pending.ages(name),
        domain_types=facts.domain_types,
        migration=migration,
        fenced=facts.fenced,
        host_notes=facts.notes,
        ha_target=ha.host if ha is not None else None,
        ha_note=ha.message if ha is not None and ha.host is None else None,
        powering_on=facts.powering_on,
    )


@dataclass(frozen=True)
class _HostFacts:
    unreachable: frozenset[HostName]  # every host not ready (any cluster), and the cluster's unconnected ones
    unlisted: frozenset[HostName]
    fenced: frozenset[HostName]
    notes: Mapping[HostName, str]
    domain_types: Mapping[HostName, DomainType]
    powering_on: HostName | None


# Per host registry: cluster -> (what the facts were computed from, the facts). Valid while the Hosts' specs
# and statuses (the cache's generation of the kind), each host runtime's observation, listing time and
# domain type, and the power requests are what they were: all but the first are compared by value each time.
_FACTS: weakref.WeakKeyDictionary[HostRegistry, dict[str, tuple[tuple[Any, ...], _HostFacts]]] = (
    weakref.WeakKeyDictionary()
)


def _host_facts(rt: Runtime, cluster: str) -> _HostFacts:
    """``_compute_host_facts``, computed again only when one of its inputs changed (it is asked twice per
    reconcile of every VM; at 100 hosts computing it was a tenth of a VM's CPU)."""
    key = (
        rt.cache.generations.get("Host", 0),
        tuple((name, r.observed, r.last_listed, r.domain_type) for name, r in rt.hosts.hosts.items()),
        tuple(rt.power.items()),
    )
    memo = _FACTS.setdefault(rt.hosts, {})
    cached = memo.get(cluster)
    if cached is not None and cached[0] == key:
        return cached[1]
    facts = _compute_host_facts(rt, cluster)
    memo[cluster] = (key, facts)
    return facts


def _compute_host_facts(rt: Runtime, cluster: str) -> _HostFacts:
    """What a VM's plan needs to know about the hosts, in one pass over them.

    - unreachable: hosts not ready, and hosts of the cluster without a connection yet;
    - unlisted: hosts of the cluster whose domains this controller has not listed since it started (no
      connection yet, connected but not listed, or silent ever since): a VM must not be placed while one of
      them might already run it. A host its agent verified off (Fenced, or PoweredOff by power saving) runs
      nothing: not waited for;
    - fenced, and notes on silent hosts (from the Hosts' status);
    - powering_on: a host of the cluster that power saving is powering on (asked, or on its way), the first
      by name."""
    runtimes = rt.hosts.hosts
    statuses = rt.cache.status["Host"]
    unreachable = {h for h, r in runtimes.items() if not r.ready}
    unlisted: set[HostName] = set()
    fenced: set[HostName] = set()
    notes: dict[HostName, str] = {}
    powering: list[HostName] = []
    for host in rt.cache.all("Host", Host):
        if host.spec.cluster != cluster:
            continue
        name = HostName(host.metadata.name)
        runtime = runtimes.get(name)
        if runtime is None:
            unreachable.add(name)
        status = statuses.get(name)
        phase = getattr(status, "phase", None)
        if isinstance(status, HostStatus):
            if phase == "Fenced":
                fenced.add(name)
            elif phase in ("Unreachable", "NotResponding", "Fencing"):
                by_type = {c.type: c for c in status.conditions}
                note = by_type.get("Fenced") or by_type.get("Ready")
                notes[name] = f"{phase}: {note.message}" if note is not None else str(phase)
        if (runtime is None or not runtime.last_listed) and name not in fenced and phase != "PoweredOff":
            unlisted.add(name)
        if rt.power.get(name) == "on" or phase == "PoweringOn":
            powering.append(name)
    return _HostFacts(  # shared by the plans until an input changes: read-only
        unreachable=frozenset(unreachable), unlisted=frozenset(unlisted), fenced=frozenset(fenced),
        notes=MappingProxyType(notes), domain_types=MappingProxyType({h: r.domain_type for h, r in runtimes.items()}),
        powering_on=min(powering) if powering else None,
    )
