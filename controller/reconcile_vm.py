"""VirtualMachine controller: observe -> plan (reconcilers.vm) -> execute -> observe -> status.

After executing a plan the domain is observed again and re-planned; a non-empty re-plan is an
InconsistentResult (a bug): logged loudly, counted, reported as an event, and the key is requeued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from controller.allocations import Usage
from controller.executor import execute
from controller.libvirt.errors import TransientError
from controller.reconcile_migration import describe_outcome, migration_context, migrations_of, note_request
from controller.runtime import Runtime
from controller.workqueue import Result
from reconcilers.actions import DefineDomain, DestroyDomain, ShutdownDomain, StartDomain, UndefineDomain
from reconcilers.domain import (
    BlockSource,
    DiskSource,
    DomainName,
    FileSource,
    HostName,
    NetworkSource,
    ObservedDomain,
)
from reconcilers.infra import volume_name
from reconcilers.migration import MigrationContext
from reconcilers.plan import Action
from reconcilers.scheduler import ClusterPolicy, HostView
from reconcilers.vm import PENDING_DEADLINE_S, VmDecision, VmInputs, pending_key, plan_vm
from reconcilers.vm_domain import ResolvedDisk, ResolvedNetwork
from specs.cluster import Cluster
from specs.disk import Disk, DiskStatus
from specs.host import Host
from specs.network import Network, NetworkStatus
from specs.vm import NicStatus, VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.vm")

FINALIZER = "virtplane.io/domain"


def resolve_disks(rt: Runtime, vm: VirtualMachine) -> dict[str, ResolvedDisk]:
    found = {}
    for attachment in vm.spec.disks:
        disk = rt.cache.get("Disk", attachment.disk, Disk)
        if disk is None:
            continue
        status = rt.cache.status["Disk"].get(attachment.disk)
        path = status.path if isinstance(status, DiskStatus) else None
        ready = isinstance(status, DiskStatus) and status.phase == "Ready" and path is not None
        lun = disk.spec.lun
        if lun is not None:
            source: DiskSource
            if lun.blockPath is not None:
                source = BlockSource(lun.blockPath)
            else:
                assert lun.iscsi is not None
                host, _, port = (
                    lun.iscsi.portal.rpartition(":") if ":" in lun.iscsi.portal else (lun.iscsi.portal, "", "3260")
                )
                source = NetworkSource("iscsi", host.strip("[]"), f"{lun.iscsi.iqn}/{lun.iscsi.lun}", int(port or 3260))
            found[attachment.disk] = ResolvedDisk(attachment.disk, source, "raw", disk.spec.shareable, True, None)
            continue
        found[attachment.disk] = ResolvedDisk(
            attachment.disk,
            FileSource(path or f"<pending>/{volume_name(disk)}"),
            disk.spec.effective_format or "qcow2",
            disk.spec.shareable,
            ready,
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


def host_views(rt: Runtime, cluster: str, exclude_vm: str) -> tuple[HostView, ...]:
    """Hosts with allocation from what is placed there (not from libvirt), leaving out the VM itself."""
    views = []
    for host in rt.cache.all("Host", Host):
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
                cpus=(observed.cpus or 0) if observed else 0,
                memory_bytes=(observed.memory_bytes or 0) if observed else 0,
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
    rt: Runtime, name: str, vm: VirtualMachine | None, domains: Mapping[HostName, ObservedDomain] | None = None
) -> VmInputs:
    status = rt.cache.status["VirtualMachine"].get(name)
    vm_status = status if isinstance(status, VirtualMachineStatus) else None
    cluster = vm.spec.cluster if vm is not None else ""
    cluster_hosts = {HostName(h.metadata.name) for h in rt.cache.all("Host", Host) if h.spec.cluster == cluster}
    runtimes = rt.hosts.hosts
    unreachable = frozenset(h for h, r in runtimes.items() if not r.ready) | frozenset(
        h for h in cluster_hosts if h not in runtimes
    )
    # Hosts we have not looked at since this controller started (no connection yet, or connected but
    # not listed): a VM must not be placed while one of them might already run it.
    unlisted = frozenset(
        h for h in cluster_hosts if h not in runtimes or (runtimes[h].ready and not runtimes[h].last_listed)
    )
    disks = resolve_disks(rt, vm) if vm else {}
    migration = migration_context(rt, vm, [d.storage_domain for d in disks.values()]) if vm else MigrationContext()
    return VmInputs(
        name=name,
        vm=vm,
        status=vm_status,
        disks=disks,
        networks=resolve_networks(rt, vm) if vm else {},
        hosts=host_views(rt, cluster, name) if vm else (),
        policy=cluster_policy(rt, cluster),
        domains=dict(domains) if domains is not None else rt.hosts.locate(name),
        unreachable=unreachable,
        unlisted=unlisted,
        pending={k: time.monotonic() - t for k, t in rt.pending.get(name, {}).items()},
        domain_types={h: r.domain_type for h, r in rt.hosts.hosts.items()},
        migration=migration,
    )


async def _refresh(rt: Runtime, name: str, hosts: set[HostName]) -> dict[HostName, ObservedDomain]:
    """Observe the domain afresh on the hosts that matter, updating the host caches."""
    for h in hosts:
        runtime = rt.hosts.hosts.get(h)
        if runtime is None or not runtime.ready:
            continue
        observed = await runtime.conn.observe_domain(DomainName(name))
        if observed is None:
            runtime.domains.pop(name, None)
        else:
            runtime.domains[name] = observed
    return rt.hosts.locate(name)


async def reconcile_vm(rt: Runtime, name: str) -> Result | None:
    vm = rt.cache.get("VirtualMachine", name, VirtualMachine)
    if vm is not None and vm.metadata.deletionTimestamp is None and FINALIZER not in vm.metadata.finalizers:
        vm = await rt.store.add_finalizer("VirtualMachine", name, FINALIZER)  # type: ignore[assignment]
    previous = rt.cache.status["VirtualMachine"].get(name)
    relevant = set(rt.hosts.locate(name))
    if isinstance(previous, VirtualMachineStatus) and previous.host:
        relevant.add(HostName(previous.host))
    migrations = migrations_of(rt)
    finished = migrations.collect(name)
    job = migrations.jobs.get(name)
    for moving in (finished, job):
        if moving is not None:
            relevant |= {moving.source, moving.target}
    domains = await _refresh(rt, name, relevant)
    _prune_pending(rt, name, vm, domains)
    if finished is not None and vm is not None:
        reason, message, warning = describe_outcome(finished)
        await rt.emit(vm, reason, message, warning=warning, source="vm-controller")
    if job is not None and (seen := domains.get(job.source)) is not None and seen.job is not None:
        job.last = seen.job  # progress, for the Migration's status
    inputs = vm_inputs(rt, name, vm, domains)
    decision = plan_vm(inputs)
    restarted = False
    note_request(rt, decision.move, inputs.migration.request, decision.host)
    if job is not None and job.migration is not None:
        rt.queue.add(("Migration", job.migration))
    if vm is not None and decision.host:
        record_placement(rt, vm, decision.host)  # before any await: concurrent placements see it
    if decision.plan and decision.host:
        relevant.add(decision.host)
    relevant |= {HostName(h) for a in decision.plan if isinstance(h := getattr(a, "host", None), str)}
    if decision.plan:
        prev_status = previous if isinstance(previous, VirtualMachineStatus) else None
        drift = _drift(vm, prev_status, decision, domains)
        if drift is not None and vm is not None:
            await rt.emit(vm, drift[0], drift[1], warning=True, source="vm-controller")
        if vm is not None and decision.host and _places_anew(decision, prev_status, domains):
            # Record the host before defining anything there: a controller that dies between the two
            # leaves a status that points at the host, never a domain nobody knows about.
            await _write_vm_status(rt, vm, name, decision, domains, phase="Scheduling")
        result = await execute(decision.plan, rt.hosts.connections(), migrations=migrations)
        rt.counters["actions"] += len(result.done)
        for action in result.done:
            key = pending_key(action)
            if isinstance(action, StartDomain) and decision.desired is not None:
                # QEMU boots with maxSize; libvirt gives the balloon its target, the guest's driver follows.
                want = decision.desired
                key = f"memory:{want.memory_kib}" if want.memory_kib < want.max_memory_kib else None
            if key is not None:
                rt.pending.setdefault(name, {}).setdefault(key, time.monotonic())
        done = ", ".join(f"{a.name} {a.target()}" for a in result.done)
        if vm is not None and result.done:
            await rt.emit(vm, "PlanExecuted", done, source="vm-controller")
        domains = await _refresh(rt, name, relevant)
        if any(isinstance(a, StartDomain | ShutdownDomain | DestroyDomain | UndefineDomain) for a in result.done):
            for host in relevant:  # their VM counts changed: report them soon (coalesced by the queue)
                rt.queue.add_after(("Host", host), 2.0)
        if not result.ok:
            assert result.error is not None and result.failed is not None
            if vm is not None:
                await rt.emit(
                    vm,
                    "ActionFailed",
                    f"{result.failed.name} {result.failed.target()}: {result.error}",
                    warning=True,
                    source="vm-controller",
                )
            await _write_vm_status(rt, vm, name, decision, domains, error=str(result.error))
            raise result.error
        again = plan_vm(vm_inputs(rt, name, vm, domains))
        if again.plan and not _expected_leftover(decision, again):
            rt.counters["inconsistent"] += 1
            leftover = ", ".join(f"{a.name}({a.target()})" for a in again.plan)
            log.error("InconsistentResult for VirtualMachine/%s: still planned after execution: %s", name, leftover)
            if vm is not None:
                await rt.emit(
                    vm,
                    "InconsistentResult",
                    f"still planned after execution: {leftover}",
                    warning=True,
                    source="vm-controller",
                )
            await _write_vm_status(rt, vm, name, again, domains)
            raise TransientError(f"inconsistent result for {name}", retry_after=1.0)
        decision = again
        restarted = _restarted(result.done)
    if decision.finished_teardown:
        rt.allocations.remove(name)
        if vm is not None and FINALIZER in vm.metadata.finalizers:
            await rt.store.remove_finalizer("VirtualMachine", name, FINALIZER)
        return None
    if vm is not None:
        await _write_vm_status(rt, vm, name, decision, domains, restarted=restarted)
    waiting = [t for t in rt.pending.get(name, {}).values() if time.monotonic() - t < PENDING_DEADLINE_S]
    requeue = min(filter(None, (decision.requeue_after, 2.0 if waiting else None)), default=None)
    return Result(requeue_after=requeue) if requeue else None


def _prune_pending(
    rt: Runtime, name: str, vm: VirtualMachine | None, domains: Mapping[HostName, ObservedDomain]
) -> None:
    """Forget pending requests the guest has completed, or that the spec no longer asks for."""
    pending = rt.pending.get(name)
    if not pending:
        return
    live = next((d.live for d in domains.values() if d.live is not None), None)
    want_kib = vm.spec.memory.size_bytes // 1024 if vm is not None else None
    for key in list(pending):
        kind, _, arg = key.partition(":")
        done = (
            live is None
            or (kind == "detach-disk" and all(d.target != arg for d in live.disks))
            or (kind == "detach-nic" and all(n.name != arg for n in live.nics))
            or (kind == "memory" and (live.memory_kib == int(arg) or want_kib != int(arg)))
        )
        if done:
            del pending[key]
    if not pending:
        rt.pending.pop(name, None)


def _places_anew(
    decision: VmDecision, prev: VirtualMachineStatus | None, domains: Mapping[HostName, ObservedDomain]
) -> bool:
    return (
        (prev is None or prev.host != decision.host)
        and decision.host not in domains
        and any(isinstance(a, DefineDomain) for a in decision.plan)
    )


def _restarted(done: list[Action]) -> bool:
    names = [a.name for a in done]
    return "ShutdownDomain" in names and "StartDomain" in names[names.index("ShutdownDomain") :]


def _drift(
    vm: VirtualMachine | None,
    prev: VirtualMachineStatus | None,
    decision: VmDecision,
    domains: Mapping[HostName, ObservedDomain],
) -> tuple[str, str] | None:
    """A running VM whose domain changed behind our back (virsh destroy/undefine/edit, a crash)."""
    if vm is None or prev is None or prev.phase != "Running" or prev.host != decision.host or not decision.host:
        return None
    d = domains.get(decision.host)
    names = {a.name for a in decision.plan}
    if d is None:
        return (
            "DriftDetected",
            f"domain {vm.metadata.name} was undefined on {decision.host} outside virtplane; "
            "defining and starting it again",
        )
    if not d.active and "StartDomain" in names:
        if d.reason == "crashed":
            return (
                "GuestCrashed",
                f"{vm.metadata.name} crashed on {decision.host}; starting it again (runStrategy {vm.spec.runStrategy})",
            )
        if d.reason == "shutdown":
            return (
                "GuestShutdown",
                f"the guest shut itself down on {decision.host}; starting it again (runStrategy {vm.spec.runStrategy})",
            )
        return (
            "DriftDetected",
            f"domain {vm.metadata.name} was stopped ({d.reason}) on {decision.host} outside virtplane; "
            "starting it again",
        )
    if (
        "DefineDomain" in names
        and prev.observedGeneration == vm.metadata.generation
        and d.owner is not None
        and d.owner.generation == vm.metadata.generation
    ):
        return (
            "DriftDetected",
            f"the definition of {vm.metadata.name} on {decision.host} was edited outside virtplane; redefining it",
        )
    return None


def _expected_leftover(first: VmDecision, again: VmDecision) -> bool:
    """Teardown waits for a graceful shutdown; an Auto restart's start comes after the stop is seen."""
    return all(a.name in ("ShutdownDomain", "UndefineDomain", "StartDomain") for a in again.plan) and any(
        a.name == "ShutdownDomain" for a in first.plan
    )


async def _write_vm_status(
    rt: Runtime,
    vm: VirtualMachine | None,
    name: str,
    decision: VmDecision,
    domains: Mapping[HostName, ObservedDomain],
    error: str | None = None,
    *,
    phase: str | None = None,
    restarted: bool = False,
) -> None:
    if vm is None:
        return
    previous = rt.cache.status["VirtualMachine"].get(name)
    prev = previous if isinstance(previous, VirtualMachineStatus) else VirtualMachineStatus()
    d = domains.get(decision.host) if decision.host else None
    seen = (d.live or d.config) if d else None
    running = d is not None and d.state == "running"
    phase = phase or ("Running" if running and decision.phase == "Running" else decision.phase)
    job = migrations_of(rt).jobs.get(name)
    conditions = decision.conditions
    if error:
        conditions = (
            *conditions,
            conditions[0].model_copy(
                update={"type": "Degraded", "status": "True", "reason": "ActionFailed", "message": error}
            ),
        )
    status = VirtualMachineStatus(
        observedGeneration=vm.metadata.generation,
        phase=phase,
        conditions=rt.with_times(conditions, prev),
        correlationId=vm.metadata.correlationId,
        host=decision.host,
        uuid=(seen.uuid if seen else None) or prev.uuid,
        nics=tuple(NicStatus(name=n.name, mac=n.mac) for n in seen.nics if n.mac) if seen else prev.nics,
        cores=seen.vcpus if seen and running else None,
        memory=seen.memory_kib * 1024 if seen and running else None,
        startTime=prev.startTime
        if running and not restarted and prev.startTime and prev.phase in ("Running", "Migrating")
        else (rt.clock() if running else None),
        restartCount=prev.restartCount + (1 if restarted else 0),
        migration=(job.migration or "automatic") if job is not None and phase == "Migrating" else None,
    )
    await rt.write_status("VirtualMachine", name, status)
